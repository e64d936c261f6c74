//! The A/B disk: partition layout, the data partition, and the sparse disk image, built
//! from per-partition image files without loop devices or mounts.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use edgeimg_proto::slot::{DATA_LABEL, ESP_LABEL};
use edgeimg_proto::Slot;

use super::boot::partition_guid;
use crate::config::Board;
use crate::gpt::{self, Guid, Partition, Table};
use crate::tools::{Cmd, ToolError};

const MIB: u64 = 1 << 20;
const MIB_SECTORS: u64 = MIB / gpt::SECTOR;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Gpt(#[from] gpt::GptError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{what} image is {have} bytes, larger than its {part} partition ({size} bytes)")]
    TooBig { what: String, part: String, have: u64, size: u64 },
}

/// The partition table of a board's disk image. Partition GUIDs are fixed per board.
pub fn layout(board: &Board) -> Table {
    let (root_t, verity_t) = board.arch.root_type_guids();
    let d = &board.disk;
    let mut parts: Vec<(String, &str, u64)> = vec![(ESP_LABEL.into(), gpt::types::ESP, d.esp_mib)];
    // Partitions 2 and 3: tryboot's autoboot.txt names them by number
    // (edgeimg_proto::tryboot), L4TLauncher finds them by name (edgeimg_proto::l4t).
    for s in Slot::ALL {
        if let Some(label) = board.boot.backend.slot_boot_label(s) {
            parts.push((label, gpt::types::MS_BASIC_DATA, d.boot_mib));
        }
    }
    for s in Slot::ALL {
        parts.push((s.root_label(), root_t, d.root_mib));
        parts.push((s.verity_label(), verity_t, d.verity_mib));
    }
    parts.push((DATA_LABEL.into(), gpt::types::LINUX_DATA, d.data_mib));

    let mut next = MIB_SECTORS;
    let mut partitions = Vec::new();
    for (label, t, mib) in parts {
        let sectors = mib * MIB_SECTORS;
        partitions.push(Partition {
            guid: partition_guid(&board.name, &label),
            type_guid: t.parse().unwrap_or(Guid([0; 16])),
            first_lba: next,
            last_lba: next + sectors - 1,
            attributes: 0,
            label,
        });
        next += sectors;
    }
    Table {
        disk_guid: Guid::derive("edgeimg-disk", &board.name),
        // 1 MiB after the last partition holds the backup GPT.
        size_bytes: (next + MIB_SECTORS) * gpt::SECTOR,
        partitions,
    }
}

/// The data partition as shipped: an empty ext4. The initrd creates what the root needs
/// on it (`etc/`, `var/`), so a wiped data partition boots the same way. (Populating it
/// with `mkfs.ext4 -d` would not be reproducible: e2fsprogs 1.47.0 copies each source
/// directory's real ctime.)
pub fn data_image(out: &Path, board: &Board, epoch: u64) -> Result<PathBuf, DiskError> {
    let img = out.join("data.img");
    let _ = fs::remove_file(&img);
    File::create(&img)?.set_len(board.disk.data_mib * MIB)?;
    let uuid = Guid::derive("edgeimg-data-fs", &board.name).to_string().to_lowercase();
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-L", DATA_LABEL, "-m", "1", "-U"])
        .arg(&uuid)
        .arg("-E")
        .arg(format!("hash_seed={uuid},root_owner=0:0"))
        .arg(&img)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .run()?;
    Ok(img)
}

/// Copy `src` into `dst` at `offset`, leaving all-zero 4 KiB blocks as holes.
/// Returns the number of bytes actually written.
pub fn copy_sparse(src: &Path, dst: &mut File, offset: u64) -> std::io::Result<u64> {
    const B: usize = 4096;
    let mut f = File::open(src)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = offset;
    let mut written = 0;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let r = f.read(&mut buf[n..])?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        let mut i = 0;
        while i < n {
            let end = (i + B).min(n);
            if buf[i..end].iter().all(|&b| b == 0) {
                i = end;
                continue;
            }
            // Extend over the following non-zero blocks and write them in one go.
            let mut j = end;
            while j < n {
                let e = (j + B).min(n);
                if buf[j..e].iter().all(|&b| b == 0) {
                    break;
                }
                j = e;
            }
            dst.seek(SeekFrom::Start(pos + i as u64))?;
            dst.write_all(&buf[i..j])?;
            written += (j - i) as u64;
            i = j;
        }
        pos += n as u64;
    }
    Ok(written)
}

