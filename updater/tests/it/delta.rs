//! Delta updates on a device: the inactive slot is built from the running slot plus a
//! delta (or the block index), and every way that can go wrong ends with the right
//! bytes in slot B (by falling back to the full download) and slot A untouched.

use crate::common;

use common::device::Device;
use common::*;
use edgeimg_proto::payload::ArtifactKind;
use edgeimg_proto::verity::{hash_device, VerityParams};
use edgeimg_proto::Slot;
use edgeimg_release::Repo;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;

const BOARD: &str = "qemu-x86_64";
/// 24 MiB roots: big enough that applying syncs (and records) progress along the way.
const ROOT: usize = 24 << 20;
const SLOT: u64 = 32 << 20;

/// Pseudo-random bytes, `seed` picking the stream.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(format!("{seed}:{i}").as_bytes()));
        i += 1;
    }
    out.truncate(len);
    out
}

struct Pair {
    _d: tempfile::TempDir,
    dir: std::path::PathBuf,
    keys: edgeimg_release::KeyDir,
    repo: Repo,
    server: server::Server,
    v1: Vec<Vec<u8>>,
    v2: Vec<Vec<u8>>,
    /// 1.0.0's dm-verity root hash (on its kernel command line).
    rh1: String,
}

/// The root hash of a build nobody published.
fn roothash(v: &str) -> String {
    hex::encode(Sha256::digest(format!("roothash {v}").as_bytes()))
}

/// 1.0.0 and 2.0.0 published (2.0.0 with a delta from 1.0.0), 2.0.0 at 100%. 2.0.0
/// changes 40 scattered blocks of the root, moves 64 KiB, and one hash-tree block; the
/// boot files are the same.
async fn pair() -> Pair {
    pair_with(false).await
}

/// A Secure Boot build's signed UKI per slot: the same kernel and initrd, a command line
/// naming the slot and release, a signature at the end.
fn uki(slot: char, version: &str) -> Vec<u8> {
    let mut u = noise("kernel+initrd", 3 << 20);
    let cmdline = format!("roothash-of-{version} slot={slot}");
    u[2000..2000 + cmdline.len()].copy_from_slice(cmdline.as_bytes());
    u.extend_from_slice(&noise(&format!("signature {slot} {version}"), 2000));
    u
}

async fn pair_with(secure_boot: bool) -> Pair {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let keys = keyset(&dir.join("keys")).await;
    let repo = Repo::new(dir.join("repo"));
    let root1 = noise("root", ROOT);
    let mut root2 = root1.clone();
    for k in 0..40 {
        let at = (k * 157 + 3) * 4096 % ROOT;
        root2[at..at + 100].copy_from_slice(&noise(&format!("change {k}"), 100));
    }
    let moved = root1[1 << 20..(1 << 20) + 65536].to_vec();
    root2[20 << 20..(20 << 20) + 65536].copy_from_slice(&moved);
    // Real dm-verity hash devices of the two roots (what veritysetup would write).
    let params = VerityParams {
        salt: "ab".repeat(32),
        uuid: "01234567-89ab-cdef-0123-456789abcdef".into(),
        data_blocks: (ROOT / 4096) as u64,
    };
    let tree = |root: &[u8]| {
        let mut blocks = root.chunks(4096);
        let (dev, top) = hash_device(&params, |b| {
            b.copy_from_slice(blocks.next().unwrap());
            Ok(())
        })
        .unwrap();
        (dev, hex::encode(top))
    };
    let ((verity1, rh1), (verity2, rh2)) = (tree(&root1), tree(&root2));
    let linux = noise("linux", 300_000);
    let initrd = noise("initrd", 500_000);
    let files = |v: &str, root: &[u8], verity: &[u8]| {
        let mut f = vec![
            ("root.img", ArtifactKind::RootImage, root.to_vec()),
            ("root.verity", ArtifactKind::VerityTree, verity.to_vec()),
        ];
        if secure_boot {
            f.push(("uki-a.efi", ArtifactKind::BootFile, uki('a', v)));
            f.push(("uki-b.efi", ArtifactKind::BootFile, uki('b', v)));
        } else {
            f.push(("linux", ArtifactKind::BootFile, linux.clone()));
            f.push(("initrd", ArtifactKind::BootFile, initrd.clone()));
        }
        f
    };
    for (v, root, verity, rh) in [("1.0.0", &root1, &verity1, &rh1), ("2.0.0", &root2, &verity2, &rh2)] {
        let b = fake_build_files(&dir, BOARD, v, 1, rh, secure_boot, &files(v, root, verity));
        let pj = b.join("payload/payload.json");
        let mut payload: serde_json::Value = serde_json::from_slice(&std::fs::read(&pj).unwrap()).unwrap();
        payload["verity"] = serde_json::to_value(&params).unwrap();
        std::fs::write(&pj, serde_json::to_vec(&payload).unwrap()).unwrap();
        publish_build(&repo, &keys, &b, 1).await;
    }
    set_channel(&repo, &keys, BOARD, "2.0.0", 100, false).await;
    let server = server::start(repo.dir.clone());
    Pair { _d: d, dir, keys, repo, server, v1: vec![root1, verity1, linux, initrd], v2: vec![root2, verity2], rh1 }
}

