//! GUID Partition Table writing and reading (UEFI 2.10 §5.3), on plain files.
//!
//! Written by hand rather than through a crate so that every byte is determined by the
//! layout (no random GUIDs, no clock), which reproducible images need.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::str::FromStr;

use sha2::{Digest, Sha256};

pub const SECTOR: u64 = 512;
const ENTRY_SIZE: u32 = 128;
const ENTRY_COUNT: u32 = 128;
/// Sectors taken by the entry array (128 × 128 B).
const ENTRY_SECTORS: u64 = (ENTRY_SIZE as u64 * ENTRY_COUNT as u64) / SECTOR;

/// A GUID held in its textual byte order (as printed); converted to the on-disk
/// mixed-endian form only when written.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// A name-based GUID: the same name always gives the same GUID (RFC 9562 version 8).
    pub fn derive(namespace: &str, name: &str) -> Self {
        let h = Sha256::digest(format!("{namespace}\0{name}").as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&h[..16]);
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    fn to_disk(self) -> [u8; 16] {
        let b = self.0;
        let mut d = [0u8; 16];
        d[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        d[4..6].copy_from_slice(&[b[5], b[4]]);
        d[6..8].copy_from_slice(&[b[7], b[6]]);
        d[8..16].copy_from_slice(&b[8..16]);
        d
    }

    fn from_disk(d: &[u8]) -> Self {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&[d[3], d[2], d[1], d[0]]);
        b[4..6].copy_from_slice(&[d[5], d[4]]);
        b[6..8].copy_from_slice(&[d[7], d[6]]);
        b[8..16].copy_from_slice(&d[8..16]);
        Guid(b)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode_upper(self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Guid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hexs: String = s.chars().filter(|c| *c != '-').collect();
        let v = hex::decode(&hexs).map_err(|e| format!("bad GUID {s}: {e}"))?;
        let b: [u8; 16] = v.try_into().map_err(|_| format!("bad GUID {s}: need 16 bytes"))?;
        Ok(Guid(b))
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Well-known partition type GUIDs.
pub mod types {
    pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    pub const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    /// A FAT partition that is not the ESP (a Raspberry Pi slot's boot partition).
    pub const MS_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    pub label: String,
    pub type_guid: Guid,
    pub guid: Guid,
    /// First sector (inclusive).
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    pub attributes: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Table {
    pub disk_guid: Guid,
    pub size_bytes: u64,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no GPT found: {0}")]
    Invalid(String),
    #[error("layout error: {0}")]
    Layout(String),
}

impl Table {
    /// First sector usable by partitions.
    pub fn first_usable(&self) -> u64 {
        2 + ENTRY_SECTORS
    }
    /// Last sector usable by partitions.
    pub fn last_usable(&self) -> u64 {
        self.size_bytes / SECTOR - 2 - ENTRY_SECTORS
    }

    fn check(&self) -> Result<(), GptError> {
        if !self.size_bytes.is_multiple_of(SECTOR) {
            return Err(GptError::Layout("disk size is not a multiple of 512".into()));
        }
        if self.partitions.len() > ENTRY_COUNT as usize {
            return Err(GptError::Layout("more than 128 partitions".into()));
        }
        let mut prev_end = self.first_usable() - 1;
        for p in &self.partitions {
            if p.first_lba <= prev_end || p.last_lba < p.first_lba || p.last_lba > self.last_usable() {
                return Err(GptError::Layout(format!(
                    "partition {} ({}..{}) overlaps or is outside the usable area {}..{}",
                    p.label,
                    p.first_lba,
                    p.last_lba,
                    self.first_usable(),
                    self.last_usable()
                )));
            }
            if p.label.encode_utf16().count() > 36 {
                return Err(GptError::Layout(format!("label {} is longer than 36 UTF-16 units", p.label)));
            }
            prev_end = p.last_lba;
        }
        Ok(())
    }

    fn entries(&self) -> Vec<u8> {
        let mut buf = vec![0u8; (ENTRY_SIZE * ENTRY_COUNT) as usize];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut buf[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(&p.type_guid.to_disk());
            e[16..32].copy_from_slice(&p.guid.to_disk());
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (j, u) in p.label.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        buf
    }

    fn header(&self, my_lba: u64, alt_lba: u64, entries_lba: u64, entries_crc: u32) -> [u8; SECTOR as usize] {
        let mut h = [0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable().to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_disk());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn protective_mbr(&self) -> [u8; SECTOR as usize] {
        let mut m = [0u8; SECTOR as usize];
        let sectors = (self.size_bytes / SECTOR - 1).min(0xFFFF_FFFF) as u32;
        let rec = &mut m[446..462];
        rec[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        rec[4] = 0xEE;
        rec[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        rec[8..12].copy_from_slice(&1u32.to_le_bytes());
        rec[12..16].copy_from_slice(&sectors.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xAA;
        m
    }

    /// Write protective MBR, primary and backup GPT into `f` (which must already be
    /// `size_bytes` long; partition contents are left alone).
    pub fn write_to(&self, f: &mut File) -> Result<(), GptError> {
        self.check()?;
        let last = self.size_bytes / SECTOR - 1;
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        let backup_entries_lba = last - ENTRY_SECTORS;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&self.protective_mbr())?;
        f.write_all(&self.header(1, last, 2, crc))?;
        f.write_all(&entries)?;
        f.seek(SeekFrom::Start(backup_entries_lba * SECTOR))?;
        f.write_all(&entries)?;
        f.write_all(&self.header(last, 1, backup_entries_lba, crc))?;
        Ok(())
    }

    /// Read and verify the primary GPT of a disk image or block device.
    pub fn read_from(f: &mut File) -> Result<Self, GptError> {
        let size_bytes = f.seek(SeekFrom::End(0))?;
        let mut hdr = [0u8; SECTOR as usize];
        f.seek(SeekFrom::Start(SECTOR))?;
        f.read_exact(&mut hdr).map_err(|_| GptError::Invalid("file is too small".into()))?;
        if &hdr[0..8] != b"EFI PART" {
            return Err(GptError::Invalid("no 'EFI PART' signature at LBA 1".into()));
        }
        let hsize = u32::from_le_bytes(hdr[12..16].try_into().unwrap_or_default()) as usize;
        if !(92..=SECTOR as usize).contains(&hsize) {
            return Err(GptError::Invalid(format!("header size {hsize}")));
        }
        let stored = u32::from_le_bytes(hdr[16..20].try_into().unwrap_or_default());
        let mut h2 = hdr;
        h2[16..20].fill(0);
        if crc32fast::hash(&h2[..hsize]) != stored {
            return Err(GptError::Invalid("header CRC mismatch".into()));
        }
        let u64at = |o: usize| u64::from_le_bytes(hdr[o..o + 8].try_into().unwrap_or_default());
        let u32at = |o: usize| u32::from_le_bytes(hdr[o..o + 4].try_into().unwrap_or_default());
        let entries_lba = u64at(72);
        let count = u32at(80);
        let esize = u32at(84);
        if esize < 128 || count > 1024 {
            return Err(GptError::Invalid(format!("{count} entries of {esize} bytes")));
        }
        let mut entries = vec![0u8; (count * esize) as usize];
        f.seek(SeekFrom::Start(entries_lba * SECTOR))?;
        f.read_exact(&mut entries)?;
        if crc32fast::hash(&entries) != u32at(88) {
            return Err(GptError::Invalid("partition entry array CRC mismatch".into()));
        }
        let mut partitions = Vec::new();
        for e in entries.chunks(esize as usize) {
            let type_guid = Guid::from_disk(&e[0..16]);
            if type_guid.is_zero() {
                continue;
            }
            let name: Vec<u16> =
                e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
            partitions.push(Partition {
                label: String::from_utf16_lossy(&name),
                type_guid,
                guid: Guid::from_disk(&e[16..32]),
                first_lba: u64::from_le_bytes(e[32..40].try_into().unwrap_or_default()),
                last_lba: u64::from_le_bytes(e[40..48].try_into().unwrap_or_default()),
                attributes: u64::from_le_bytes(e[48..56].try_into().unwrap_or_default()),
            });
        }
        Ok(Table { disk_guid: Guid::from_disk(&hdr[56..72]), size_bytes, partitions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(size: u64) -> Table {
        let mib = 2048;
        Table {
            disk_guid: Guid::derive("t", "disk"),
            size_bytes: size,
            partitions: vec![
                Partition {
                    label: "esp".into(),
                    type_guid: types::ESP.parse().unwrap(),
                    guid: Guid::derive("t", "esp"),
                    first_lba: mib,
                    last_lba: 3 * mib - 1,
                    attributes: 0,
                },
                Partition {
                    label: "data".into(),
                    type_guid: types::LINUX_DATA.parse().unwrap(),
                    guid: Guid::derive("t", "data"),
                    first_lba: 3 * mib,
                    last_lba: 5 * mib - 1,
                    attributes: 0,
                },
            ],
        }
    }

    #[test]
    fn guid_text_roundtrip_and_disk_order() {
        let g: Guid = types::ESP.parse().unwrap();
        assert_eq!(g.to_string(), types::ESP);
        assert_eq!(&g.to_disk()[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(Guid::from_disk(&g.to_disk()), g);
        let d = Guid::derive("a", "b");
        assert_eq!(d, Guid::derive("a", "b"));
        assert_ne!(d, Guid::derive("a", "c"));
        assert_eq!(d.0[6] >> 4, 8);
    }

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let mut f = File::options().create(true).truncate(true).read(true).write(true).open(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        let t = table(8 << 20);
        t.write_to(&mut f).unwrap();
        let back = Table::read_from(&mut f).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn overlapping_partitions_are_refused() {
        let mut t = table(8 << 20);
        t.partitions[1].first_lba = 2 * 2048;
        assert!(matches!(t.check(), Err(GptError::Layout(_))));
        let t = table(4 << 20);
        assert!(t.check().is_err(), "data partition runs past the end");
    }

    #[test]
    fn sgdisk_accepts_our_table() {
        if crate::tools::find("sgdisk").is_none() {
            eprintln!("sgdisk not installed (apt-get install gdisk); independent check skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let mut f = File::options().create(true).truncate(true).read(true).write(true).open(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        table(8 << 20).write_to(&mut f).unwrap();
        drop(f);
        let out = std::process::Command::new("sgdisk").arg("-v").arg(&p).output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.contains("No problems found"), "{s}");
        let out = std::process::Command::new("sgdisk").arg("-i2").arg(&p).output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.contains("Partition name: 'data'"), "{s}");
        assert!(s.contains(&Guid::derive("t", "data").to_string()), "{s}");
    }
}
