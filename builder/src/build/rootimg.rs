//! Root filesystem image (EROFS) and its dm-verity hash tree.

use std::path::{Path, PathBuf};

use crate::config::Compression;
use crate::fsutil::{sha256_bytes, sha256_file};
use crate::gpt::Guid;
use crate::tools::{Cmd, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum RootImageError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("veritysetup printed no root hash:\n{0}")]
    NoRootHash(String),
    #[error("the {what} is {have} MiB but the board's slot holds {slot} MiB ({key} in {board}); raise {key} or remove packages from the recipe")]
    TooBig { what: &'static str, have: u64, slot: u64, key: &'static str, board: String },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RootImage {
    pub image: PathBuf,
    pub verity: PathBuf,
    /// dm-verity root hash (hex): what the kernel command line pins.
    pub roothash: String,
    pub salt: String,
    /// UUID in the hash tree's superblock.
    pub verity_uuid: String,
    pub image_bytes: u64,
    pub verity_bytes: u64,
    pub image_sha256: String,
    pub verity_sha256: String,
    /// With the delta-friendly layout: what the same tree takes with file tails packed
    /// into metadata (the default EROFS layout), to report what block alignment costs.
    pub packed_bytes: Option<u64>,
}

pub struct Options<'a> {
    pub compression: Compression,
    pub delta_friendly: bool,
    pub epoch: u64,
    pub uuid: Guid,
    pub root_slot_mib: u64,
    pub verity_slot_mib: u64,
    pub board_file: &'a str,
    /// What the dm-verity salt is derived from: the image and board, not the content, so
    /// the hash tree of an unchanged block stays the same from release to release (a
    /// content-derived salt changed every hash, and every delta carried the whole tree).
    pub salt_seed: &'a str,
}

/// Files mkfs.erofs leaves uncompressed (a regex on the path inside the image): K3s's
/// airgap and image archives (`/usr/lib/edgeimg/k3s/images/`).
pub const UNCOMPRESSED: &str = "usr/lib/edgeimg/k3s/images/";

