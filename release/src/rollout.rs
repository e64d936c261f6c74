//! Channels and freshness, signed with the online keys only (rollout, snapshot,
//! timestamp). Nothing here can add or change a release: the top-level targets metadata
//! is carried over with its offline signatures untouched.

use std::num::NonZeroU64;

use edgeimg_proto::channel::{channel_target, validate_name, BoardRollout, Channel, HaltPolicy, Waves, CHANNEL_FORMAT};
use edgeimg_proto::release::{compare_versions, manifest_target, SEP};
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use tough::editor::targets::TargetsEditor;
use tough::editor::RepositoryEditor;
use tough::schema::Target;
use tough::{Repository, TargetName};

use crate::keys::{KeyDir, KeyName, ROLLOUT_ROLE};
use crate::{expires_in, tough_err, Error, Lifetimes, Repo, Result};

/// A change to one board's entry in a channel. `None` fields keep their current value.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub channel: String,
    pub board: String,
    pub image: Option<String>,
    pub version: Option<String>,
    pub percent: Option<u8>,
    pub waves: Option<Waves>,
    /// Some(true): pause; Some(false): resume.
    pub pause: Option<bool>,
    pub reason: Option<String>,
    /// Allow moving the channel to an older release.
    pub rollback: bool,
    pub require_attestation: Option<bool>,
    pub halt: Option<HaltPolicy>,
}

async fn read_bytes(repo: &Repository, name: &str) -> Result<Option<Vec<u8>>> {
    let tn = TargetName::new(name).map_err(tough_err(format!("target name {name}")))?;
    match repo.read_target(&tn).await.map_err(tough_err(format!("reading {name}")))? {
        None => Ok(None),
        Some(stream) => {
            let chunks: Vec<bytes::Bytes> = stream
                .try_collect()
                .await
                .map_err(|e| Error::Tough { what: format!("reading {name}"), message: crate::chain(&e) })?;
            Ok(Some(chunks.concat()))
        }
    }
}

/// The channel as the repository has it now (None if it was never written).
pub async fn read_channel(repo: &Repository, name: &str) -> Result<Option<Channel>> {
    match read_bytes(repo, &channel_target(name)).await? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("channel {name} in the repository is damaged: {e}"))),
    }
}

/// Releases published for a board: (image, version), from the top-level targets only.
pub fn published_releases(repo: &Repository, board: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = repo
        .targets()
        .signed
        .targets
        .keys()
        .filter_map(|t| {
            let parts: Vec<&str> = t.raw().split(SEP).collect();
            (parts.len() == 4 && parts[1] == board && parts[3] == "release.json")
                .then(|| (parts[0].to_string(), parts[2].to_string()))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0).then(compare_versions(&a.1, &b.1)));
    v
}

