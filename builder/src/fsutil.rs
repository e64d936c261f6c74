//! Small filesystem helpers: hashing, writing files into a tree, atomic replacement.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Join an absolute in-image path (`/etc/x`) onto a root directory.
pub fn in_root(root: &Path, image_path: &str) -> PathBuf {
    root.join(image_path.trim_start_matches('/'))
}

/// Write a file inside an image tree, creating parents, with the given mode.
pub fn write_file(root: &Path, image_path: &str, content: impl AsRef<[u8]>, mode: u32) -> io::Result<()> {
    let p = in_root(root, image_path);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent)?;
    }
    // Replace symlinks instead of writing through them (they may point at the host).
    if p.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(&p)?;
    }
    fs::write(&p, content)?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))
}

/// Create or replace a symlink inside an image tree.
pub fn write_symlink(root: &Path, image_path: &str, target: &str) -> io::Result<()> {
    let p = in_root(root, image_path);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent)?;
    }
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&p)?,
        Ok(_) => fs::remove_file(&p)?,
        Err(_) => {}
    }
    symlink(target, &p)
}

/// Remove a path inside an image tree if it exists (file, symlink or directory).
pub fn remove(root: &Path, image_path: &str) -> io::Result<()> {
    let p = in_root(root, image_path);
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
        Ok(_) => fs::remove_file(&p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsync a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Write a file atomically: temp file in the same directory, fsync, rename, fsync dir.
pub fn atomic_write(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(content)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Set the mtime (and atime) of every entry under `dir`, symlinks included, to `epoch`.
pub fn clamp_mtimes(dir: &Path, epoch: i64) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let ts = TimeSpec::new(epoch, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
            utimensat(nix::fcntl::AT_FDCWD, &e.path(), &ts, &ts, UtimensatFlags::NoFollowSymlink)
                .map_err(io::Error::from)?;
        }
    }
    utimensat(nix::fcntl::AT_FDCWD, dir, &ts, &ts, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

/// Total apparent size of the regular files under a directory.
pub fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                total += e.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// Copy a tree preserving ownership, modes, xattrs, hard links and sparseness.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), crate::tools::ToolError> {
    crate::tools::Cmd::new("cp").args(["-a", "--reflink=auto", "--sparse=always"]).arg(src).arg(dst).run().map(|_| ())
}
