//! The image being flashed: raw or zstd-compressed, with or without a block map, read as
//! one forward stream (decompressed on the fly) that can skip what need not be written.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::error::FlashError;
use crate::bmap::Bmap;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

/// Which block map to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BmapChoice {
    /// `<image minus .zst>.bmap` beside the image, if it exists.
    #[default]
    Beside,
    /// This file (it must exist).
    Path(PathBuf),
    /// None: write every byte.
    Ignore,
}

#[derive(Debug)]
pub struct Image {
    pub path: PathBuf,
    pub compression: Compression,
    /// Size of the (decompressed) image, when known before decompressing.
    pub size: Option<u64>,
    pub bmap: Option<Bmap>,
    pub bmap_path: Option<PathBuf>,
}

/// `disk.img.zst` -> `disk.img.bmap`; `disk.img` -> `disk.img.bmap`.
pub fn default_bmap_path(image: &Path) -> PathBuf {
    let s = image.as_os_str().to_string_lossy();
    let base = s.strip_suffix(".zst").unwrap_or(&s);
    PathBuf::from(format!("{base}.bmap"))
}

fn image_err(path: &Path) -> impl FnOnce(io::Error) -> FlashError + '_ {
    move |source| FlashError::Image { path: path.to_path_buf(), source }
}

impl Image {
    /// Open an image and its block map and check that they belong together. Nothing is
    /// decompressed beyond the frame header.
    pub fn open(path: &Path, choice: &BmapChoice) -> Result<Image, FlashError> {
        let mut f = File::open(path).map_err(image_err(path))?;
        let file_len = f.metadata().map_err(image_err(path))?.len();
        let mut head = [0u8; 18];
        let n = read_up_to(&mut f, &mut head).map_err(image_err(path))?;
        let head = &head[..n];
        let compression = if head.starts_with(&ZSTD_MAGIC) { Compression::Zstd } else { Compression::None };
        for (magic, what) in
            [(&[0x1F, 0x8B][..], "gzip"), (&[0xFD, b'7', b'z', b'X', b'Z'][..], "xz"), (b"BZh", "bzip2")]
        {
            if head.starts_with(magic) {
                return Err(FlashError::UnsupportedCompression { path: path.into(), what });
            }
        }
        let header_size = match compression {
            Compression::None => Some(file_len),
            Compression::Zstd => match zstd::zstd_safe::get_frame_content_size(head) {
                Ok(Some(s)) => Some(s),
                _ => None,
            },
        };
        let bmap_path = match choice {
            BmapChoice::Ignore => None,
            BmapChoice::Path(p) => Some(p.clone()),
            BmapChoice::Beside => Some(default_bmap_path(path)).filter(|p| p.exists()),
        };
        let bmap = match &bmap_path {
            None => None,
            Some(p) => {
                let xml =
                    std::fs::read_to_string(p).map_err(|e| FlashError::Bmap { path: p.clone(), source: e.into() })?;
                Some(Bmap::parse(&xml).map_err(|source| FlashError::Bmap { path: p.clone(), source })?)
            }
        };
        if let (Some(b), Some(s), Some(p)) = (&bmap, header_size, &bmap_path) {
            // (A zstd frame's declared size; pzstd-style multi-frame files declare none.)
            if b.image_size != s {
                return Err(FlashError::BmapSize {
                    path: p.clone(),
                    image: path.into(),
                    bmap_size: b.image_size,
                    image_size: s,
                });
            }
        }
        let size = bmap.as_ref().map(|b| b.image_size).or(header_size);
        Ok(Image { path: path.into(), compression, size, bmap, bmap_path })
    }