pub fn make(
    tree: &Path,
    out: &Path,
    opts: &Options<'_>,
    mut progress: impl FnMut(&str),
) -> Result<RootImage, RootImageError> {
    let image = out.join("root.img");
    let verity = out.join("root.verity");
    // Container image archives stay uncompressed: their layers are compressed already, and
    // EROFS's compressed clusters would not line up from one build to the next, so one
    // changed image would change the blocks of every image after it (their blobs start on
    // 4 KiB boundaries in the archive, see oci::archive). A pcluster size of 0 means "do
    // not compress" to mkfs.erofs.
    let hints = out.join("compress-hints");
    std::fs::write(&hints, format!("0 {UNCOMPRESSED}\n"))?;
    let mkfs = |image: &Path, aligned: bool| {
        let mut cmd = Cmd::new("mkfs.erofs");
        match opts.compression {
            Compression::None => {}
            Compression::Lz4 => cmd = cmd.arg("-zlz4"),
            Compression::Lz4hc => cmd = cmd.arg("-zlz4hc"),
        }
        if aligned {
            // File data block-aligned instead of tails packed into metadata: a small change
            // then touches few 4 KiB blocks, which keeps block-level deltas small.
            cmd = cmd.arg("-Enoinline_data");
            if opts.compression != Compression::None {
                cmd = cmd.arg(format!("--compress-hints={}", hints.display()));
            }
        }
        cmd.arg(format!("-T{}", opts.epoch))
            .arg(format!("-U{}", opts.uuid.to_string().to_lowercase()))
            .arg(image)
            .arg(tree)
    };
    mkfs(&image, opts.delta_friendly).run_streaming(&mut progress)?;
    let packed_bytes = if opts.delta_friendly {
        // The same tree in the default layout, only to measure it (a few seconds with lz4).
        let packed = out.join("root.packed-layout.img");
        mkfs(&packed, false).run()?;
        let n = packed.metadata()?.len();
        std::fs::remove_file(&packed)?;
        Some(n)
    } else {
        None
    };
    std::fs::remove_file(&hints)?;

    let image_bytes = image.metadata()?.len();
    let mib = |b: u64| b.div_ceil(1 << 20);
    if image_bytes > opts.root_slot_mib << 20 {
        return Err(RootImageError::TooBig {
            what: "root filesystem image",
            have: mib(image_bytes),
            slot: opts.root_slot_mib,
            key: "disk.root_mib",
            board: opts.board_file.into(),
        });
    }
    let image_sha256 = sha256_file(&image)?;
    // The same image gives the same tree; the salt stays across releases (delta-friendly).
    let salt = sha256_bytes(format!("edgeimg-verity-salt:{}", opts.salt_seed).as_bytes());
    let vuuid = Guid::derive("edgeimg-verity", &image_sha256);
    let out_text = Cmd::new("veritysetup")
        .arg("format")
        .arg("--data-block-size=4096")
        .arg("--hash-block-size=4096")
        .arg("--hash=sha256")
        .arg(format!("--salt={salt}"))
        .arg(format!("--uuid={}", vuuid.to_string().to_lowercase()))
        .arg(&image)
        .arg(&verity)
        .run()?;
    let roothash = out_text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| RootImageError::NoRootHash(out_text.clone()))?;
    let verity_bytes = verity.metadata()?.len();
    if verity_bytes > opts.verity_slot_mib << 20 {
        return Err(RootImageError::TooBig {
            what: "dm-verity hash tree",
            have: mib(verity_bytes),
            slot: opts.verity_slot_mib,
            key: "disk.verity_mib",
            board: opts.board_file.into(),
        });
    }
    Ok(RootImage {
        verity_sha256: sha256_file(&verity)?,
        image,
        verity,
        roothash,
        salt,
        verity_uuid: vuuid.to_string().to_lowercase(),
        image_bytes,
        verity_bytes,
        image_sha256,
        packed_bytes,
    })
}

/// Check an image against its hash tree with `veritysetup verify` (no device-mapper needed).
pub fn verify(image: &Path, verity: &Path, roothash: &str) -> Result<(), ToolError> {
    Cmd::new("veritysetup").arg("verify").arg(image).arg(verity).arg(roothash).run().map(|_| ())
}

#[cfg(test)]
mod tests {
    use edgeimg_proto::verity::{hash_device, VerityParams};
    use std::io::Read;

    /// The device computes hash trees itself (after a delta); it must agree with
    /// veritysetup byte for byte, root hash included.
    #[test]
    fn the_devices_hash_tree_is_veritysetups() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let tree = d.path().join("tree");
        // 300 blocks: three levels (300 leaves → 3 blocks → 1).
        let bytes: Vec<u8> = (0..300 * 4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(&data, &bytes).unwrap();
        let p = VerityParams {
            salt: "5a".repeat(32),
            uuid: "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0".into(),
            data_blocks: 300,
        };
        let out = crate::tools::Cmd::new("veritysetup")
            .arg("format")
            .arg("--data-block-size=4096")
            .arg("--hash-block-size=4096")
            .arg("--hash=sha256")
            .arg(format!("--salt={}", p.salt))
            .arg(format!("--uuid={}", p.uuid))
            .arg(&data)
            .arg(&tree)
            .run()
            .expect("veritysetup (cryptsetup-bin) is needed for this test");
        let root = out.lines().find_map(|l| l.strip_prefix("Root hash:")).unwrap().trim().to_string();
        let mut f = std::fs::File::open(&data).unwrap();
        let (dev, top) = hash_device(&p, |b| f.read_exact(b)).unwrap();
        assert_eq!(hex::encode(top), root);
        assert_eq!(dev, std::fs::read(&tree).unwrap());
    }
}
