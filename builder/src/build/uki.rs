//! Unified kernel images: systemd's EFI stub with the kernel, initrd and command line added
//! as PE sections, so that one signature covers all three.
//!
//! Written here rather than with `ukify` (not in Debian 12, the build host) or `objcopy`
//! (whose section placement depends on the binutils version): adding sections to a PE
//! image is a small, exact operation, and doing it ourselves keeps builds reproducible.
//! Section order and names follow the UKI specification: `.osrel`, `.cmdline`, `.uname`,
//! `.initrd`, then `.linux` last.

use std::fs;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PeError {
    #[error("{what}: not a PE32+ EFI image ({why})")]
    Format { what: String, why: String },
    #[error("{what}: no room in the PE header for {need} more section headers; is this systemd's linuxx64.efi.stub?")]
    NoRoom { what: String, need: usize },
    #[error("{what}: already signed (a certificate table is present); give the unsigned stub")]
    Signed { what: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

const COFF_LEN: usize = 20;
const SECTION_LEN: usize = 40;
/// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ.
const DATA_READ: u32 = 0x4000_0040;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
}

/// The parts of a PE32+ header this module reads and changes.
#[derive(Debug, Clone)]
pub struct Pe {
    coff: usize,
    opt: usize,
    /// Offset of the section table.
    table: usize,
    pub sections: Vec<Section>,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_headers: u32,
    pub size_of_image: u32,
    /// Offset and size of the Authenticode certificate table (0, 0 when unsigned).
    pub cert_table: (u32, u32),
}

impl Pe {
    pub fn parse(b: &[u8], what: &str) -> Result<Pe, PeError> {
        let bad = |why: &str| PeError::Format { what: what.into(), why: why.into() };
        if b.len() < 0x40 || &b[..2] != b"MZ" {
            return Err(bad("no MZ header"));
        }
        let pe = u32_at(b, 0x3c) as usize;
        if b.len() < pe + 4 + COFF_LEN || &b[pe..pe + 4] != b"PE\0\0" {
            return Err(bad("no PE signature"));
        }
        let coff = pe + 4;
        let nsec = u16_at(b, coff + 2) as usize;
        let opt_len = u16_at(b, coff + 16) as usize;
        let opt = coff + COFF_LEN;
        if b.len() < opt + opt_len || opt_len < 112 + 5 * 8 || u16_at(b, opt) != 0x20b {
            return Err(bad("not a PE32+ optional header"));
        }
        let ndirs = u32_at(b, opt + 108) as usize;
        let cert_table = if ndirs > 4 { (u32_at(b, opt + 112 + 32), u32_at(b, opt + 112 + 36)) } else { (0, 0) };
        let table = opt + opt_len;
        if b.len() < table + nsec * SECTION_LEN {
            return Err(bad("section table runs past the end of the file"));
        }
        let sections = (0..nsec)
            .map(|i| {
                let s = table + i * SECTION_LEN;
                let name = String::from_utf8_lossy(&b[s..s + 8]).trim_end_matches('\0').to_string();
                Section {
                    name,
                    virtual_size: u32_at(b, s + 8),
                    virtual_address: u32_at(b, s + 12),
                    raw_size: u32_at(b, s + 16),
                    raw_offset: u32_at(b, s + 20),
                }
            })
            .collect();
        Ok(Pe {
            coff,
            opt,
            table,
            sections,
            section_alignment: u32_at(b, opt + 32),
            file_alignment: u32_at(b, opt + 36),
            size_of_image: u32_at(b, opt + 56),
            size_of_headers: u32_at(b, opt + 60),
            cert_table,
        })
    }

    pub fn section<'a>(&self, b: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let s = self.sections.iter().find(|s| s.name == name)?;
        let len = s.virtual_size.min(s.raw_size) as usize;
        b.get(s.raw_offset as usize..s.raw_offset as usize + len)
    }
}

/// Add `sections` (name, bytes) to the PE image `stub`, in order, after its own sections.
pub fn add_sections(stub: &[u8], what: &str, sections: &[(&str, &[u8])]) -> Result<Vec<u8>, PeError> {
    let pe = Pe::parse(stub, what)?;
    if pe.cert_table != (0, 0) {
        return Err(PeError::Signed { what: what.into() });
    }
    let bad = |why: &str| PeError::Format { what: what.into(), why: why.into() };
    let (fa, sa) = (pe.file_alignment as u64, pe.section_alignment as u64);
    if fa == 0 || sa == 0 || !fa.is_power_of_two() || !sa.is_power_of_two() {
        return Err(bad("bad section or file alignment"));
    }
    // New headers go after the existing ones, before the first section's data.
    let first_raw = pe.sections.iter().map(|s| s.raw_offset).filter(|&o| o > 0).min().unwrap_or(pe.size_of_headers);
    let new_end = pe.table + (pe.sections.len() + sections.len()) * SECTION_LEN;
    if new_end > pe.size_of_headers.min(first_raw) as usize {
        return Err(PeError::NoRoom { what: what.into(), need: sections.len() });
    }
    // Drop anything after the last section's data (nothing, for systemd's stub).
    let raw_end = pe.sections.iter().map(|s| s.raw_offset as u64 + s.raw_size as u64).max().unwrap_or(0);
    let mut out =
        stub.get(..raw_end as usize).ok_or_else(|| bad("section data runs past the end of the file"))?.to_vec();
    out.resize(align(out.len() as u64, fa) as usize, 0);
    let mut va = pe
        .sections
        .iter()
        .map(|s| s.virtual_address as u64 + s.virtual_size.max(s.raw_size) as u64)
        .max()
        .unwrap_or(0)
        .max(pe.size_of_image as u64);
    let mut header = pe.table + pe.sections.len() * SECTION_LEN;
    let mut initialized = 0u64;
    for (name, data) in sections {
        if name.len() > 8 {
            return Err(bad(&format!("section name {name} is longer than 8 bytes")));
        }
        va = align(va, sa);
        let raw_offset = out.len() as u64;
        let raw_size = align(data.len() as u64, fa);
        if va + data.len() as u64 > u32::MAX as u64 || raw_offset + raw_size > u32::MAX as u64 {
            return Err(bad("the image would be larger than 4 GiB"));
        }
        out.extend_from_slice(data);
        out.resize((raw_offset + raw_size) as usize, 0);
        let h = &mut out[header..header + SECTION_LEN];
        h.fill(0);
        h[..name.len()].copy_from_slice(name.as_bytes());
        put_u32(h, 8, data.len() as u32);
        put_u32(h, 12, va as u32);
        put_u32(h, 16, raw_size as u32);
        put_u32(h, 20, raw_offset as u32);
        put_u32(h, 36, DATA_READ);
        header += SECTION_LEN;
        va += data.len() as u64;
        initialized += raw_size;
    }
    put_u16(&mut out, pe.coff + 2, (pe.sections.len() + sections.len()) as u16);
    put_u32(&mut out, pe.opt + 56, align(va, sa) as u32);
    let init = u32_at(&out, pe.opt + 8) as u64 + initialized;
    put_u32(&mut out, pe.opt + 8, init.min(u32::MAX as u64) as u32);
    // Firmware does not check the optional-header checksum; Authenticode excludes it.
    put_u32(&mut out, pe.opt + 64, 0);
    Ok(out)
}