    pub fn stream(&self) -> Result<Stream, FlashError> {
        let f = File::open(&self.path).map_err(image_err(&self.path))?;
        let inner = match self.compression {
            Compression::None => Inner::Raw(f),
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, f))
                    .map_err(image_err(&self.path))?;
                // Accept images compressed with --long (windows up to 2 GiB).
                d.window_log_max(31).map_err(image_err(&self.path))?;
                Inner::Zstd(Box::new(d))
            }
        };
        Ok(Stream { inner, pos: 0, scratch: Vec::new() })
    }

    /// `len` bytes of the (decompressed) image from `offset`, fewer at its end.
    pub fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>, FlashError> {
        let mut s = self.stream()?;
        if !s.skip_to(offset)? {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; len];
        let n = s.read_full(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

enum Inner {
    Raw(File),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<File>>>),
}

/// The image as a forward-only stream of its decompressed bytes.
pub struct Stream {
    inner: Inner,
    pos: u64,
    scratch: Vec<u8>,
}

impl Stream {
    pub fn pos(&self) -> u64 {
        self.pos
    }

    fn err(&self, source: io::Error) -> FlashError {
        FlashError::Decompress { offset: self.pos, source }
    }

    /// Fill `buf` unless the image ends first; returns the bytes read.
    pub fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, FlashError> {
        let r = match &mut self.inner {
            Inner::Raw(f) => read_up_to(f, buf),
            Inner::Zstd(d) => read_up_to(d, buf),
        };
        let n = r.map_err(|e| self.err(e))?;
        self.pos += n as u64;
        Ok(n)
    }

    /// Move forward to `offset`: a seek for a raw image, decompress-and-discard for zstd.
    /// Returns false if the image ends before `offset`.
    pub fn skip_to(&mut self, offset: u64) -> Result<bool, FlashError> {
        if offset <= self.pos {
            return Ok(offset == self.pos);
        }
        if let Inner::Raw(f) = &mut self.inner {
            let pos = self.pos;
            let len = f.metadata().map_err(|source| FlashError::Decompress { offset: pos, source })?.len();
            let to = offset.min(len);
            f.seek(SeekFrom::Start(to)).map_err(|e| FlashError::Decompress { offset: to, source: e })?;
            self.pos = to;
            return Ok(to == offset);
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0u8; 1 << 20];
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut ok = true;
        while self.pos < offset {
            let n = (offset - self.pos).min(scratch.len() as u64) as usize;
            let got = self.read_full(&mut scratch[..n]);
            match got {
                Ok(g) if g < n => {
                    ok = false;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.scratch = scratch;
                    return Err(e);
                }
            }
        }
        self.scratch = scratch;
        Ok(ok)
    }

    /// Read to the end (which checks a zstd frame's checksum) and return the image size.
    pub fn finish(&mut self) -> Result<u64, FlashError> {
        if let Inner::Raw(f) = &self.inner {
            return f.metadata().map(|m| m.len()).map_err(|e| self.err(e));
        }
        while self.skip_to(self.pos + (1 << 30))? {}
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmap_beside_the_image() {
        assert_eq!(default_bmap_path(Path::new("/o/disk.img.zst")), PathBuf::from("/o/disk.img.bmap"));
        assert_eq!(default_bmap_path(Path::new("disk.img")), PathBuf::from("disk.img.bmap"));
    }

    #[test]
    fn zstd_stream_skips_reads_and_finishes() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let p = d.path().join("x.zst");
        std::fs::write(&p, zstd::bulk::compress(&data, 1).unwrap()).unwrap();
        let img = Image::open(&p, &BmapChoice::Beside).unwrap();
        assert_eq!(img.compression, Compression::Zstd);
        assert_eq!(img.size, Some(data.len() as u64));
        let mut s = img.stream().unwrap();
        assert!(s.skip_to(2_000_000).unwrap());
        let mut b = [0u8; 10];
        assert_eq!(s.read_full(&mut b).unwrap(), 10);
        assert_eq!(&b, &data[2_000_000..2_000_010]);
        assert_eq!(s.finish().unwrap(), data.len() as u64);
    }

    #[test]
    fn gzip_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.img.gz");
        std::fs::write(&p, [0x1F, 0x8B, 8, 0, 0, 0]).unwrap();
        let e = Image::open(&p, &BmapChoice::Beside).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
    }
}
