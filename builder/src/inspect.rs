//! `edgeimg inspect`: what is on a disk image (partitions, boot entries, slot contents),
//! read from the image itself, plus the build report when given a build directory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::gpt::Table;
use crate::tools::Cmd;

#[derive(Debug, Serialize)]
pub struct BootEntry {
    pub file: String,
    pub title: String,
    pub version: String,
    pub slot: Option<String>,
    pub roothash: Option<String>,
    /// Boot counting state from the file name: None = blessed, Some((left, done)).
    pub tries_left: Option<u32>,
    /// The unified kernel image the entry starts (Secure Boot images), else None.
    pub uki: Option<String>,
    /// Whether that image carries an Authenticode signature.
    pub signed: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct PartitionInfo {
    pub label: String,
    pub type_guid: String,
    pub partuuid: String,
    pub offset: u64,
    pub size: u64,
    /// What the first bytes say is in it.
    pub content: String,
}

#[derive(Debug, Serialize)]
pub struct Info {
    pub disk: PathBuf,
    pub size: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionInfo>,
    pub boot_entries: Vec<BootEntry>,
    pub report: Option<serde_json::Value>,
}

fn sniff(f: &mut File, offset: u64) -> Result<String> {
    let mut b = vec![0u8; 4096];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut b)?;
    let le32 = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    Ok(if le32(1024) == 0xE0F5_E1E2 {
        "erofs".into()
    } else if &b[0..8] == b"verity\0\0" {
        "dm-verity hash tree".into()
    } else if b[1080] == 0x53 && b[1081] == 0xEF {
        "ext4".into()
    } else if &b[82..87] == b"FAT32" || &b[54..59] == b"FAT16" {
        "vfat".into()
    } else if b.iter().all(|&x| x == 0) {
        "empty".into()
    } else {
        "unknown".into()
    })
}

/// `uki`: the bytes of the unified kernel image the entry names, when it names one: its
/// command line is inside it.
fn parse_entry(file: &str, text: &str, uki: Option<&[u8]>) -> BootEntry {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).filter(|r| r.starts_with([' ', '\t'])).map(|r| r.trim().to_string()))
            .unwrap_or_default()
    };
    let efi = field("efi");
    let pe = uki.and_then(|b| crate::build::uki::Pe::parse(b, &efi).ok().map(|pe| (pe, b)));
    let options = match &pe {
        Some((pe, b)) => pe.section(b, ".cmdline").map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default(),
        None => field("options"),
    };
    let arg = |k: &str| options.split_whitespace().find_map(|a| a.strip_prefix(k)).map(String::from);
    let stem = file.trim_end_matches(".conf");
    let tries_left = stem.rsplit_once('+').and_then(|(_, c)| c.split('-').next()?.parse().ok());
    BootEntry {
        file: file.into(),
        title: field("title"),
        version: field("version"),
        slot: arg("edgeimg.slot="),
        roothash: arg("roothash="),
        tries_left,
        signed: pe.as_ref().map(|(pe, _)| pe.cert_table != (0, 0)),
        uki: (!efi.is_empty()).then_some(efi),
    }
}

