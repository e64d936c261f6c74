//! Where the image goes: a block device or a regular file, behind a small trait so tests can
//! put a failing or lying device in its place.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{posix_fadvise, OFlag, PosixFadviseAdvice};

/// Alignment of direct I/O (offsets, lengths and memory).
pub const ALIGN: usize = 4096;

pub trait Target: Send {
    /// Path or name for messages.
    fn name(&self) -> &Path;
    /// Bytes it can hold; None for a regular file, which grows.
    fn capacity(&self) -> Option<u64>;
    /// Called once before writing: a regular file is emptied and sized to the image.
    fn prepare(&mut self, image_size: Option<u64>) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Fill `buf` from `offset` (short only at the end of a regular file: an error then).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Everything written is on stable storage.
    fn sync(&mut self) -> io::Result<()>;
    /// Forget cached pages, so that reads come from the medium, not from memory.
    fn drop_cache(&mut self) -> io::Result<()>;
}

/// A block device (opened exclusively, aligned writes with O_DIRECT) or a regular file.
pub struct FileTarget {
    path: PathBuf,
    file: File,
    /// O_DIRECT descriptor for aligned writes to a block device (None: not a device, or the
    /// device refused O_DIRECT).
    direct: Option<File>,
    capacity: Option<u64>,
    regular: bool,
}

impl FileTarget {
    /// A regular file, created if missing.
    pub fn open_file(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        Ok(FileTarget { path: path.into(), file, direct: None, capacity: None, regular: true })
    }

    /// A block device of `capacity` bytes. O_EXCL makes the kernel refuse it if anything has
    /// it open exclusively (a mounted filesystem, device-mapper, RAID): the last line of defense
    /// after the sysfs checks. `direct` also opens it with O_DIRECT for the bulk writes.
    pub fn open_device(path: &Path, capacity: u64, direct: bool) -> io::Result<Self> {
        let excl = OFlag::O_EXCL.bits();
        let file = OpenOptions::new().read(true).write(true).custom_flags(excl).open(path)?;
        let direct = direct
            .then(|| {
                OpenOptions::new().read(true).write(true).custom_flags(excl | OFlag::O_DIRECT.bits()).open(path).ok()
            })
            .flatten();
        Ok(FileTarget { path: path.into(), file, direct, capacity: Some(capacity), regular: false })
    }

    pub fn uses_direct_io(&self) -> bool {
        self.direct.is_some()
    }
}

fn aligned(offset: u64, data: &[u8]) -> bool {
    offset.is_multiple_of(ALIGN as u64)
        && data.len().is_multiple_of(ALIGN)
        && (data.as_ptr() as usize).is_multiple_of(ALIGN)
}

impl Target for FileTarget {
    fn name(&self) -> &Path {
        &self.path
    }

    fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    fn prepare(&mut self, image_size: Option<u64>) -> io::Result<()> {
        if self.regular {
            // Empty first: what the block map skips must read as zeros, as in the image.
            self.file.set_len(0)?;
            if let Some(s) = image_size {
                self.file.set_len(s)?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        match &self.direct {
            Some(d) if aligned(offset, data) => d.write_all_at(data, offset),
            _ => self.file.write_all_at(data, offset),
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(d) = &self.direct {
            d.sync_all()?;
        }
        self.file.sync_all()
    }

    fn drop_cache(&mut self) -> io::Result<()> {
        // Only clean pages are dropped: callers sync first.
        posix_fadvise(self.file.as_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).map_err(io::Error::from)
    }
}

/// A buffer whose data starts on a 4 KiB boundary in memory, as O_DIRECT needs.
pub struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    cap: usize,
}

impl AlignedBuf {
    pub fn new(cap: usize) -> Self {
        let vec = vec![0u8; cap + ALIGN];
        let start = (ALIGN - (vec.as_ptr() as usize % ALIGN)) % ALIGN;
        AlignedBuf { vec, start, cap }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.cap]
    }

    pub fn bytes(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.cap]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned() {
        for cap in [4096, 8 << 20] {
            let mut b = AlignedBuf::new(cap);
            assert_eq!(b.bytes_mut().as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.bytes().len(), cap);
        }
    }

    #[test]
    fn direct_io_on_a_file_where_the_filesystem_allows_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dev");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let mut t = FileTarget::open_device(&p, 1 << 20, true).unwrap();
        let mut b = AlignedBuf::new(2 * ALIGN);
        b.bytes_mut().fill(7);
        t.write_at(ALIGN as u64, b.bytes()).unwrap();
        t.write_at(100, b"unaligned").unwrap();
        t.sync().unwrap();
        t.drop_cache().unwrap();
        let mut r = vec![0u8; 3 * ALIGN];
        t.read_at(0, &mut r).unwrap();
        assert_eq!(&r[100..109], b"unaligned");
        assert!(r[ALIGN..].iter().all(|&x| x == 7));
    }
}
