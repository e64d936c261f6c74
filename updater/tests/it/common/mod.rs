//! Fixtures: real repositories written by edgeimg-release (tough), fake build outputs,
//! slots as sparse files.

#![allow(dead_code)]

pub mod device;
pub mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgeimg_proto::payload::{Artifact, ArtifactKind, BootFile, Payload, SlotBoot, PAYLOAD_FORMAT};
use edgeimg_proto::Slot;
use edgeimg_release::keys::{self, InitOptions};
use edgeimg_release::publish::{publish, PublishOptions};
use edgeimg_release::rollout::{self, Change};
use edgeimg_release::{KeyDir, Lifetimes, Repo};
use sha2::{Digest, Sha256};

/// A repository with 1.0.0 of `board` (a fake build with a root image of `root_len`
/// bytes) at 100% on stable, served on 127.0.0.1.
pub struct Fleet {
    pub _d: tempfile::TempDir,
    pub dir: PathBuf,
    pub keys: KeyDir,
    pub repo: Repo,
    pub server: server::Server,
}

pub async fn fleet(board: &str, root_len: usize) -> Fleet {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let keys = keyset(&dir.join("keys")).await;
    let repo = Repo::new(dir.join("repo"));
    publish_build(&repo, &keys, &fake_build(&dir, board, "1.0.0", root_len, 1), 1).await;
    set_channel(&repo, &keys, board, "1.0.0", 100, false).await;
    let server = server::start(repo.dir.clone());
    Fleet { _d: d, dir, keys, repo, server }
}

impl Fleet {
    /// A device of this fleet running 1.0.0 with one health command.
    pub fn device(&self, board: &str, health: &str) -> device::Device {
        device::Device::new(
            &self.dir,
            &self.server.url(),
            &self.keys.dir.join("root.json"),
            board,
            "1.0.0",
            &[&[health]],
        )
    }
}

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub async fn keyset(dir: &Path) -> KeyDir {
    keys::init(
        dir,
        &InitOptions {
            root_keys: 1,
            root_threshold: 1,
            root_expires: now() + jiff::SignedDuration::from_hours(24 * 365),
            insecure_example: false,
        },
    )
    .await
    .unwrap();
    KeyDir::new(dir)
}

/// A build directory whose root image is `root_len` bytes of content derived from the
/// version (so releases differ).
pub fn fake_build(dir: &Path, board: &str, version: &str, root_len: usize, security_version: u64) -> PathBuf {
    fake_build_with(dir, board, version, root_len, security_version, None)
}

/// Like `fake_build`, but each slot boots its own `uki-<slot>.efi` of `uki_len` bytes (what
/// a Secure Boot build makes).
pub fn fake_build_uki(dir: &Path, board: &str, version: &str, root_len: usize, uki_len: usize) -> PathBuf {
    fake_build_with(dir, board, version, root_len, 1, Some(uki_len))
}

fn fake_build_with(
    dir: &Path,
    board: &str,
    version: &str,
    root_len: usize,
    security_version: u64,
    uki: Option<usize>,
) -> PathBuf {
    let seed = Sha256::digest(version.as_bytes());
    let mut files =
        vec![("root.img", ArtifactKind::RootImage, root_len), ("root.verity", ArtifactKind::VerityTree, 8192)];
    match uki {
        None => files.extend([("linux", ArtifactKind::BootFile, 3000), ("initrd", ArtifactKind::BootFile, 5000)]),
        Some(n) => files.extend([("uki-a.efi", ArtifactKind::BootFile, n), ("uki-b.efi", ArtifactKind::BootFile, n)]),
    }
    let files = files
        .into_iter()
        .map(|(name, kind, len)| {
            let content: Vec<u8> = (0..len)
                .map(|i| seed[i % 32] ^ (i as u8).wrapping_mul(7) ^ name.len() as u8 ^ (i >> 12) as u8)
                .collect();
            (name, kind, content)
        })
        .collect::<Vec<_>>();
    fake_build_files(dir, board, version, security_version, &hex::encode(seed), uki.is_some(), &files)
}

/// A build directory holding exactly `files` (name, kind, content), root hash `roothash`.
pub fn fake_build_files(
    dir: &Path,
    board: &str,
    version: &str,
    security_version: u64,
    roothash: &str,
    uki: bool,
    files: &[(&str, ArtifactKind, Vec<u8>)],
) -> PathBuf {
    let b = dir.join(format!("build-{board}-{version}"));
    let p = b.join("payload");
    std::fs::create_dir_all(&p).unwrap();
    let mut artifacts = Vec::new();
    for (name, kind, content) in files {
        std::fs::write(p.join(name), content).unwrap();
        artifacts.push(Artifact {
            name: name.to_string(),
            kind: *kind,
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(content)),
        });
    }
    let slots = Slot::ALL
        .iter()
        .map(|&s| {
            let d = s.boot_dir();
            (
                s,
                SlotBoot {
                    cmdline: format!("ro roothash={roothash} edgeimg.slot={}", s.letter()),
                    files: match uki {
                        false => vec![
                            BootFile { artifact: "linux".into(), path: format!("{d}/linux") },
                            BootFile { artifact: "initrd".into(), path: format!("{d}/initrd") },
                        ],
                        true => {
                            vec![BootFile { artifact: format!("uki-{}.efi", s.letter()), path: format!("{d}/uki.efi") }]
                        }
                    },
                },
            )
        })
        .collect();
    let payload = Payload {
        format: PAYLOAD_FORMAT,
        board: board.into(),
        image: "edge".into(),
        version: version.into(),
        arch: "amd64".into(),
        build_id: format!("build-{version}"),
        roothash: roothash.into(),
        security_version,
        artifacts,
        slots,
        verity: None,
    };
    std::fs::write(p.join("payload.json"), serde_json::to_vec_pretty(&payload).unwrap()).unwrap();
    b
}

pub async fn publish_build(repo: &Repo, keys: &KeyDir, build: &Path, security_version: u64) {
    publish(
        repo,
        keys,
        &PublishOptions {
            build_dir: build.into(),
            security_version,
            min_updater_version: "0.1.0".into(),
            expected_pcrs: BTreeMap::new(),
            deltas: 3,
            lifetimes: Lifetimes::default(),
            now: now(),
        },
    )
    .await
    .unwrap();
}

pub async fn set_channel(repo: &Repo, keys: &KeyDir, board: &str, version: &str, percent: u8, rollback: bool) {
    let c = Change {
        channel: "stable".into(),
        board: board.into(),
        version: Some(version.into()),
        percent: Some(percent),
        rollback,
        ..Default::default()
    };
    rollout::apply(repo, keys, &c, &Lifetimes::default(), now()).await.unwrap();
}