fn boot_entries(disk: &Path, esp_offset: u64) -> Vec<BootEntry> {
    let img = format!("{}@@{esp_offset}", disk.display());
    let Ok(listing) =
        Cmd::new("mdir").args(["-b", "-i"]).arg(&img).arg("::/loader/entries").env("MTOOLS_SKIP_CHECK", "1").run()
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in listing.lines().map(str::trim).filter(|l| l.ends_with(".conf")) {
        let name = path.rsplit('/').next().unwrap_or(path);
        if let Ok(text) = Cmd::new("mtype")
            .arg("-i")
            .arg(&img)
            .arg(format!("::/loader/entries/{name}"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .run()
        {
            let efi = text.lines().find_map(|l| l.strip_prefix("efi ").map(str::trim));
            let uki = efi.and_then(|path| read_esp_file(&img, path));
            out.push(parse_entry(name, &text, uki.as_deref()));
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// A file from the ESP (FAT image at `img`, mtools syntax `file@@offset`).
fn read_esp_file(img: &str, path: &str) -> Option<Vec<u8>> {
    let tmp = tempfile::NamedTempFile::new().ok()?;
    Cmd::new("mcopy")
        .args(["-n", "-i", img])
        .arg(format!("::{path}"))
        .arg(tmp.path())
        .env("MTOOLS_SKIP_CHECK", "1")
        .run()
        .ok()?;
    std::fs::read(tmp.path()).ok()
}

pub fn inspect(path: &Path) -> Result<Info> {
    let (disk, report) = if path.is_dir() {
        let r = std::fs::read(path.join("report.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        (path.join("disk.img"), r)
    } else {
        (path.to_path_buf(), None)
    };
    let mut f = File::open(&disk).with_context(|| format!("opening {}", disk.display()))?;
    let table =
        Table::read_from(&mut f).with_context(|| format!("reading the partition table of {}", disk.display()))?;
    let mut partitions = Vec::new();
    for p in &table.partitions {
        partitions.push(PartitionInfo {
            label: p.label.clone(),
            type_guid: p.type_guid.to_string(),
            partuuid: p.guid.to_string(),
            offset: p.offset(),
            size: p.size(),
            content: sniff(&mut f, p.offset()).unwrap_or_else(|e| format!("unreadable: {e}")),
        });
    }
    let boot_entries = table
        .partitions
        .iter()
        .find(|p| p.label == edgeimg_proto::slot::ESP_LABEL)
        .map(|p| boot_entries(&disk, p.offset()))
        .unwrap_or_default();
    Ok(Info { disk, size: table.size_bytes, disk_guid: table.disk_guid.to_string(), partitions, boot_entries, report })
}

pub fn render(i: &Info) -> String {
    let mut s = format!("{}: {} MiB, GPT disk {}\n\n", i.disk.display(), i.size >> 20, i.disk_guid);
    s.push_str(&format!("{:<10} {:>10} {:>9}  {:<22} {}\n", "partition", "offset", "MiB", "content", "PARTUUID"));
    for p in &i.partitions {
        s.push_str(&format!(
            "{:<10} {:>10} {:>9}  {:<22} {}\n",
            p.label,
            p.offset,
            p.size >> 20,
            p.content,
            p.partuuid
        ));
    }
    s.push_str("\nboot entries:\n");
    if i.boot_entries.is_empty() {
        s.push_str("  (none found)\n");
    }
    for e in &i.boot_entries {
        let state = match e.tries_left {
            None => "good".to_string(),
            Some(0) => "failed (no tries left)".into(),
            Some(n) => format!("on trial, {n} tries left"),
        };
        let image = match (&e.uki, e.signed) {
            (None, _) => String::new(),
            (Some(p), Some(true)) => format!("  UKI {p} (signed)"),
            (Some(p), Some(false)) => format!("  UKI {p} (NOT signed)"),
            (Some(p), None) => format!("  UKI {p} (unreadable)"),
        };
        s.push_str(&format!(
            "  {:<18} slot {:<2} gen {:<4} {:<24} root hash {}{image}\n",
            e.file,
            e.slot.as_deref().unwrap_or("?"),
            e.version,
            state,
            e.roothash.as_deref().map(|h| &h[..16.min(h.len())]).unwrap_or("-")
        ));
    }
    if let Some(r) = &i.report {
        s.push_str(&format!(
            "\nbuild: {} {} for {} (build {}), kernel {}, {} packages\n",
            r["image"].as_str().unwrap_or("?"),
            r["version"].as_str().unwrap_or("?"),
            r["board"].as_str().unwrap_or("?"),
            r["build_id"].as_str().unwrap_or("?"),
            r["kernel_version"].as_str().unwrap_or("?"),
            r["packages"],
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_parsing_reads_counter_and_cmdline() {
        let e = parse_entry(
            "slot-b+1-2.conf",
            "title x\nversion 3\noptions ro roothash=abcd edgeimg.slot=b console=ttyS0\n",
            None,
        );
        assert_eq!(e.tries_left, Some(1));
        assert_eq!(e.slot.as_deref(), Some("b"));
        assert_eq!(e.roothash.as_deref(), Some("abcd"));
        assert_eq!(e.version, "3");
        assert_eq!(parse_entry("slot-a.conf", "", None).tries_left, None);
    }
}
