//! `edgeimg flash` writing, on files: every input kind, a corrupt image, a short target, a
//! failing write, an injected read-back mismatch, provisioning, and a device stand-in.

mod flash_fixture;

use edgeimg::net::chain;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use edgeimg::flash::device::DeviceFacts;
use edgeimg::flash::events::{FlashEvent, Phase, Recorder};
use edgeimg::flash::target::{FileTarget, Target};
use edgeimg::flash::{BmapChoice, FlashError, Plan, Request, Summary, TargetInfo, TargetKind, World};
use edgeimg::gpt::Table;
use flash_fixture::*;

fn plan_with(image: &Path, target: &Path, bmap: BmapChoice, provision: Option<PathBuf>) -> Plan {
    let t = TargetInfo::inspect(target, &World::default()).unwrap();
    let req = Request { image: image.into(), bmap, target: target.into(), force: false, provision };
    Plan::prepare(&req, t).unwrap()
}

fn flash(image: &Path, target: &Path, bmap: BmapChoice) -> (Summary, Vec<FlashEvent>) {
    let plan = plan_with(image, target, bmap, None);
    let rec = Recorder::default();
    let mut t = plan.open_target().unwrap();
    let s = plan.execute(&mut t, &rec).unwrap();
    (s, rec.0.into_inner().unwrap())
}

/// Flash through a test target; the error must say the target was partially written.
fn flash_failing(image: &Path, target: &mut dyn Target) -> (FlashError, u64, String) {
    let plan = plan_with(image, target.name(), BmapChoice::Beside, None);
    let e = plan.execute(target, &Recorder::default()).unwrap_err();
    let stopped = e.stopped_at().unwrap_or_else(|| panic!("not reported as partial: {e}"));
    let text = chain(&e);
    (e, stopped, text)
}

fn assert_head_wiped(path: &Path) {
    assert!(read_range(path, 0, MIB).iter().all(|&b| b == 0), "the first MiB must be zeros after a failure");
    assert!(Table::read_from(&mut fs::File::open(path).unwrap()).is_err(), "no partition table after a failure");
}

#[test]
fn zstd_image_with_bmap_gives_an_identical_sparse_copy() {
    let fx = fixture();
    let out = fx.path("card.img");
    let (s, events) = flash(&fx.zst, &out, BmapChoice::Beside);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fx.img).unwrap());
    assert_eq!(s.image_size, SIZE);
    assert!(s.bytes_written < SIZE / 4, "only mapped ranges are written: {}", s.bytes_written);
    use std::os::unix::fs::MetadataExt;
    assert!(fs::metadata(&out).unwrap().blocks() * 512 < 24 * MIB, "unmapped ranges stay holes");
    assert!(matches!(events.first(), Some(FlashEvent::Start { bmap: Some(_), .. })), "{events:?}");
    for p in [Phase::Write, Phase::Verify, Phase::Finalize] {
        assert!(events.iter().any(|e| matches!(e, FlashEvent::PhaseDone { phase, .. } if *phase == p)), "{p:?}");
    }
    assert!(matches!(events.last(), Some(FlashEvent::Done { bytes_verified, .. }) if *bytes_verified > 0));
}

#[test]
fn raw_image_with_and_without_bmap() {
    let fx = fixture();
    let out = fx.path("card.img");
    let (s, _) = flash(&fx.img, &out, BmapChoice::Beside);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fx.img).unwrap());
    assert!(s.bytes_written < SIZE / 4);

    let plan = plan_with(&fx.img, &out, BmapChoice::Ignore, None);
    assert!(plan.warnings.iter().any(|w| w.contains("slower")), "{:?}", plan.warnings);
    fs::write(&out, b"old").unwrap();
    let (s, _) = flash(&fx.img, &out, BmapChoice::Ignore);
    assert_eq!(s.bytes_written, SIZE, "without a block map every byte is written");
    assert_eq!(s.bytes_verified, SIZE);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fx.img).unwrap());
}

#[test]
fn zstd_without_size_or_bmap_is_streamed_to_the_end() {
    let fx = fixture();
    let zst = fx.path("nosize.img.zst");
    compress(&fx.img, &zst, false);
    let plan = plan_with(&zst, &fx.path("x"), BmapChoice::Beside, None);
    assert_eq!(plan.image.size, None);
    let out = fx.path("card.img");
    let (s, _) = flash(&zst, &out, BmapChoice::Beside);
    assert_eq!(s.image_size, SIZE);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fx.img).unwrap());
}

