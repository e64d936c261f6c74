//! Block maps in bmaptool's format (version 2.0, sha256): which 4 KiB blocks of a sparse
//! image hold data, with a checksum per range so a writer can verify what it wrote.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::Path;

use nix::unistd::{lseek, Whence};
use sha2::{Digest, Sha256};

pub const BLOCK: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// First block (inclusive).
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// sha256 of the bytes of these blocks (the last block may be short at the image end).
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<Range>,
}

#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a bmap file this tool can use: {0}")]
    Parse(String),
    #[error("the bmap file's own checksum does not match: it is damaged or was edited")]
    SelfChecksum,
}

impl Bmap {
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| self.range_bytes(r).1).sum()
    }
    /// Byte offset and length of a range, clipped to the image size.
    pub fn range_bytes(&self, r: &Range) -> (u64, u64) {
        let start = r.first * self.block_size;
        let end = ((r.last + 1) * self.block_size).min(self.image_size);
        (start, end - start)
    }

    /// Map the data extents of a sparse file (SEEK_DATA/SEEK_HOLE) and checksum them.
    pub fn create(path: &Path) -> Result<Self, BmapError> {
        let mut f = File::open(path)?;
        let size = f.metadata()?.len();
        let mut extents: Vec<(u64, u64)> = Vec::new();
        let mut pos: i64 = 0;
        while (pos as u64) < size {
            let data = match lseek(f.as_fd(), pos, Whence::SeekData) {
                Ok(d) => d,
                Err(nix::errno::Errno::ENXIO) => break,
                Err(e) => return Err(io::Error::from(e).into()),
            };
            let hole = lseek(f.as_fd(), data, Whence::SeekHole).map_err(io::Error::from)?;
            let first = data as u64 / BLOCK;
            let last = (hole as u64).div_ceil(BLOCK) - 1;
            match extents.last_mut() {
                Some((_, l)) if *l + 1 >= first => *l = (*l).max(last),
                _ => extents.push((first, last)),
            }
            pos = hole;
        }
        let mut bmap = Bmap { image_size: size, block_size: BLOCK, ranges: Vec::with_capacity(extents.len()) };
        let mut buf = vec![0u8; 4 << 20];
        for (first, last) in extents {
            let mut r = Range { first, last, sha256: String::new() };
            let (start, len) = bmap.range_bytes(&r);
            f.seek(SeekFrom::Start(start))?;
            let mut h = Sha256::new();
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                f.read_exact(&mut buf[..n])?;
                h.update(&buf[..n]);
                left -= n as u64;
            }
            r.sha256 = hex::encode(h.finalize());
            bmap.ranges.push(r);
        }
        Ok(bmap)
    }

    /// Serialize in bmaptool's 2.0 layout, including the self-checksum.
    pub fn to_xml(&self) -> String {
        let zero = "0".repeat(64);
        let body = self.xml_with_checksum(&zero);
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        self.xml_with_checksum(&sum)
    }

    fn xml_with_checksum(&self, sum: &str) -> String {
        let mut s = String::new();
        s.push_str("<?xml version=\"1.0\" ?>\n");
        s.push_str("<!-- Block map of an edgeimg disk image: only the listed 4 KiB blocks hold\n");
        s.push_str("     data; the rest are zeros that a writer may skip. Made by edgeimg,\n");
        s.push_str("     readable by bmaptool (bmap-tools). -->\n");
        s.push_str("<bmap version=\"2.0\">\n");
        s.push_str(&format!("    <ImageSize> {} </ImageSize>\n", self.image_size));
        s.push_str(&format!("    <BlockSize> {} </BlockSize>\n", self.block_size));
        s.push_str(&format!("    <BlocksCount> {} </BlocksCount>\n", self.blocks_count()));
        s.push_str(&format!("    <MappedBlocksCount> {} </MappedBlocksCount>\n", self.mapped_blocks()));
        s.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
        s.push_str(&format!("    <BmapFileChecksum> {sum} </BmapFileChecksum>\n"));
        s.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            if r.first == r.last {
                s.push_str(&format!("        <Range chksum=\"{}\"> {} </Range>\n", r.sha256, r.first));
            } else {
                s.push_str(&format!("        <Range chksum=\"{}\"> {}-{} </Range>\n", r.sha256, r.first, r.last));
            }
        }
        s.push_str("    </BlockMap>\n</bmap>\n");
        s
    }

    /// Parse a bmap file (ours or bmaptool's, version 2.x with sha256 checksums).
    pub fn parse(xml: &str) -> Result<Self, BmapError> {
        let tag = |name: &str| -> Option<String> {
            let open = format!("<{name}>");
            let close = format!("</{name}>");
            let s = xml.find(&open)? + open.len();
            let e = xml[s..].find(&close)? + s;
            Some(xml[s..e].trim().to_string())
        };
        let version = xml
            .find("<bmap version=\"")
            .map(|i| &xml[i + 15..])
            .and_then(|r| r.split('"').next())
            .ok_or_else(|| BmapError::Parse("no <bmap version=...> element".into()))?;
        if !version.starts_with("2.") {
            return Err(BmapError::Parse(format!(
                "version {version}: only bmap 2.x (sha256) is supported; recreate it with `bmaptool create`"
            )));
        }
        let num = |name: &str| -> Result<u64, BmapError> {
            tag(name).and_then(|v| v.parse().ok()).ok_or_else(|| BmapError::Parse(format!("missing or bad <{name}>")))
        };
        let image_size = num("ImageSize")?;
        let block_size = num("BlockSize")?;
        if block_size == 0 || !block_size.is_multiple_of(512) {
            return Err(BmapError::Parse(format!("block size {block_size}")));
        }
        let ctype = tag("ChecksumType").unwrap_or_default();
        if ctype != "sha256" {
            return Err(BmapError::Parse(format!("checksum type `{ctype}`: only sha256 is supported")));
        }
        if let Some(sum) = tag("BmapFileChecksum") {
            let zeroed = xml.replacen(&sum, &"0".repeat(sum.len()), 1);
            if hex::encode(Sha256::digest(zeroed.as_bytes())) != sum {
                return Err(BmapError::SelfChecksum);
            }
        }
        let map = tag("BlockMap").ok_or_else(|| BmapError::Parse("no <BlockMap>".into()))?;
        let blocks = image_size.div_ceil(block_size);
        let mut ranges = Vec::new();
        for item in map.split("<Range").skip(1) {
            let (attrs, rest) = item.split_once('>').ok_or_else(|| BmapError::Parse("bad <Range>".into()))?;
            let body = rest.split("</Range>").next().unwrap_or("").trim();
            let sha256 = attrs
                .split("chksum=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .ok_or_else(|| BmapError::Parse(format!("range {body} has no chksum")))?
                .to_string();
            let (a, b) = body.split_once('-').unwrap_or((body, body));
            let first: u64 = a.trim().parse().map_err(|_| BmapError::Parse(format!("bad range `{body}`")))?;
            let last: u64 = b.trim().parse().map_err(|_| BmapError::Parse(format!("bad range `{body}`")))?;
            if last < first || last >= blocks || ranges.last().is_some_and(|p: &Range| p.last >= first) {
                return Err(BmapError::Parse(format!("range `{body}` is out of order or past the image end")));
            }
            ranges.push(Range { first, last, sha256 });
        }
        Ok(Bmap { image_size, block_size, ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sparse_file(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("img");
        let mut f = File::create(&p).unwrap();
        f.set_len(10 * BLOCK + 100).unwrap();
        f.seek(SeekFrom::Start(BLOCK)).unwrap();
        f.write_all(&[1u8; 2 * BLOCK as usize]).unwrap();
        f.seek(SeekFrom::Start(10 * BLOCK)).unwrap();
        f.write_all(&[2u8; 100]).unwrap();
        p
    }

    #[test]
    fn create_parse_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let p = sparse_file(d.path());
        let b = Bmap::create(&p).unwrap();
        assert_eq!(b.blocks_count(), 11);
        assert_eq!(b.ranges.iter().map(|r| (r.first, r.last)).collect::<Vec<_>>(), vec![(1, 2), (10, 10)]);
        assert_eq!(b.mapped_bytes(), 2 * BLOCK + 100);
        let back = Bmap::parse(&b.to_xml()).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn tampered_bmap_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let b = Bmap::create(&sparse_file(d.path())).unwrap();
        let xml = b.to_xml().replace("> 1-2 <", "> 1-3 <");
        assert!(matches!(Bmap::parse(&xml), Err(BmapError::SelfChecksum)));
    }

    #[test]
    fn bmaptool_agrees() {
        if crate::tools::find("bmaptool").is_none() {
            eprintln!("bmaptool not installed (apt-get install bmap-tools); independent check skipped");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = sparse_file(d.path());
        let ours = Bmap::create(&p).unwrap();
        let theirs = std::process::Command::new("bmaptool").arg("create").arg(&p).output().unwrap();
        assert!(theirs.status.success());
        let theirs = Bmap::parse(&String::from_utf8_lossy(&theirs.stdout)).unwrap();
        assert_eq!(ours.ranges, theirs.ranges);
        // And bmaptool can copy with our map, verifying our checksums as it goes.
        std::fs::write(d.path().join("img.bmap"), ours.to_xml()).unwrap();
        let st = std::process::Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(d.path().join("img.bmap"))
            .arg(&p)
            .arg(d.path().join("copy"))
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(d.path().join("copy")).unwrap());
    }
}