impl Pair {
    /// A device running 1.0.0 in slot A for real: its root and hash tree in the slot, its
    /// boot files on the ESP, its root hash on the kernel command line.
    fn device(&self, name: &str) -> Device {
        let base = self.dir.join(name);
        std::fs::create_dir_all(&base).unwrap();
        let dev =
            Device::new(&base, &self.server.url(), &self.keys.dir.join("root.json"), BOARD, "1.0.0", &[&["true"]]);
        for (file, content) in [("slots/root-a", &self.v1[0]), ("slots/verity-a", &self.v1[1])] {
            let mut c = content.clone();
            c.resize(SLOT as usize, 0xA5);
            std::fs::write(dev.root.join(file), c).unwrap();
        }
        for file in ["slots/root-b", "slots/verity-b"] {
            std::fs::File::options().write(true).open(dev.root.join(file)).unwrap().set_len(SLOT).unwrap();
        }
        std::fs::create_dir_all(dev.root.join("efi/edgeimg/slot-a")).unwrap();
        std::fs::write(dev.root.join("efi/edgeimg/slot-a/linux"), &self.v1[2]).unwrap();
        std::fs::write(dev.root.join("efi/edgeimg/slot-a/initrd"), &self.v1[3]).unwrap();
        std::fs::write(dev.root.join("efi/edgeimg/slot-a/uki.efi"), uki('a', "1.0.0")).unwrap();
        dev.set_cmdline(&self.rh1);
        dev
    }

    fn sent(&self) -> u64 {
        self.server.faults.sent.load(Ordering::SeqCst)
    }

    /// The file of a published target in the repository.
    fn target(&self, name: &str) -> std::path::PathBuf {
        edgeimg_release::publish::target_file(&self.repo, name).unwrap()
    }
}

trait Cmdline {
    fn set_cmdline(&self, roothash: &str);
}

impl Cmdline for Device {
    fn set_cmdline(&self, roothash: &str) {
        std::fs::write(self.root.join("proc/cmdline"), format!("ro roothash={roothash} edgeimg.slot=a\n")).unwrap();
    }
}

fn slot_a(dev: &Device) -> String {
    hex::encode(Sha256::digest(std::fs::read(dev.root.join("slots/root-a")).unwrap()))
}

/// Slot B holds 2.0.0 exactly and is armed; slot A is as it was.
fn assert_installed(p: &Pair, dev: &Device, a_before: &str, out: &str) {
    assert_eq!(dev.sha("slots/root-b", ROOT as u64), hex::encode(Sha256::digest(&p.v2[0])), "{out}");
    assert_eq!(dev.sha("slots/verity-b", p.v2[1].len() as u64), hex::encode(Sha256::digest(&p.v2[1])), "{out}");
    assert_eq!(slot_a(dev), a_before, "slot A was written:\n{out}");
    assert_eq!(dev.state()["state"]["state"], "staged", "{out}");
    assert_eq!(dev.power_on(BOARD), Slot::B);
}