fn apply_change(current: Option<Channel>, c: &Change, repo: &Repository) -> Result<Channel> {
    validate_name(&c.channel).map_err(Error::Invalid)?;
    let mut ch = current.unwrap_or_else(|| Channel {
        format: CHANNEL_FORMAT,
        name: c.channel.clone(),
        boards: Default::default(),
    });
    let old = ch.boards.get(&c.board).cloned();
    let mut entry = match (&old, &c.version) {
        (None, None) => {
            return Err(Error::Invalid(format!(
                "channel {} has no release for {} yet: give --release VERSION (and --percent or --waves)",
                c.channel, c.board
            )))
        }
        (Some(o), None) => o.clone(),
        (_, Some(version)) => {
            let published = published_releases(repo, &c.board);
            let image = match (&c.image, &old) {
                (Some(i), _) => i.clone(),
                (None, Some(o)) => o.image.clone(),
                (None, None) => {
                    let mut images: Vec<&String> =
                        published.iter().filter(|(_, v)| v == version).map(|(i, _)| i).collect();
                    images.dedup();
                    match images.as_slice() {
                        [one] => (*one).clone(),
                        [] => String::new(),
                        _ => {
                            return Err(Error::Invalid(format!(
                                "several images have {version} for {}: give --image",
                                c.board
                            )))
                        }
                    }
                }
            };
            if !published.iter().any(|(i, v)| *i == image && v == version) {
                return Err(Error::Refused(format!(
                    "{image} {version} for {} was never published (its manifest {} is not signed by the targets key); published: {}",
                    c.board,
                    manifest_target(&image, &c.board, version),
                    published.iter().map(|(i, v)| format!("{i} {v}")).collect::<Vec<_>>().join(", ")
                )));
            }
            if let Some(o) = &old {
                if compare_versions(version, &o.version).is_lt() && !c.rollback {
                    return Err(Error::Refused(format!(
                        "{version} is older than the channel's {}: pass --rollback to roll {} back on purpose",
                        o.version, c.channel
                    )));
                }
            }
            if c.percent.is_none() && c.waves.is_none() && old.as_ref().is_none_or(|o| o.version != *version) {
                return Err(Error::Invalid(format!(
                    "say how far {version} goes: --percent N or --waves 1,5,25,100 --period 4d"
                )));
            }
            BoardRollout {
                image,
                version: version.clone(),
                percent: 0,
                waves: None,
                paused: false,
                pause_reason: None,
                rollback: c.rollback,
                require_attestation: old.as_ref().is_some_and(|o| o.require_attestation),
                halt: old.as_ref().map(|o| o.halt).unwrap_or_default(),
            }
        }
    };
    if let Some(p) = c.percent {
        if p > 100 {
            return Err(Error::Invalid(format!("--percent {p}: at most 100")));
        }
        entry.percent = p;
        entry.waves = None;
    }
    if let Some(w) = &c.waves {
        w.validate().map_err(Error::Invalid)?;
        entry.waves = Some(w.clone());
    }
    if let Some(p) = c.pause {
        entry.paused = p;
        entry.pause_reason = if p { c.reason.clone().or(Some("paused by an operator".into())) } else { None };
    }
    if let Some(a) = c.require_attestation {
        entry.require_attestation = a;
    }
    if let Some(h) = c.halt {
        entry.halt = h;
    }
    ch.boards.insert(c.board.clone(), entry);
    Ok(ch)
}

/// Change a channel and sign it with the online keys.
pub async fn apply(
    repo: &Repo,
    keys: &KeyDir,
    change: &Change,
    lifetimes: &Lifetimes,
    now: jiff::Timestamp,
) -> Result<Channel> {
    let _lock = repo.lock()?;
    let loaded = repo.load().await?;
    let current = read_channel(&loaded, &change.channel).await?;
    let channel = apply_change(current, change, &loaded)?;
    let mut json = serde_json::to_vec_pretty(&channel).map_err(|e| Error::Invalid(e.to_string()))?;
    json.push(b'\n');
    resign_online(repo, keys, Some((&channel_target(&channel.name), &json)), lifetimes, now, None).await?;
    tracing::info!("channel {} updated for {}", channel.name, change.board);
    Ok(channel)
}

/// Sign a channel exactly as given, without the checks of `apply`. Low-level: this is what
/// a holder of the online rollout key can do, so tests use it to play a compromised server.
pub async fn sign_channel_unchecked(
    repo: &Repo,
    keys: &KeyDir,
    channel: &Channel,
    lifetimes: &Lifetimes,
    now: jiff::Timestamp,
) -> Result<()> {
    let _lock = repo.lock()?;
    let json = serde_json::to_vec_pretty(channel).map_err(|e| Error::Invalid(e.to_string()))?;
    resign_online(repo, keys, Some((&channel_target(&channel.name), &json)), lifetimes, now, None).await
}

/// Re-sign the online roles with fresh expiry (the server does this on a timer).
pub async fn refresh(repo: &Repo, keys: &KeyDir, lifetimes: &Lifetimes, now: jiff::Timestamp) -> Result<()> {
    let _lock = repo.lock()?;
    resign_online(repo, keys, None, lifetimes, now, None).await
}