/// What goes into one slot's UKI.
pub struct UkiInput<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub os_release: &'a [u8],
    pub uname: &'a str,
}

/// Assemble an (unsigned) unified kernel image.
pub fn assemble(input: &UkiInput<'_>, out: &Path) -> Result<(), PeError> {
    let stub = fs::read(input.stub)?;
    let kernel = fs::read(input.kernel)?;
    Pe::parse(&kernel, &input.kernel.display().to_string())?;
    let initrd = fs::read(input.initrd)?;
    let uki = add_sections(
        &stub,
        &input.stub.display().to_string(),
        &[
            (".osrel", input.os_release),
            (".cmdline", input.cmdline.as_bytes()),
            (".uname", input.uname.as_bytes()),
            (".initrd", &initrd),
            (".linux", &kernel),
        ],
    )?;
    fs::write(out, uki)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image: headers (0x400 bytes, room for 8 sections), one .text section.
    fn tiny_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x600];
        b[..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut b, coff, 0x8664);
        put_u16(&mut b, coff + 2, 1);
        put_u16(&mut b, coff + 16, 240);
        let opt = coff + 20;
        put_u16(&mut b, opt, 0x20b);
        put_u32(&mut b, opt + 32, 0x1000);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x2000);
        put_u32(&mut b, opt + 60, 0x400);
        put_u32(&mut b, opt + 108, 16);
        let s = opt + 240;
        b[s..s + 5].copy_from_slice(b".text");
        put_u32(&mut b, s + 8, 0x10);
        put_u32(&mut b, s + 12, 0x1000);
        put_u32(&mut b, s + 16, 0x200);
        put_u32(&mut b, s + 20, 0x400);
        b[0x400..0x410].copy_from_slice(b"0123456789abcdef");
        b
    }

    #[test]
    fn sections_are_added_aligned_and_readable() {
        let stub = tiny_pe();
        let out = add_sections(&stub, "t", &[(".cmdline", b"ro root=x"), (".linux", &[7u8; 5000])]).unwrap();
        let pe = Pe::parse(&out, "out").unwrap();
        let names: Vec<_> = pe.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".cmdline", ".linux"]);
        assert_eq!(pe.section(&out, ".cmdline").unwrap(), b"ro root=x");
        assert_eq!(pe.section(&out, ".linux").unwrap(), &[7u8; 5000][..]);
        assert_eq!(pe.section(&out, ".text").unwrap(), b"0123456789abcdef");
        for s in &pe.sections {
            assert_eq!(s.virtual_address % 0x1000, 0, "{s:?}");
            assert_eq!(s.raw_offset % 0x200, 0, "{s:?}");
            assert_eq!(s.raw_size % 0x200, 0, "{s:?}");
        }
        // Sections never overlap in memory, and the image covers them all.
        let linux = &pe.sections[2];
        assert!(pe.sections[1].virtual_address + pe.sections[1].virtual_size <= linux.virtual_address);
        assert_eq!(pe.size_of_image as u64, align((linux.virtual_address + linux.virtual_size) as u64, 0x1000));
        assert_eq!(out.len() as u64, (linux.raw_offset + linux.raw_size) as u64);
    }

    #[test]
    fn refuses_what_it_cannot_extend() {
        let mut signed = tiny_pe();
        put_u32(&mut signed, 0x84 + 20 + 112 + 32, 0x600);
        put_u32(&mut signed, 0x84 + 20 + 112 + 36, 8);
        assert!(matches!(add_sections(&signed, "s", &[(".a", b"x")]), Err(PeError::Signed { .. })));
        // 0x400 of headers: the table starts at 0x18c; 20 more headers do not fit.
        let many: Vec<(&str, &[u8])> = (0..20).map(|_| (".x", &b"x"[..])).collect();
        assert!(matches!(add_sections(&tiny_pe(), "s", &many), Err(PeError::NoRoom { .. })));
        assert!(matches!(add_sections(b"MZ not really", "junk", &[]), Err(PeError::Format { .. })));
        assert!(matches!(add_sections(&tiny_pe(), "s", &[(".toolongname", b"x")]), Err(PeError::Format { .. })));
    }
}