/// Assemble the disk image: GPT plus each partition's image at its offset.
pub fn assemble(path: &Path, table: &Table, contents: &[(&str, &Path)]) -> Result<(), DiskError> {
    let _ = fs::remove_file(path);
    let mut f = File::options().create_new(true).read(true).write(true).open(path)?;
    f.set_len(table.size_bytes)?;
    table.write_to(&mut f)?;
    for (label, img) in contents {
        let part = table
            .partitions
            .iter()
            .find(|p| p.label == *label)
            .ok_or_else(|| std::io::Error::other(format!("no partition {label} in the layout")))?;
        let have = img.metadata()?.len();
        if have > part.size() {
            return Err(DiskError::TooBig {
                what: img.display().to_string(),
                part: label.to_string(),
                have,
                size: part.size(),
            });
        }
        copy_sparse(img, &mut f, part.offset())?;
    }
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeimg_proto::tryboot;

    #[test]
    fn per_slot_boot_partitions_are_where_the_firmware_looks() {
        for name in ["rpi5", "rpi4-tryboot"] {
            let (board, _) = crate::config::load_board(name, Some(Path::new("/nonexistent"))).unwrap();
            let t = layout(&board);
            let labels: Vec<&str> = t.partitions.iter().map(|p| p.label.as_str()).collect();
            assert_eq!(labels, ["esp", "boot-a", "boot-b", "root-a", "verity-a", "root-b", "verity-b", "data"]);
            for slot in Slot::ALL {
                // GPT partition numbers count from 1.
                let n = t.partitions.iter().position(|p| p.label == tryboot::boot_label(slot)).unwrap() as u32 + 1;
                assert_eq!(n, tryboot::partition_of(slot), "{name}: autoboot.txt names partition {n}");
                assert_eq!(t.partitions[n as usize - 1].size(), board.disk.boot_mib << 20);
            }
            assert_eq!(t.partitions[0].type_guid.to_string().to_uppercase(), gpt::types::ESP);
        }
        let (l4t, _) = crate::config::load_board("jetson-orin-nano", Some(Path::new("/nonexistent"))).unwrap();
        let labels: Vec<String> = layout(&l4t).partitions.iter().map(|p| p.label.clone()).collect();
        // L4TLauncher looks the slots' APP partitions up by these names (edgeimg_proto::l4t).
        assert_eq!(labels, ["esp", "APP", "APP_b", "root-a", "verity-a", "root-b", "verity-b", "data"]);
        let (uboot, _) = crate::config::load_board("rpi4", Some(Path::new("/nonexistent"))).unwrap();
        assert_eq!(layout(&uboot).partitions.len(), 6, "U-Boot boards keep one boot partition");
    }

    #[test]
    fn copy_sparse_keeps_holes_and_bytes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let mut data = vec![0u8; 5 * 4096 + 10];
        data[4096..8192].fill(7);
        data[5 * 4096..].fill(9);
        fs::write(&src, &data).unwrap();
        let dst = d.path().join("dst");
        let mut f = File::options().create(true).truncate(true).read(true).write(true).open(&dst).unwrap();
        f.set_len(1 << 20).unwrap();
        let written = copy_sparse(&src, &mut f, 8192).unwrap();
        assert_eq!(written, 4096 + 10);
        let all = fs::read(&dst).unwrap();
        assert_eq!(&all[8192..8192 + data.len()], &data[..]);
        use std::os::unix::fs::MetadataExt;
        assert!(f.metadata().unwrap().blocks() * 512 < 64 * 1024, "holes stay holes");
    }
}