fn run(dev: &Device, env: &[(&str, &str)]) -> (bool, String) {
    let o = dev.run(&["run", "--once"], env);
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_on_the_source_release_downloads_only_the_delta() {
    let p = pair().await;
    let dev = p.device("dev");
    let a = slot_a(&dev);
    let before = p.sent();
    let (ok, out) = run(&dev, &[]);
    assert!(ok, "{out}");
    let sent = p.sent() - before;
    assert!(out.contains("root.img: building it in slot B from slot A (1.0.0) and a"), "{out}");
    assert!(out.contains("linux: the same file as slot A's, copied"), "{out}");
    assert!(out.contains("root.verity: computed from the rebuilt root image"), "{out}");
    assert_installed(&p, &dev, &a, &out);
    // 40 changed blocks of 4 KiB (random, so incompressible) + metadata and the manifest.
    let full = (ROOT + p.v2[1].len() + 800_000) as u64;
    assert!(sent < 300_000, "sent {sent} bytes for a {full}-byte update:\n{out}");
    println!("delta update: {sent} bytes sent instead of {full} ({:.2}%)", sent as f64 * 100.0 / full as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_on_another_version_uses_the_block_index() {
    let p = pair().await;
    let dev = p.device("dev");
    // It runs a build nobody made a delta from (its own root hash), mostly the same blocks.
    let mut other = p.v1[0].clone();
    other[8192..8192 + 4096 * 10].fill(0x33);
    let mut slot = other.clone();
    slot.resize(SLOT as usize, 0xA5);
    std::fs::write(dev.root.join("slots/root-a"), slot).unwrap();
    dev.set_cmdline(&roothash("0.9.0"));
    let a = slot_a(&dev);
    let before = p.sent();
    let (ok, out) = run(&dev, &[]);
    assert!(ok, "{out}");
    let sent = p.sent() - before;
    assert!(out.contains("root.img: building it in slot B from slot A's blocks and"), "{out}");
    assert_installed(&p, &dev, &a, &out);
    let index = (ROOT / 4096 * 16) as u64;
    assert!(sent < index + 1_000_000, "sent {sent} bytes (index {index}):\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_delta_is_refused_and_the_full_image_downloaded() {
    let p = pair().await;
    let f = p.target("edge~qemu-x86_64~2.0.0~root.img.from-1.0.0.delta");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x40;
    std::fs::write(&f, bytes).unwrap();
    let dev = p.device("dev");
    let a = slot_a(&dev);
    let (ok, out) = run(&dev, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("root.img.from-1.0.0.delta not usable") && out.contains("does not match the signed"), "{out}");
    assert!(out.contains("downloading it in full"), "{out}");
    assert_installed(&p, &dev, &a, &out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_not_signed_by_the_targets_key_is_refused() {
    // Someone who controls the server but not the offline targets key puts in a delta of
    // their own (made from 1.0.0 to bytes of their choosing): TUF's signed hash says no.
    let p = pair().await;
    let mut evil = p.v2[0].clone();
    evil[0..4096].fill(0xEE);
    let (forged, _) = edgeimg_release::delta::make("root.img", &p.v1[0], &evil).unwrap();
    std::fs::write(p.target("edge~qemu-x86_64~2.0.0~root.img.from-1.0.0.delta"), forged).unwrap();
    let dev = p.device("dev");
    let a = slot_a(&dev);
    let (ok, out) = run(&dev, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("not usable") && out.contains("downloading it in full"), "{out}");
    assert_installed(&p, &dev, &a, &out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_for_another_source_or_with_a_block_missing_falls_back() {
    let p = pair().await;
    // Wrong source: the slot holds something else than the 1.0.0 its command line claims.
    let dev = p.device("wrong-source");
    let mut slot = noise("some other build", ROOT);
    slot.resize(SLOT as usize, 0xA5);
    std::fs::write(dev.root.join("slots/root-a"), slot).unwrap();
    let a = slot_a(&dev);
    let (ok, out) = run(&dev, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("read back from") && out.contains("downloading it in full"), "{out}");
    assert_installed(&p, &dev, &a, &out);

    // A missing block: one block the delta copies is gone from the running slot.
    let dev = p.device("missing-block");
    let mut slot = std::fs::read(dev.root.join("slots/root-a")).unwrap();
    slot[5 << 20..(5 << 20) + 4096].fill(0);
    std::fs::write(dev.root.join("slots/root-a"), slot).unwrap();
    let a = slot_a(&dev);
    let (ok, out) = run(&dev, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("downloading it in full"), "{out}");
    assert_installed(&p, &dev, &a, &out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_power_cut_while_applying_resumes_where_it_was() {
    let p = pair().await;
    let dev = p.device("dev");
    let a = slot_a(&dev);
    // Cut after 20 MiB of slot B are written from the delta (over 16 MiB synced and recorded).
    let (ok, out) = run(&dev, &[("EDGEIMG_TEST_CRASH_AFTER_BYTES", "20971520")]);
    assert!(!ok && out.contains("simulated power cut"), "{out}");
    assert_eq!(slot_a(&dev), a, "slot A was written before the cut");
    let st = dev.state();
    assert_eq!(st["state"]["state"], "downloading", "{st}");
    let applied = st["state"]["via"]["applied"].as_u64().unwrap();
    assert!((4096..5120).contains(&applied), "16 to 20 MiB should be recorded as written: {st}");
    // Power comes back: the loader still boots A (B was disarmed first); the updater goes on.
    assert_eq!(dev.power_on(BOARD), Slot::A);
    dev.set_cmdline(&p.rh1);
    let (ok, out) = run(&dev, &[]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("(block {applied} written)")), "{out}");
    assert!(!out.contains("in full"), "the delta should have been resumed:\n{out}");
    assert_installed(&p, &dev, &a, &out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_kernel_image_comes_as_a_delta_from_the_running_slots() {
    let p = pair_with(true).await;
    let dev = p.device("dev");
    let a = slot_a(&dev);
    let before = p.sent();
    let (ok, out) = run(&dev, &[]);
    assert!(ok, "{out}");
    let sent = p.sent() - before;
    assert!(out.contains("uki-b.efi: building it in slot B from slot A (1.0.0) and a"), "{out}");
    assert_installed(&p, &dev, &a, &out);
    assert_eq!(std::fs::read(dev.root.join("efi/edgeimg/slot-b/uki.efi")).unwrap(), uki('b', "2.0.0"));
    assert!(sent < 300_000, "sent {sent} bytes; the 3 MiB UKI should have come as a delta:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_that_does_not_match_the_index_is_refused() {
    // The server's full root image is damaged: the index path notices the first bad block,
    // falls back, and the full download fails its signed hash too. Nothing is armed.
    let p = pair().await;
    let f = p.target("edge~qemu-x86_64~2.0.0~root.img");
    let mut bytes = std::fs::read(&f).unwrap();
    for k in 0..40 {
        let at = (k * 157 + 3) * 4096 % ROOT;
        bytes[at + 50] ^= 0x01;
    }
    std::fs::write(&f, bytes).unwrap();
    let dev = p.device("dev");
    dev.set_cmdline(&roothash("0.9.0")); // no delta for it: the index is what it uses
    let a = slot_a(&dev);
    let (ok, out) = run(&dev, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("does not match the signed block index"), "{out}");
    assert!(out.contains("does not match the signed"), "{out}");
    assert_eq!(slot_a(&dev), a, "slot A was written:\n{out}");
    assert_ne!(dev.state()["state"]["state"], "staged", "{out}");
    assert_eq!(dev.power_on(BOARD), Slot::A, "slot B must not be bootable");
}
