//! Power cuts at every persisted step of an update and in the middle of writing a slot.
//! After each cut the device is powered on again (the loader picks what it would pick),
//! the updater restarts, and in every case: the running slot was never written, /data's
//! state is readable, and the device ends on a verified release.

use crate::common;

use common::device::Device;
use common::*;
use edgeimg_proto::Slot;
use edgeimg_release::Repo;

const BOARD: &str = "qemu-x86_64";

struct Case {
    name: &'static str,
    env: (&'static str, &'static str),
    /// Where the cut happens: while installing, or while committing the trial boot.
    during_commit: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "after persisting the intent, before disarming B",
        env: ("EDGEIMG_TEST_CRASH_AT", "downloading#1"),
        during_commit: false,
    },
    Case { name: "after root.img", env: ("EDGEIMG_TEST_CRASH_AT", "downloading#2"), during_commit: false },
    Case { name: "after root.verity", env: ("EDGEIMG_TEST_CRASH_AT", "downloading#3"), during_commit: false },
    Case { name: "after linux", env: ("EDGEIMG_TEST_CRASH_AT", "downloading#4"), during_commit: false },
    Case { name: "after initrd", env: ("EDGEIMG_TEST_CRASH_AT", "downloading#5"), during_commit: false },
    Case { name: "1 MiB into root.img", env: ("EDGEIMG_TEST_CRASH_AFTER_BYTES", "1048576"), during_commit: false },
    Case { name: "2 MiB into root.img", env: ("EDGEIMG_TEST_CRASH_AFTER_BYTES", "2097152"), during_commit: false },
    Case { name: "after the read-back verification", env: ("EDGEIMG_TEST_CRASH_AT", "verified"), during_commit: false },
    Case { name: "after arming slot B", env: ("EDGEIMG_TEST_CRASH_AT", "staged"), during_commit: false },
    Case {
        name: "after blessing B, before recording it",
        env: ("EDGEIMG_TEST_CRASH_AT", "blessed"),
        during_commit: true,
    },
    Case { name: "after recording the commit", env: ("EDGEIMG_TEST_CRASH_AT", "idle"), during_commit: true },
];

#[tokio::test(flavor = "multi_thread")]
async fn power_cut_at_every_step() {
    let d = tempfile::tempdir().unwrap();
    let keys = keyset(&d.path().join("keys")).await;
    let repo = Repo::new(d.path().join("repo"));
    publish_build(&repo, &keys, &fake_build(d.path(), BOARD, "1.0.0", 100_000, 1), 1).await;
    let b2 = fake_build(d.path(), BOARD, "2.0.0", 3_000_000, 1);
    publish_build(&repo, &keys, &b2, 1).await;
    set_channel(&repo, &keys, BOARD, "2.0.0", 100, false).await;
    let server = server::start(repo.dir.clone());
    let want = std::fs::read(b2.join("payload/root.img")).unwrap();
    let mut report = Vec::new();

    for case in CASES {
        let base = d.path().join(format!("case-{}", report.len()));
        std::fs::create_dir_all(&base).unwrap();
        let dev = Device::new(&base, &server.url(), &keys.dir.join("root.json"), BOARD, "1.0.0", &[&["true"]]);
        if case.during_commit {
            dev.ok(&["run", "--once"]);
            assert_eq!(dev.power_on(BOARD), Slot::B);
            let o = dev.run(&["health"], &[case.env]);
            assert!(!o.status.success(), "{}: the cut did not happen", case.name);
        } else {
            let o = dev.run(&["run", "--once"], &[case.env]);
            assert!(
                !o.status.success(),
                "{}: the cut did not happen:\n{}",
                case.name,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(dev.slot_a_untouched(), "{}: slot A was written", case.name);
        let state = dev.state();
        assert!(state["state"]["state"].is_string(), "{}: state.json is damaged: {state}", case.name);
        let cut_in = state["state"]["state"].as_str().unwrap().to_string();

        // Power comes back.
        let booted = dev.power_on(BOARD);
        if !case.during_commit && case.env.1 != "staged" {
            assert_eq!(booted, Slot::A, "{}: a half-written slot must not boot", case.name);
        }
        // The updater resumes and finishes what it was doing.
        for _ in 0..3 {
            let st = dev.status();
            match (st["state"]["state"].as_str().unwrap(), st["trial"].as_bool().unwrap()) {
                ("staged", false) => {
                    assert_eq!(dev.power_on(BOARD), Slot::B);
                }
                ("staged", true) => {
                    dev.ok(&["health"]);
                }
                ("idle", _) if st["running"]["version"] == "2.0.0" => break,
                _ => {
                    dev.ok(&["run", "--once"]);
                }
            }
        }
        let st = dev.status();
        assert_eq!(st["running"]["version"], "2.0.0", "{}: {st}", case.name);
        assert_eq!(st["booted_slot"], "b", "{}", case.name);
        assert_eq!(st["trial"], false, "{}", case.name);
        assert_eq!(
            &std::fs::read(dev.root.join("slots/root-b")).unwrap()[..want.len()],
            &want[..],
            "{}: slot B content",
            case.name
        );
        assert!(dev.slot_a_untouched(), "{}", case.name);
        report.push(format!("{:<48} state at the cut: {cut_in:<12} -> committed 2.0.0 in slot B", case.name));
    }
    eprintln!("power-cut cases:\n  {}", report.join("\n  "));
}