#[test]
fn a_bmap_made_by_bmaptool_is_used() {
    if edgeimg::tools::find("bmaptool").is_none() {
        eprintln!("bmaptool not installed (apt-get install bmap-tools); skipped");
        return;
    }
    let fx = fixture();
    let theirs = fx.path("theirs.bmap");
    let st = std::process::Command::new("bmaptool").arg("create").arg(&fx.img).arg("-o").arg(&theirs).status();
    assert!(st.unwrap().success());
    let out = fx.path("card.img");
    let (s, events) = flash(&fx.zst, &out, BmapChoice::Path(theirs.clone()));
    assert!(s.bytes_written < SIZE / 4);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fx.img).unwrap());
    let used = theirs.display().to_string();
    assert!(events.iter().any(|e| matches!(e, FlashEvent::Start { bmap: Some(b), .. } if *b == used)));
}

#[test]
fn a_bmap_of_another_image_is_refused_up_front() {
    let fx = fixture();
    let other = fx.path("other.img");
    fs::File::create(&other).unwrap().set_len(SIZE + MIB).unwrap();
    let req =
        Request { image: other, bmap: BmapChoice::Path(fx.bmap.clone()), target: fx.path("t"), ..Default::default() };
    let t = TargetInfo::inspect(&fx.path("t"), &World::default()).unwrap();
    let e = Plan::prepare(&req, t).unwrap_err();
    assert!(matches!(e, FlashError::BmapSize { .. }), "{e}");
    assert!(!fx.path("t").exists());
}

#[test]
fn a_corrupt_compressed_image_leaves_a_card_that_does_not_boot() {
    let fx = fixture();
    let len = fs::metadata(&fx.zst).unwrap().len();
    flip(&fx.zst, len / 2);
    let out = fx.path("card.img");
    fs::write(&out, b"").unwrap();
    let mut t = FileTarget::open_file(&out).unwrap();
    let (e, _, chain) = flash_failing(&fx.zst, &mut t);
    let FlashError::Partial { source, .. } = &e else { panic!("{e}") };
    assert!(
        matches!(**source, FlashError::Decompress { .. } | FlashError::Corrupt { .. }),
        "a corrupt image is named as such: {chain}"
    );
    assert!(chain.contains("partially written: stopped at byte offset"), "{chain}");
    assert!(chain.contains("not bootable"), "{chain}");
    assert_head_wiped(&out);
}

#[test]
fn a_corrupt_mapped_block_is_caught_before_it_is_written() {
    let fx = fixture();
    flip(&fx.img, DATA[0].0 + 12345);
    let out = fx.path("card.img");
    let mut t = FileTarget::open_file(&out).unwrap();
    let (e, stopped, chain) = flash_failing(&fx.img, &mut t);
    let FlashError::Partial { source, .. } = &e else { panic!("{e}") };
    assert!(matches!(**source, FlashError::Corrupt { offset, .. } if offset == DATA[0].0), "{chain}");
    assert!(chain.contains("the image or the block map is corrupt"), "{chain}");
    assert!(stopped <= DATA[0].0, "stopped at {stopped}");
    assert!(read_range(&out, DATA[0].0, DATA[0].1).iter().all(|&b| b == 0), "the bad range was not written");
    assert_head_wiped(&out);
}

/// A test stand-in for a card: a file, with a capacity, writes that fail past an offset,
/// and reads that come back with one bit flipped at an offset.
struct Card {
    file: FileTarget,
    capacity: Option<u64>,
    fail_writes_from: u64,
    flip_read_at: Option<u64>,
}

impl Card {
    fn new(path: &Path) -> Self {
        Card {
            file: FileTarget::open_file(path).unwrap(),
            capacity: None,
            fail_writes_from: u64::MAX,
            flip_read_at: None,
        }
    }
}

