//! A slot's own boot partition written whole (Raspberry Pi tryboot, NVIDIA L4T): the release
//! carries the image of the partition's FAT filesystem for each slot.
//!
//! The image is written with its first 4 KiB (the FAT boot sector) last, then read back
//! from the medium. Until the boot sector is written the partition holds no filesystem, so
//! firmware that finds it in the middle of a write (a power cut) sees nothing to boot,
//! never a half-written kernel. Disarming zeroes the boot sector the same way.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use edgeimg_proto::tryboot::WHOLE_PARTITION;
use edgeimg_proto::Slot;

use super::{io, BootError, BootFiles};

/// The FAT boot sector and what follows it up to the first 4 KiB: written last.
pub const HEAD: usize = 4096;

/// A slot's partition from the pair (slot A's first).
pub fn of(partitions: &[std::path::PathBuf; 2], slot: Slot) -> &Path {
    &partitions[match slot {
        Slot::A => 0,
        Slot::B => 1,
    }]
}

/// Does the partition start with a FAT boot sector?
pub fn has_fat(dev: &Path) -> bool {
    let mut b = [0u8; 512];
    File::open(dev).and_then(|mut f| f.read_exact(&mut b)).is_ok()
        && b[510..512] == [0x55, 0xaa]
        && (b[82..87] == *b"FAT32" || b[54..59] == *b"FAT16" || b[54..59] == *b"FAT12")
}

/// Zero the first 4 KiB: the partition holds no filesystem any more.
pub fn zero_head(dev: &Path) -> Result<(), BootError> {
    let mut f = File::options().write(true).open(dev).map_err(io(dev))?;
    f.write_all(&[0u8; HEAD]).map_err(io(dev))?;
    f.sync_all().map_err(io(dev))
}

/// The one file a release gives a slot whose boot partition is written whole.
pub fn whole_image<'a>(files: &'a BootFiles, slot: Slot, backend: &str) -> Result<&'a Path, BootError> {
    let [(image, path)] = files.files.as_slice() else {
        return Err(BootError::State(format!(
            "the release gives {} boot files for slot {slot}; a {backend} board needs one, the image of the slot's \
             boot partition (was it built for a board with boot.backend = \"{backend}\"?)",
            files.files.len()
        )));
    };
    if path != WHOLE_PARTITION {
        return Err(BootError::State(format!(
            "the release puts {path} on the boot partition; a {backend} board takes the whole partition's image \
             (was it built for a board with boot.backend = \"{backend}\"?)"
        )));
    }
    Ok(image)
}

/// Write `image` to `dev`, the first 4 KiB last, and read it back. A failed read-back
/// zeroes the head again, so what is left is never booted.
pub fn write_image(dev: &Path, image: &Path) -> Result<(), BootError> {
    let mut src = File::open(image).map_err(io(image))?;
    let len = src.metadata().map_err(io(image))?.len();
    let mut dst = File::options().read(true).write(true).open(dev).map_err(io(dev))?;
    let room = dst.seek(SeekFrom::End(0)).map_err(io(dev))?;
    if len > room {
        return Err(BootError::State(format!(
            "the release's boot partition image is {len} bytes but {} has {room}: the board's disk.boot_mib grew \
             beyond what this device was flashed with; reflash it or keep boot_mib",
            dev.display()
        )));
    }
    if (len as usize) < HEAD {
        return Err(BootError::State(format!("{} is {len} bytes: not a boot partition image", image.display())));
    }
    let mut head = vec![0u8; HEAD];
    src.read_exact(&mut head).map_err(io(image))?;
    dst.seek(SeekFrom::Start(HEAD as u64)).map_err(io(dev))?;
    std::io::copy(&mut src, &mut dst).map_err(io(dev))?;
    dst.sync_all().map_err(io(dev))?;
    dst.seek(SeekFrom::Start(0)).map_err(io(dev))?;
    dst.write_all(&head).map_err(io(dev))?;
    dst.sync_all().map_err(io(dev))?;
    drop(dst);

    // Read back from the medium, as the root slot is: what the firmware will read is
    // what the release signed.
    let check = crate::install::sha256_prefix(image, len)
        .and_then(|sha| crate::install::verify("the boot partition image", dev, len, &sha));
    if let Err(e) = check {
        let _ = zero_head(dev);
        return Err(BootError::State(e.to_string()));
    }
    Ok(())
}
