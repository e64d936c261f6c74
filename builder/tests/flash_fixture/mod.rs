//! A small edgeimg-like disk image for the `edgeimg flash` tests, made in a temp dir without
//! building an OS: a sparse GPT disk with a FAT `esp` partition and some data blocks, its
//! block map, and a zstd copy made like `edgeimg build` makes it.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use edgeimg::bmap::Bmap;
use edgeimg::gpt::{types, Guid, Partition, Table};

pub const MIB: u64 = 1 << 20;
pub const SIZE: u64 = 64 * MIB;
/// The ESP: 1 MiB..17 MiB.
pub const ESP: (u64, u64) = (MIB, 16 * MIB);
/// Where the incompressible data blocks are.
pub const DATA: [(u64, u64); 3] = [(20 * MIB, 3 * MIB), (40 * MIB, 100 << 10), (50 * MIB, 2 * MIB)];

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    pub zst: PathBuf,
    pub bmap: PathBuf,
}

impl Fixture {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Deterministic bytes that do not compress.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A FAT filesystem image with `loader.conf` (and, made with mtools as `edgeimg build` does,
/// `EFI/BOOT/BOOTX64.EFI`) on it. (fatfs 0.3's `create_dir` writes `.`/`..` entries that
/// fsck.vfat rejects, so the fallback makes no directories.)
pub fn fat_image(len: u64) -> Vec<u8> {
    use edgeimg::tools::find;
    if let (Some(mkfs), Some(mmd), Some(mcopy)) = (find("mkfs.vfat"), find("mmd"), find("mcopy")) {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("esp.img");
        File::create(&img).unwrap().set_len(len).unwrap();
        fs::write(d.path().join("loader.conf"), b"timeout 0\n").unwrap();
        fs::write(d.path().join("BOOTX64.EFI"), noise(99, 20000)).unwrap();
        let i = img.to_str().unwrap();
        let run = |c: &Path, args: &[&str]| {
            let o = std::process::Command::new(c).args(args).env("MTOOLS_SKIP_CHECK", "1").output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        run(&mkfs, &["-n", "ESP", i]);
        run(&mmd, &["-i", i, "::/EFI", "::/EFI/BOOT"]);
        run(&mcopy, &["-i", i, d.path().join("BOOTX64.EFI").to_str().unwrap(), "::/EFI/BOOT/BOOTX64.EFI"]);
        run(&mcopy, &["-i", i, d.path().join("loader.conf").to_str().unwrap(), "::/loader.conf"]);
        return fs::read(&img).unwrap();
    }
    let mut esp = vec![0u8; len as usize];
    fatfs::format_volume(Cursor::new(&mut esp), fatfs::FormatVolumeOptions::new().volume_label(*b"ESP        "))
        .unwrap();
    {
        let fs = fatfs::FileSystem::new(Cursor::new(&mut esp), fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().create_file("loader.conf").unwrap();
        f.write_all(b"timeout 0\n").unwrap();
        drop(f);
        fs.unmount().unwrap();
    }
    esp
}

/// Write `data` at `offset`, leaving all-zero 4 KiB blocks as holes.
fn write_sparse(f: &File, offset: u64, data: &[u8]) {
    for (i, c) in data.chunks(4096).enumerate() {
        if c.iter().any(|&b| b != 0) {
            f.write_all_at(c, offset + (i * 4096) as u64).unwrap();
        }
    }
}

pub fn table(labels: [&str; 2]) -> Table {
    Table {
        disk_guid: Guid::derive("flash-test", "disk"),
        size_bytes: SIZE,
        partitions: vec![
            Partition {
                label: labels[0].into(),
                type_guid: types::ESP.parse().unwrap(),
                guid: Guid::derive("flash-test", "esp"),
                first_lba: ESP.0 / 512,
                last_lba: (ESP.0 + ESP.1) / 512 - 1,
                attributes: 0,
            },
            Partition {
                label: labels[1].into(),
                type_guid: types::LINUX_DATA.parse().unwrap(),
                guid: Guid::derive("flash-test", "data"),
                first_lba: 18 * MIB / 512,
                last_lba: 62 * MIB / 512 - 1,
                attributes: 0,
            },
        ],
    }
}

/// zstd as `edgeimg build` writes it: size in the frame header, content checksum.
pub fn compress(src: &Path, dst: &Path, pledge_size: bool) {
    let mut data = Vec::new();
    File::open(src).unwrap().read_to_end(&mut data).unwrap();
    let mut enc = zstd::stream::write::Encoder::new(File::create(dst).unwrap(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    if pledge_size {
        enc.set_pledged_src_size(Some(data.len() as u64)).unwrap();
    }
    enc.write_all(&data).unwrap();
    enc.finish().unwrap().sync_all().unwrap();
}

/// The image, with `labels` for its two partitions (normally `esp` and `data`).
pub fn fixture_with(labels: [&str; 2]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut f = File::options().create(true).truncate(true).read(true).write(true).open(&img).unwrap();
    f.set_len(SIZE).unwrap();
    table(labels).write_to(&mut f).unwrap();
    write_sparse(&f, ESP.0, &fat_image(ESP.1));
    for (i, (off, len)) in DATA.iter().enumerate() {
        f.write_all_at(&noise(i as u64 + 7, *len as usize), *off).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let bmap = dir.path().join("disk.img.bmap");
    fs::write(&bmap, Bmap::create(&img).unwrap().to_xml()).unwrap();
    let zst = dir.path().join("disk.img.zst");
    compress(&img, &zst, true);
    Fixture { dir, img, zst, bmap }
}

pub fn fixture() -> Fixture {
    fixture_with(["esp", "data"])
}

/// Flip one bit of a file at `offset`.
pub fn flip(path: &Path, offset: u64) {
    let f = File::options().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, offset).unwrap();
}

pub fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    File::open(path).unwrap().read_exact_at(&mut b, offset).unwrap();
    b
}

/// Read a file from the FAT filesystem at `offset` of `path`, through fatfs.
pub fn fat_read(path: &Path, offset: u64, len: u64, name: &str) -> std::io::Result<Vec<u8>> {
    let part = read_range(path, offset, len);
    let fs = fatfs::FileSystem::new(Cursor::new(part), fatfs::FsOptions::new())?;
    let mut out = Vec::new();
    fs.root_dir().open_file(name)?.read_to_end(&mut out)?;
    Ok(out)
}

pub const TOKEN: &str = "K10f00dfeedc0ffee::server:verysecretjointoken";

pub fn provision_file(dir: &Path) -> PathBuf {
    let p = dir.join("edgeimg-provision.toml");
    fs::write(
        &p,
        format!("hostname = \"shop-042\"\n\n[k3s]\ntoken = \"{TOKEN}\"\nserver = \"https://10.0.0.1:6443\"\n"),
    )
    .unwrap();
    p
}
