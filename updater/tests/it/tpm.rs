//! The security floor in a TPM (swtpm here, through the edgeimg-tpm program): it outlives
//! a wiped or restored /data and blocks an older release; a power cut between the state
//! file and the TPM write is repaired at the next start. Without a TPM, status says the
//! floor is weaker.

use crate::common;

use std::path::PathBuf;

use common::device::Device;
use common::*;
use edgeimg_tpm::swtpm::Swtpm;

const BOARD: &str = "qemu-x86_64";

/// edgeimg-tpm from the same build (`cargo test --workspace` builds it).
fn tpm_tool() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(|d| d.parent()).unwrap().join("edgeimg-tpm");
    assert!(p.exists(), "{} is missing: cargo build -p edgeimg-tpm (or test the whole workspace)", p.display());
    p
}

fn with_tpm(dev: &Device, tpm: &str) {
    let cfg = std::fs::read_to_string(&dev.config).unwrap();
    let extra = format!("tpm = \"{tpm}\"\ntpm_tool = \"{}\"\n", tpm_tool().display());
    std::fs::write(&dev.config, extra + &cfg).unwrap();
}

fn tpm_floor(sw: &Swtpm) -> u64 {
    edgeimg_tpm::Tpm::open(&sw.tcti()).unwrap().floor().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tpm_floor_outlives_the_state_file_and_blocks_older_releases() {
    let f = fleet(BOARD, 200_000).await;
    let (dir, keys, repo) = (f.dir.clone(), &f.keys, &f.repo);
    let sw = Swtpm::start(&dir.join("tpm-state"));
    let dev = f.device(BOARD, "true");
    with_tpm(&dev, &sw.tcti());
    dev.ok(&["run", "--once"]);
    assert_eq!(dev.status()["security_floor_storage"], "tpm-nv");

    // 2.0.0 with security version 3: installed, tried, committed: the TPM floor follows.
    publish_build(repo, keys, &fake_build(&dir, BOARD, "2.0.0", 400_000, 3), 3).await;
    set_channel(repo, keys, BOARD, "2.0.0", 100, false).await;
    assert!(dev.ok(&["run", "--once"]).contains("staged"));
    assert_eq!(dev.power_on(BOARD), edgeimg_proto::Slot::B);
    dev.ok(&["health"]);
    assert_eq!(dev.status()["running"]["version"], "2.0.0");
    assert_eq!(tpm_floor(&sw), 3, "raised in the TPM after the commit");

    // /data restored from an old backup (or edited offline): its floor says 0.
    let state = dev.root.join("data/edgeimg/updater/state.json");
    let mut p: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    p["security_floor"] = 0.into();
    std::fs::write(&state, serde_json::to_vec(&p).unwrap()).unwrap();
    assert_eq!(dev.status()["security_floor"], 3, "the TPM keeps the floor");
    // A newer version number with an older security version is refused.
    publish_build(repo, keys, &fake_build(&dir, BOARD, "3.0.0", 400_000, 2), 2).await;
    set_channel(repo, keys, BOARD, "3.0.0", 100, false).await;
    let o = dev.run(&["run", "--once"], &[]);
    let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("below this device's floor 3"), "{text}");
    assert_ne!(dev.state()["state"]["state"], "staged");

    // Power cut after the state file recorded floor 5 but before the TPM write: the next
    // start raises the TPM.
    let mut p: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    p["security_floor"] = 5.into();
    std::fs::write(&state, serde_json::to_vec(&p).unwrap()).unwrap();
    dev.run(&["run", "--once"], &[]);
    assert_eq!(tpm_floor(&sw), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_tpm_status_says_the_floor_is_weaker() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let keys = keyset(&dir.join("keys")).await;
    let dev = Device::new(&dir, "http://127.0.0.1:9", &keys.dir.join("root.json"), BOARD, "1.0.0", &[&["true"]]);
    with_tpm(&dev, "device:/nonexistent/tpmrm0");
    // Configured, but not there: said, and the updater keeps working.
    assert_eq!(dev.status()["security_floor_storage"], "state-file");
    let text = dev.ok(&["status"]);
    assert!(text.contains("weaker") && text.contains("cannot be read"), "{text}");
    // auto on a device without /dev/tpmrm0: the state file only, and status says why.
    let cfg = std::fs::read_to_string(&dev.config).unwrap().replacen(
        "tpm = \"device:/nonexistent/tpmrm0\"",
        "tpm = \"auto\"",
        1,
    );
    std::fs::write(&dev.config, cfg).unwrap();
    assert_eq!(dev.status()["security_floor_storage"], "state-file");
    let text = dev.ok(&["status"]);
    assert!(text.contains("weaker") && text.contains("no TPM on this device"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn measure_extends_pcr_15_once_per_boot() {
    use edgeimg_tpm::{expected_pcr, release_event, Tpm, RELEASE_PCR};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let keys = keyset(&dir.join("keys")).await;
    let sw = Swtpm::start(&dir.join("tpm-state"));
    let dev = Device::new(&dir, "http://127.0.0.1:9", &keys.dir.join("root.json"), BOARD, "1.0.0", &[&["true"]]);
    with_tpm(&dev, &sw.tcti());
    let cmdline = dev.root.join("proc/cmdline");
    let hash = "ab".repeat(32);
    std::fs::write(&cmdline, format!("ro roothash={hash} edgeimg.slot=a\n")).unwrap();
    dev.ok(&["measure"]);
    let want = expected_pcr(&[&release_event("edge", "1.0.0", &hash)]);
    let pcr = || Tpm::open(&sw.tcti()).unwrap().pcr(RELEASE_PCR).unwrap();
    assert_eq!(pcr(), want);
    assert!(dev.ok(&["measure"]).contains("already measured"));
    assert_eq!(pcr(), want, "measured once per boot");
    // A slot without verity is refused with a reason, PCR untouched.
    std::fs::write(dev.root.join("proc/sys/kernel/random/boot_id"), "boot-next\n").unwrap();
    std::fs::write(&cmdline, "ro edgeimg.slot=a\n").unwrap();
    let o = dev.run(&["measure"], &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no roothash="));
    assert_eq!(pcr(), want);
}