impl Target for Card {
    fn name(&self) -> &Path {
        self.file.name()
    }
    fn capacity(&self) -> Option<u64> {
        self.capacity
    }
    fn prepare(&mut self, size: Option<u64>) -> io::Result<()> {
        self.file.prepare(size)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset + data.len() as u64 > self.fail_writes_from {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.file.write_at(offset, data)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_at(offset, buf)?;
        if let Some(bad) = self.flip_read_at.filter(|&b| b >= offset && b < offset + buf.len() as u64) {
            buf[(bad - offset) as usize] ^= 1;
        }
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync()
    }
    fn drop_cache(&mut self) -> io::Result<()> {
        self.file.drop_cache()
    }
}

#[test]
fn a_target_too_small_for_the_image_stops_where_it_no_longer_fits() {
    let fx = fixture();
    let out = fx.path("card.img");
    let mut card = Card::new(&out);
    card.capacity = Some(32 * MIB);
    let (e, stopped, chain) = flash_failing(&fx.zst, &mut card);
    let FlashError::Partial { source, .. } = &e else { panic!("{e}") };
    assert!(matches!(**source, FlashError::NoRoom { capacity } if capacity == 32 * MIB), "{chain}");
    assert!(chain.contains("does not fit"), "{chain}");
    assert!(stopped <= 32 * MIB && stopped >= DATA[0].0 + DATA[0].1, "stopped at {stopped}");
    assert!(chain.contains(&format!("stopped at byte offset {stopped}")), "{chain}");
    assert_head_wiped(&out);
}

#[test]
fn a_write_error_is_reported_with_the_offset_where_it_stopped() {
    let fx = fixture();
    let out = fx.path("card.img");
    let mut card = Card::new(&out);
    card.fail_writes_from = DATA[1].0;
    let (e, stopped, chain) = flash_failing(&fx.zst, &mut card);
    let FlashError::Partial { source, .. } = &e else { panic!("{e}") };
    assert!(matches!(**source, FlashError::Write { offset, .. } if offset == DATA[1].0), "{chain}");
    assert_eq!(stopped, DATA[1].0);
    assert!(chain.contains(&format!("partially written: stopped at byte offset {}", DATA[1].0)), "{chain}");
    assert!(chain.contains("Input/output error"), "{chain}");
    assert_head_wiped(&out);
}

#[test]
fn an_injected_read_back_mismatch_fails_the_flash() {
    let fx = fixture();
    let out = fx.path("card.img");
    let mut card = Card::new(&out);
    card.flip_read_at = Some(DATA[2].0 + 77);
    let (e, _, chain) = flash_failing(&fx.zst, &mut card);
    let FlashError::Partial { source, .. } = &e else { panic!("{e}") };
    assert!(matches!(**source, FlashError::Mismatch { offset, .. } if offset == DATA[2].0), "{chain}");
    assert!(chain.contains("read-back mismatch"), "{chain}");
    // The data itself went out; only the partition table is missing.
    assert_eq!(read_range(&out, DATA[2].0, DATA[2].1), read_range(&fx.img, DATA[2].0, DATA[2].1));
    assert_head_wiped(&out);

    // Without a block map the whole image is compared.
    let mut card = Card::new(&out);
    card.flip_read_at = Some(DATA[0].0 + 1);
    let plan = plan_with(&fx.img, &out, BmapChoice::Ignore, None);
    let e = plan.execute(&mut card, &Recorder::default()).unwrap_err();
    assert!(matches!(&e, FlashError::Partial { source, .. } if matches!(**source, FlashError::Mismatch { .. })), "{e}");
}

#[test]
fn a_bad_partition_table_read_back_is_caught_last() {
    let fx = fixture();
    let out = fx.path("card.img");
    let mut card = Card::new(&out);
    card.flip_read_at = Some(600);
    let (e, stopped, _) = flash_failing(&fx.zst, &mut card);
    assert!(matches!(&e, FlashError::Partial { source, .. } if matches!(**source, FlashError::HeadMismatch)), "{e}");
    assert_eq!(stopped, 0);
    assert_head_wiped(&out);
}

#[test]
fn provisioning_lands_on_the_boot_partition_and_stays_secret() {
    let fx = fixture();
    let prov = provision_file(fx.dir.path());
    let out = fx.path("card.img");
    let plan = plan_with(&fx.zst, &out, BmapChoice::Beside, Some(prov.clone()));
    assert_eq!(plan.esp, Some(ESP));
    assert!(!format!("{plan:?}").contains(TOKEN), "Debug of a plan shows no secret");
    assert!(!plan.describe().contains(TOKEN));
    let rec = Recorder::default();
    let mut t = plan.open_target().unwrap();
    let s = plan.execute(&mut t, &rec).unwrap();
    assert!(s.provisioned);
    let events = format!("{:?}", rec.0.lock().unwrap());
    assert!(!events.contains(TOKEN), "events show no secret");
    assert_eq!(fat_read(&out, ESP.0, ESP.1, "edgeimg-provision.toml").unwrap(), fs::read(&prov).unwrap());
    assert_eq!(fat_read(&out, ESP.0, ESP.1, "loader.conf").unwrap(), b"timeout 0\n", "the ESP is intact");
    // Everything outside the ESP is the image.
    assert_eq!(read_range(&out, 0, ESP.0), read_range(&fx.img, 0, ESP.0));
    let after = ESP.0 + ESP.1;
    assert_eq!(read_range(&out, after, SIZE - after), read_range(&fx.img, after, SIZE - after));

    // Independent readers agree: mtools reads the file, fsck.vfat finds nothing to fix.
    if edgeimg::tools::find("mtype").is_some() {
        let o = std::process::Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{}", out.display(), ESP.0))
            .arg("::/edgeimg-provision.toml")
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, fs::read(&prov).unwrap());
    }
    if edgeimg::tools::find("fsck.vfat").is_some() {
        let esp = fx.path("esp.img");
        fs::write(&esp, read_range(&out, ESP.0, ESP.1)).unwrap();
        let o = std::process::Command::new(edgeimg::tools::find("fsck.vfat").unwrap()).arg("-n").arg(&esp).output();
        let o = o.unwrap();
        assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn a_bad_provisioning_file_is_refused_before_the_target_is_touched() {
    let fx = fixture();
    let out = fx.path("card.img");
    fs::write(&out, b"precious").unwrap();
    let bad = fx.path("bad.toml");
    fs::write(&bad, format!("hostname = \"not a hostname\"\n[k3s]\ntoken = \"{TOKEN}\"\n")).unwrap();
    let t = TargetInfo::inspect(&out, &World::default()).unwrap();
    let req = Request { image: fx.zst.clone(), target: out.clone(), provision: Some(bad), ..Default::default() };
    let e = Plan::prepare(&req, t.clone()).unwrap_err();
    assert!(matches!(e, FlashError::Provision { .. }), "{e}");
    assert!(e.to_string().contains("hostname"), "{e}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
    assert_eq!(fs::read(&out).unwrap(), b"precious");

    // An image without an `esp` partition cannot take one.
    let no_esp = fixture_with(["boot", "data"]);
    let req = Request { image: no_esp.zst.clone(), provision: Some(provision_file(fx.dir.path())), ..req };
    let e = Plan::prepare(&req, t).unwrap_err();
    assert!(matches!(e, FlashError::NoEsp { .. }), "{e}");
    assert_eq!(fs::read(&out).unwrap(), b"precious");
}

#[test]
fn a_device_stand_in_keeps_unmapped_blocks_and_loses_old_tables() {
    let fx = fixture();
    let dev = fx.path("sdz");
    let cap = 96 * MIB;
    fs::write(&dev, vec![0xA5u8; cap as usize]).unwrap();
    let facts = DeviceFacts {
        name: "sdz".into(),
        devnum: "8:250".into(),
        size: cap,
        removable_flag: true,
        read_only: false,
        partition_of: None,
        model: Some("Stand-in".into()),
        vendor: None,
        bus: Some("usb".into()),
        mmc_type: None,
        partitions: vec![],
        holders: vec![],
        mounts: vec![],
        swaps: vec![],
        system: vec![],
    };
    let target = TargetInfo { given: dev.clone(), path: dev.clone(), kind: TargetKind::Block(Box::new(facts)) };
    let plan =
        Plan::prepare(&Request { image: fx.zst.clone(), target: dev.clone(), ..Default::default() }, target).unwrap();
    assert!(plan.describe().contains("no partition table (unknown data)"), "{}", plan.describe());
    // Opened as a device: exclusive, with O_DIRECT for the aligned writes.
    let mut t = plan.open_target().unwrap();
    plan.execute(&mut t, &Recorder::default()).unwrap();
    let bmap = edgeimg::bmap::Bmap::parse(&fs::read_to_string(&fx.bmap).unwrap()).unwrap();
    for r in &bmap.ranges {
        let (s, l) = bmap.range_bytes(r);
        assert_eq!(read_range(&dev, s, l), read_range(&fx.img, s, l), "range {}-{}", r.first, r.last);
    }
    assert_eq!(read_range(&dev, 0, MIB), read_range(&fx.img, 0, MIB), "the first MiB is written in full");
    assert!(read_range(&dev, 30 * MIB, 4096).iter().all(|&b| b == 0xA5), "unmapped blocks are skipped");
    assert!(read_range(&dev, cap - MIB, MIB).iter().all(|&b| b == 0), "an old backup GPT at the end is wiped");
    let table = Table::read_from(&mut fs::File::open(&dev).unwrap()).unwrap();
    assert_eq!(table.partitions[0].label, "esp");
}