/// New versions of rollout (optionally with one channel file replaced), snapshot and
/// timestamp; the offline top-level targets stays as it is. With `new_root`, that root
/// (the next version, e.g. after a key rotation) is written in the same staged commit, so
/// the repository never holds a root that the current metadata does not satisfy.
pub(crate) async fn resign_online(
    repo: &Repo,
    keys: &KeyDir,
    channel: Option<(&str, &[u8])>,
    lifetimes: &Lifetimes,
    now: jiff::Timestamp,
    new_root: Option<&std::path::Path>,
) -> Result<()> {
    let staging = tempfile::tempdir_in(&repo.dir).map_err(|source| Error::Io { path: repo.dir.clone(), source })?;
    let role_dir = staging.path().join("role");
    let loaded = repo.load().await?;
    let rollout_version = loaded
        .delegated_role(ROLLOUT_ROLE)
        .and_then(|r| r.targets.as_ref())
        .map(|t| t.signed.version.get())
        .ok_or_else(|| {
            Error::Invalid(format!("{} has no rollout role (was it made by edgeimg publish?)", repo.dir.display()))
        })?;
    let (snapshot_v, timestamp_v) = (loaded.snapshot().signed.version.get(), loaded.timestamp().signed.version.get());
    let next = |v: u64| NonZeroU64::new(v + 1).unwrap_or(NonZeroU64::MIN);

    let mut te = TargetsEditor::from_repo(loaded, ROLLOUT_ROLE).map_err(tough_err("editing the rollout role"))?;
    let channel_file = staging.path().join("channel.json");
    if let Some((name, bytes)) = channel {
        std::fs::write(&channel_file, bytes).map_err(|source| Error::Io { path: channel_file.clone(), source })?;
        let target = Target::from_path(&channel_file).await.map_err(tough_err("hashing the channel file"))?;
        te.add_target(TargetName::new(name).map_err(tough_err("channel target name"))?, target)
            .map_err(tough_err("adding the channel file"))?;
    }
    te.version(next(rollout_version)).expires(expires_in(now, lifetimes.rollout));
    let role = te.sign(&keys.sources(&[KeyName::Rollout])?).await.map_err(tough_err("signing the rollout role"))?;
    role.write(&role_dir, false).await.map_err(tough_err("writing the rollout role"))?;

    let root_path = match new_root {
        Some(p) => p.to_path_buf(),
        None => repo.latest_root()?,
    };
    let mut editor = RepositoryEditor::from_repo(&root_path, repo.load().await?)
        .await
        .map_err(tough_err("opening the repository"))?;
    // Loading the re-signed rollout role also drops the top-level targets editor, so the
    // offline targets metadata is written back with its original signatures.
    let url = url::Url::from_directory_path(&role_dir).map_err(|_| Error::Invalid("staging path".into()))?;
    editor
        .update_delegated_targets(ROLLOUT_ROLE, url.as_str())
        .await
        .map_err(tough_err("updating the rollout role"))?;
    editor.snapshot_version(next(snapshot_v)).snapshot_expires(expires_in(now, lifetimes.snapshot));
    editor.timestamp_version(next(timestamp_v)).timestamp_expires(expires_in(now, lifetimes.timestamp));
    let signed = editor
        .sign(&keys.sources(&[KeyName::Snapshot, KeyName::Timestamp])?)
        .await
        .map_err(tough_err("signing snapshot and timestamp"))?;
    let meta = staging.path().join("metadata");
    signed.write(&meta).await.map_err(tough_err("writing metadata"))?;
    if let Some((name, bytes)) = channel {
        // Consistent snapshots: targets are served as `<sha256>.<name>` (TUF 1.0 §5.7.3).
        let targets = repo.targets_dir();
        std::fs::create_dir_all(&targets).map_err(|source| Error::Io { path: targets.clone(), source })?;
        let dest = targets.join(format!("{}.{name}", hex::encode(Sha256::digest(bytes))));
        if !dest.exists() {
            let tmp = targets.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, bytes)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &dest))
                .map_err(|source| Error::Io { path: dest.clone(), source })?;
        }
    }
    repo.commit_metadata(&meta)?;
    Ok(())
}

/// Convenience for tests and tools: a channel file as a client would see it.
pub async fn channel(repo: &Repo, name: &str) -> Result<Option<Channel>> {
    read_channel(&repo.load().await?, name).await
}
