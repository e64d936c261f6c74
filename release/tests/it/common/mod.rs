//! Shared fixtures: key sets, fake build outputs, a strict TUF client.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgeimg_proto::payload::{Artifact, ArtifactKind, BootFile, Payload, SlotBoot, PAYLOAD_FORMAT};
use edgeimg_proto::Slot;
use edgeimg_release::keys::{self, InitOptions};
use edgeimg_release::publish::PublishOptions;
use edgeimg_release::{KeyDir, Lifetimes, Repo};
use sha2::{Digest, Sha256};
use tough::{ExpirationEnforcement, Repository, RepositoryLoader};

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub async fn keyset(dir: &Path) -> KeyDir {
    keys::init(
        dir,
        &InitOptions {
            root_keys: 2,
            root_threshold: 2,
            root_expires: now() + jiff::SignedDuration::from_hours(24 * 365),
            insecure_example: false,
        },
    )
    .await
    .unwrap();
    KeyDir::new(dir)
}

/// A build output directory with a payload whose files are small but real.
pub fn fake_build(dir: &Path, board: &str, image: &str, version: &str) -> PathBuf {
    let b = dir.join(format!("{board}-{image}-{version}"));
    let p = b.join("payload");
    std::fs::create_dir_all(&p).unwrap();
    let mut artifacts = Vec::new();
    for (name, kind, len) in [
        ("root.img", ArtifactKind::RootImage, 300_000usize),
        ("root.verity", ArtifactKind::VerityTree, 4096),
        ("linux", ArtifactKind::BootFile, 1000),
        ("initrd", ArtifactKind::BootFile, 2000),
    ] {
        let content: Vec<u8> =
            (0..len).map(|i| (i as u8).wrapping_mul(31) ^ version.len() as u8 ^ name.len() as u8).collect();
        let mut content = content;
        content.extend_from_slice(version.as_bytes());
        std::fs::write(p.join(name), &content).unwrap();
        artifacts.push(Artifact {
            name: name.into(),
            kind,
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(&content)),
        });
    }
    let slots = Slot::ALL
        .iter()
        .map(|&s| {
            let d = s.boot_dir();
            (
                s,
                SlotBoot {
                    cmdline: format!("roothash=00 edgeimg.slot={}", s.letter()),
                    files: vec![
                        BootFile { artifact: "linux".into(), path: format!("{d}/linux") },
                        BootFile { artifact: "initrd".into(), path: format!("{d}/initrd") },
                    ],
                },
            )
        })
        .collect();
    let payload = Payload {
        format: PAYLOAD_FORMAT,
        board: board.into(),
        image: image.into(),
        version: version.into(),
        arch: "amd64".into(),
        build_id: format!("build-{version}"),
        roothash: "ab".repeat(32),
        security_version: 1,
        artifacts,
        slots,
        verity: None,
    };
    std::fs::write(p.join("payload.json"), serde_json::to_vec_pretty(&payload).unwrap()).unwrap();
    b
}

pub fn publish_opts(build: &Path) -> PublishOptions {
    PublishOptions {
        build_dir: build.into(),
        security_version: 1,
        min_updater_version: "0.1.0".into(),
        expected_pcrs: BTreeMap::new(),
        deltas: 3,
        lifetimes: Lifetimes::default(),
        now: now(),
    }
}

/// A client that trusts only `root.json` and enforces expiry, with a persistent datastore
/// (so rollback of metadata it has seen is detected).
pub async fn client(repo: &Repo, root: &Path, datastore: &Path) -> Result<Repository, tough::error::Error> {
    let root = std::fs::read(root).unwrap();
    std::fs::create_dir_all(datastore).unwrap();
    RepositoryLoader::new(&root, repo.metadata_url().unwrap(), repo.targets_url().unwrap())
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .datastore(datastore)
        .load()
        .await
}

pub async fn read_target(r: &Repository, name: &str) -> Result<Vec<u8>, String> {
    use futures_util::TryStreamExt;
    let tn = tough::TargetName::new(name).map_err(|e| e.to_string())?;
    let s = r.read_target(&tn).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no target {name}"))?;
    let chunks: Vec<bytes::Bytes> = s.try_collect().await.map_err(|e| format!("{e}"))?;
    Ok(chunks.concat())
}
