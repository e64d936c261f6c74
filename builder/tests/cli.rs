//! The `edgeimg` binary's answers to bad input that is caught before any real work.

use std::path::Path;
use std::process::Command;

fn edgeimg(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeimg"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("run edgeimg");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn unknown_board_lists_the_known_ones() {
    let (ok, text) =
        edgeimg(&["build", "--board", "rpi9", "--recipe", "recipes/minimal.toml", "--out", "/nonexistent/out"]);
    assert!(!ok);
    assert!(text.contains("unknown board `rpi9`"), "{text}");
    assert!(text.contains("qemu-x86_64") && text.contains("nuc"), "{text}");
    assert!(!Path::new("/nonexistent/out").exists());
}

#[test]
fn unknown_recipe_key_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        "[image]\nname = \"x\"\nversion = \"1.0.0\"\n\n[debian]\nsuite = \"trixie\"\npackagez = [\"vim\"]\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let (ok, text) = edgeimg(&[
        "build",
        "--board",
        "qemu-x86_64",
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("r.toml:7"), "file and line: {text}");
    assert!(text.contains("packagez"), "the key: {text}");
    assert!(!out.exists(), "no output for a bad recipe");
}

#[test]
fn bad_value_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let board = dir.path().join("b.toml");
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/qemu-x86_64.toml")).unwrap();
    std::fs::write(&board, text.replace("root_mib = 1024", "root_mib = \"big\"")).unwrap();
    let (ok, out) = edgeimg(&[
        "build",
        "--board",
        board.to_str().unwrap(),
        "--recipe",
        "recipes/minimal.toml",
        "--out",
        "/nonexistent/o",
    ]);
    assert!(!ok);
    assert!(out.contains("disk.root_mib"), "{out}");
    assert!(out.contains("b.toml:"), "{out}");
}

#[test]
fn bad_version_flag_is_rejected() {
    let (ok, text) = edgeimg(&[
        "build",
        "--board",
        "qemu-x86_64",
        "--recipe",
        "recipes/minimal.toml",
        "--version",
        "v1",
        "--out",
        "/nonexistent/o",
    ]);
    assert!(!ok);
    assert!(text.contains("not a semantic version"), "{text}");
}

#[test]
fn completions_and_man_pages() {
    let (ok, text) = edgeimg(&["completions", "bash"]);
    assert!(ok && text.contains("_edgeimg()"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = edgeimg(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    let page = std::fs::read_to_string(dir.path().join("edgeimg-build.1")).unwrap();
    assert!(page.contains("recipe"), "{page}");
}
