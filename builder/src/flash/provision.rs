//! `--provision FILE`: the device's provisioning file (hostname, join token...) dropped on the
//! boot partition of the freshly written target, inside its FAT filesystem, without mounting
//! anything. The file holds a secret: its contents never reach a log, an event or an error.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use edgeimg_proto::provision::{Provision, FILE_NAME};
use edgeimg_proto::slot::ESP_LABEL;

use super::error::FlashError;
use super::target::Target;
use crate::gpt::Table;

/// A validated provisioning file.
pub struct ProvisionFile {
    pub path: PathBuf,
    contents: Vec<u8>,
    /// Redacted one-line summary (`hostname=... k3s.token=(set)`).
    pub summary: String,
}

impl fmt::Debug for ProvisionFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProvisionFile({}, {})", self.path.display(), self.summary)
    }
}

/// Parser errors quote the offending line of the file, which may be the token's: keep only
/// the lines that are the parser's own words.
fn redact(message: &str) -> String {
    message
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            let quoted = t.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start().starts_with('|');
            !quoted && !t.is_empty()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Read and validate a provisioning file (before the target is touched).
pub fn load(path: &Path) -> Result<ProvisionFile, FlashError> {
    let err = |message: String| FlashError::Provision { path: path.into(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let p = Provision::parse(&text).map_err(|m| err(redact(&m)))?;
    Ok(ProvisionFile { path: path.into(), summary: p.summary(), contents: text.into_bytes() })
}

/// Offset and size of the `esp` partition, from the image's first MiB.
pub fn esp_of(head: &[u8]) -> Option<(u64, u64)> {
    // Table::read_from wants a File: give it the head in an unnamed temporary file.
    let mut f = tempfile::tempfile().ok()?;
    f.write_all(head).ok()?;
    let t = Table::read_from(&mut f).ok()?;
    t.partitions.iter().find(|p| p.label == ESP_LABEL).map(|p| (p.offset(), p.size()))
}

/// A partition of the target as a file of its own, for the FAT code.
struct Slice<'a> {
    target: &'a mut dyn Target,
    base: u64,
    len: u64,
    pos: u64,
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.target.read_at(self.base + self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Slice<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past the end of the partition"));
        }
        self.target.write_at(self.base + self.pos, &buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Slice<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the partition"))?;
        Ok(self.pos)
    }
}

/// File times: now, in UTC (the FAT code would otherwise use 1980).
#[derive(Debug)]
struct Now;

impl fatfs::TimeProvider for Now {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        let t = time::OffsetDateTime::now_utc();
        fatfs::DateTime {
            date: fatfs::Date {
                year: (t.year().clamp(1980, 2107)) as u16,
                month: t.month() as u16,
                day: t.day() as u16,
            },
            time: fatfs::Time {
                hour: t.hour() as u16,
                min: t.minute() as u16,
                sec: t.second() as u16,
                millis: t.millisecond(),
            },
        }
    }
}

static NOW: Now = Now;

fn fat(what: &str) -> impl Fn(io::Error) -> FlashError + '_ {
    move |e| FlashError::Fat(format!("{what}: {e}"))
}

fn open_fs(target: &mut dyn Target, esp: (u64, u64)) -> Result<fatfs::FileSystem<Slice<'_>>, FlashError> {
    let slice = Slice { target, base: esp.0, len: esp.1, pos: 0 };
    fatfs::FileSystem::new(slice, fatfs::FsOptions::new().time_provider(&NOW))
        .map_err(fat(&format!("no FAT filesystem at byte offset {}", esp.0)))
}

/// Write `/edgeimg-provision.toml` into the FAT filesystem of the ESP at `esp`, then read it
/// back from the medium and compare.
pub fn install(target: &mut dyn Target, esp: (u64, u64), file: &ProvisionFile) -> Result<(), FlashError> {
    {
        let fs = open_fs(target, esp)?;
        {
            let mut f = fs.root_dir().create_file(FILE_NAME).map_err(fat(&format!("creating /{FILE_NAME}")))?;
            f.truncate().map_err(fat("truncating the old provisioning file"))?;
            f.write_all(&file.contents).map_err(fat(&format!("writing /{FILE_NAME}")))?;
            f.flush().map_err(fat(&format!("writing /{FILE_NAME}")))?;
        }
        fs.unmount().map_err(fat("closing the filesystem"))?;
    }
    target.sync().map_err(FlashError::Sync)?;
    let _ = target.drop_cache();
    let fs = open_fs(target, esp)?;
    let mut back = Vec::new();
    fs.root_dir()
        .open_file(FILE_NAME)
        .and_then(|mut f| f.read_to_end(&mut back))
        .map_err(fat(&format!("reading /{FILE_NAME} back")))?;
    if back != file.contents {
        return Err(FlashError::ProvisionMismatch(file.path.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_do_not_quote_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.toml");
        std::fs::write(&p, "[k3s]\ntoken = \"K10supersecret::x\" junk\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(!e.contains("supersecret"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn debug_is_redacted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.toml");
        std::fs::write(&p, "hostname = \"a\"\n[k3s]\ntoken = \"K10supersecret\"\n").unwrap();
        let f = load(&p).unwrap();
        assert!(!format!("{f:?}").contains("supersecret"));
        assert!(f.summary.contains("k3s.token=(set)"));
    }
}
