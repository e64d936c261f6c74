//! Output files of a build: the update payload, the compressed disk and its block map,
//! and the final move into place.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use edgeimg_proto::payload::{Artifact, ArtifactKind, BootFile, Payload, SlotBoot, PAYLOAD_FORMAT};
use edgeimg_proto::Slot;

use super::boot::BootSet;
use super::file_digest;
use super::rootimg::RootImage;

use crate::bmap::Bmap;
use crate::config::{Board, Recipe};
use crate::progress::{Reporter, ReporterExt};

/// Write `payload/` with the slot artifacts and `payload.json`.
#[allow(clippy::too_many_arguments)]
pub fn payload(
    staging: &Path,
    board: &Board,
    recipe: &Recipe,
    version: &str,
    build_id: &str,
    root: &RootImage,
    boot: &BootSet,
    cmdlines: &BTreeMap<Slot, String>,
) -> io::Result<Payload> {
    let dir = staging.join("payload");
    fs::create_dir_all(&dir)?;
    fs::rename(&root.image, dir.join("root.img"))?;
    fs::rename(&root.verity, dir.join("root.verity"))?;
    for (name, file) in &boot.artifacts {
        fs::copy(file, dir.join(name))?;
    }
    let artifact = |name: &str, kind: ArtifactKind, sha: Option<&str>| -> io::Result<Artifact> {
        let p = dir.join(name);
        let (size, sha256) = match sha {
            Some(s) => (p.metadata()?.len(), s.to_string()),
            None => file_digest(&p)?,
        };
        Ok(Artifact { name: name.into(), kind, size, sha256 })
    };
    let mut artifacts = vec![
        artifact("root.img", ArtifactKind::RootImage, Some(&root.image_sha256))?,
        artifact("root.verity", ArtifactKind::VerityTree, Some(&root.verity_sha256))?,
    ];
    for (name, _) in &boot.artifacts {
        artifacts.push(artifact(name, ArtifactKind::BootFile, None)?);
    }
    let slots = Slot::ALL
        .iter()
        .map(|&s| {
            let files = boot.slots[&s]
                .iter()
                .map(|(artifact, path)| BootFile { artifact: artifact.clone(), path: path.clone() })
                .collect();
            (s, SlotBoot { cmdline: cmdlines[&s].clone(), files })
        })
        .collect();
    let p = Payload {
        format: PAYLOAD_FORMAT,
        board: board.name.clone(),
        image: recipe.image.name.clone(),
        version: version.into(),
        arch: board.arch.debian().into(),
        build_id: build_id.into(),
        roothash: root.roothash.clone(),
        security_version: recipe.image.security_version,
        artifacts,
        slots,
        verity: Some(edgeimg_proto::verity::VerityParams {
            salt: root.salt.clone(),
            uuid: root.verity_uuid.clone(),
            data_blocks: root.image_bytes / 4096,
        }),
    };
    let mut json = serde_json::to_vec_pretty(&p).map_err(io::Error::other)?;
    json.push(b'\n');
    fs::write(dir.join("payload.json"), json)?;
    // dracut writes the initrd 0600 and veritysetup the hash tree: a payload is published
    // as it is, so make every file readable by all, as the disk image is.
    for e in fs::read_dir(&dir)? {
        let e = e?;
        fs::set_permissions(e.path(), fs::Permissions::from_mode(0o644))?;
    }
    Ok(p)
}

/// Write `disk.img.bmap` and `disk.img.zst` (zstd, multi-threaded, with checksum).
pub fn bmap_and_zstd(staging: &Path, disk: &Path, rep: &dyn Reporter) -> io::Result<Bmap> {
    let bmap = Bmap::create(disk).map_err(io::Error::other)?;
    fs::write(staging.join("disk.img.bmap"), bmap.to_xml())?;

    let size = disk.metadata()?.len();
    let mut src = File::open(disk)?;
    let out = File::create(staging.join("disk.img.zst"))?;
    let mut enc = zstd::stream::write::Encoder::new(io::BufWriter::with_capacity(1 << 20, out), 3)?;
    enc.multithread(std::thread::available_parallelism().map_or(1, |n| n.get() as u32))?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some(size))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n])?;
        done += n as u64;
        rep.progress("compress", done, Some(size));
    }
    let mut w = enc.finish()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(bmap)
}

/// Move a finished staging directory to its final name. An existing build of the same
/// version is swapped out atomically (renameat2 RENAME_EXCHANGE) and then removed.
pub fn publish_dir(staging: &Path, final_dir: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    for e in fs::read_dir(staging)? {
        let p = e?.path();
        if p.is_file() {
            File::open(&p)?.sync_all()?;
        }
    }
    crate::fsutil::sync_dir(staging)?;
    if final_dir.exists() {
        renameat2(AT_FDCWD, staging, AT_FDCWD, final_dir, RenameFlags::RENAME_EXCHANGE).map_err(io::Error::from)?;
        fs::remove_dir_all(staging)?;
    } else {
        fs::rename(staging, final_dir)?;
    }
    if let Some(parent) = final_dir.parent() {
        crate::fsutil::sync_dir(parent)?;
    }
    Ok(())
}
