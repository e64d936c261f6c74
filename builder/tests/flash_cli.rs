//! `edgeimg flash` through the binary: JSON lines, the summary, refusals without a terminal,
//! the whole error chain on failure, and a provisioning secret that never shows.

mod flash_fixture;

use std::fs;
use std::process::{Command, Stdio};

use flash_fixture::*;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn edgeimg(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_edgeimg"))
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .output()
        .expect("run edgeimg");
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

#[test]
fn json_lines_from_start_to_done() {
    let fx = fixture();
    let out = fx.path("card.img");
    let o = edgeimg(&[&"--json", &"flash", &"--yes", &fx.zst, &out]);
    assert!(o.ok, "{}", o.stderr);
    let ev = events(&o.stdout);
    assert_eq!(ev[0]["event"], "start");
    assert_eq!(ev[0]["image_bytes"], SIZE);
    assert!(ev[0]["bmap"].as_str().unwrap().ends_with("disk.img.bmap"));
    let p = ev.iter().find(|e| e["event"] == "progress" && e["phase"] == "write").expect("write progress");
    for k in ["done", "total", "bytes_per_second", "eta_seconds"] {
        assert!(p.get(k).is_some(), "progress has {k}: {p}");
    }
    assert!(ev.iter().any(|e| e["event"] == "progress" && e["phase"] == "verify"), "verify progress");
    let done = ev.last().unwrap();
    assert_eq!(done["event"], "done");
    assert!(done["bytes_verified"].as_u64().unwrap() > 0);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fx.img).unwrap());
}

#[test]
fn plain_output_summarizes_and_warns_without_a_bmap() {
    let fx = fixture();
    fs::remove_file(&fx.bmap).unwrap();
    let out = fx.path("card.img");
    let o = edgeimg(&[&"flash", &"-y", &fx.img, &out]);
    assert!(o.ok, "{}", o.stderr);
    assert!(o.stdout.contains("read back and verified"), "{}", o.stdout);
    assert!(o.stderr.contains("no block map") && o.stderr.contains("slower"), "{}", o.stderr);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fx.img).unwrap());
}

#[test]
fn without_a_terminal_and_without_yes_nothing_is_written() {
    let fx = fixture();
    let out = fx.path("card.img");
    fs::write(&out, b"precious").unwrap();
    let o = edgeimg(&[&"flash", &fx.zst, &out]);
    assert!(!o.ok);
    assert!(o.stderr.contains("no terminal to ask on") && o.stderr.contains("pass --yes"), "{}", o.stderr);
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    // A new file holds nothing to lose: no question asked.
    let new = fx.path("new.img");
    assert!(edgeimg(&[&"flash", &fx.zst, &new]).ok);
}

#[test]
fn a_failure_is_a_json_event_and_a_full_error_chain() {
    let fx = fixture();
    flip(&fx.img, DATA[1].0 + 5);
    let out = fx.path("card.img");
    let o = edgeimg(&[&"--json", &"flash", &"--yes", &fx.img, &out]);
    assert!(!o.ok);
    let ev = events(&o.stdout);
    let failed = ev.last().unwrap();
    assert_eq!(failed["event"], "failed", "{}", o.stdout);
    assert_eq!(failed["partial"], true);
    let at = failed["stopped_at"].as_u64().unwrap();
    assert!(at <= DATA[1].0, "{at}");
    let msg =
        format!("partially written: stopped at byte offset {at}; the copy is not bootable: the image does not match");
    assert!(failed["error"].as_str().unwrap().starts_with(&msg), "{failed}");
    assert!(o.stderr.contains(&msg), "{}", o.stderr);
    assert!(read_range(&out, 0, MIB).iter().all(|&b| b == 0));
}

#[test]
fn refusals_before_anything_is_written() {
    let fx = fixture();
    let o = edgeimg(&[&"flash", &"--yes", &fx.img, &fx.img]);
    assert!(!o.ok && o.stderr.contains("is the image itself"), "{}", o.stderr);
    let o = edgeimg(&[&"flash", &"--yes", &fx.zst, &fx.dir.path()]);
    assert!(!o.ok && o.stderr.contains("neither a block device nor a regular file"), "{}", o.stderr);
    let o = edgeimg(&[&"flash", &"--yes", &fx.zst, &"/dev/edgeimg-no-such-card"]);
    assert!(!o.ok && o.stderr.contains("is the card inserted?"), "{}", o.stderr);
    let o = edgeimg(&[&"flash", &"--yes", &"--bmap", &fx.path("missing.bmap"), &fx.zst, &fx.path("t")]);
    assert!(!o.ok && o.stderr.contains("missing.bmap"), "{}", o.stderr);
    assert!(!fx.path("t").exists());
}

fn assert_secret_absent(o: &Out) {
    assert!(!o.stdout.contains(TOKEN) && !o.stderr.contains(TOKEN), "secret leaked:\n{}\n{}", o.stdout, o.stderr);
    assert!(!o.stdout.contains("verysecret") && !o.stderr.contains("verysecret"));
}

#[test]
fn provisioning_through_the_cli_never_shows_the_token() {
    let fx = fixture();
    let prov = provision_file(fx.dir.path());
    let out = fx.path("card.img");
    let o = edgeimg(&[&"-vv", &"flash", &"--yes", &"--provision", &prov, &fx.zst, &out]);
    assert!(o.ok, "{}", o.stderr);
    assert!(o.stdout.contains("Provisioned: hostname=shop-042"), "{}", o.stdout);
    assert!(o.stdout.contains("k3s.token=(set)"), "{}", o.stdout);
    assert_secret_absent(&o);
    assert_eq!(fat_read(&out, ESP.0, ESP.1, "edgeimg-provision.toml").unwrap(), fs::read(&prov).unwrap());

    let o = edgeimg(&[&"-vv", &"--json", &"flash", &"--yes", &"--provision", &prov, &fx.zst, &out]);
    assert!(o.ok, "{}", o.stderr);
    assert_secret_absent(&o);

    // A syntax error on the token's line: the parser's message, not the line.
    let bad = fx.path("bad.toml");
    fs::write(&bad, format!("[k3s]\ntoken = \"{TOKEN}\" oops\n")).unwrap();
    fs::write(&out, b"precious").unwrap();
    let o = edgeimg(&[&"-vv", &"flash", &"--yes", &"--provision", &bad, &fx.zst, &out]);
    assert!(!o.ok);
    assert!(o.stderr.contains("provisioning file") && o.stderr.contains("line 2"), "{}", o.stderr);
    assert_secret_absent(&o);
    assert_eq!(fs::read(&out).unwrap(), b"precious");
}

#[test]
fn help_lists_the_flags() {
    let o = edgeimg(&[&"flash", &"--help"]);
    for flag in ["--bmap", "--no-bmap", "--yes", "--force", "--provision"] {
        assert!(o.stdout.contains(flag), "{flag}: {}", o.stdout);
    }
}
