//! `edgeimg publish`: add a build's payload and its release manifest to the repository,
//! signed by the offline targets key (plus snapshot and timestamp).

use std::collections::BTreeMap;
use std::io::Read;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use edgeimg_proto::attest::{release_pcr, RELEASE_PCR};
use edgeimg_proto::payload::ArtifactKind;
use edgeimg_proto::payload::Payload;
use edgeimg_proto::release::{
    compare_versions, manifest_target, target_name, DeltaKind, DeltaRef, DeltaSource, ReleaseArtifact, ReleaseManifest,
    RELEASE_FORMAT, SEP,
};
use sha2::{Digest, Sha256};
use tough::editor::signed::PathExists;
use tough::editor::RepositoryEditor;
use tough::schema::{PathPattern, PathSet, Target};
use tough::TargetName;

use crate::keys::{KeyDir, KeyName, ROLLOUT_ROLE};
use crate::{expires_in, tough_err, Error, Lifetimes, Repo, Result};

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// A build output directory (`out/<board>/<image>/<version>/`).
    pub build_dir: PathBuf,
    pub security_version: u64,
    pub min_updater_version: String,
    pub expected_pcrs: BTreeMap<String, String>,
    /// Deltas from this many earlier releases of the image for the board (newest first),
    /// plus the block indexes; 0 publishes neither (devices download in full).
    pub deltas: usize,
    pub lifetimes: Lifetimes,
    pub now: jiff::Timestamp,
}

#[derive(Debug, Clone)]
pub struct Published {
    pub manifest: ReleaseManifest,
    pub manifest_target: String,
    /// The repository was created by this publish.
    pub created: bool,
    pub targets_version: u64,
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).map_err(|source| Error::Io { path: path.into(), source })?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

fn target_name_of(s: &str) -> Result<TargetName> {
    TargetName::new(s).map_err(tough_err(format!("target name {s}")))
}

/// Read and check a build's payload: every artifact must match payload.json.
pub fn read_payload(build_dir: &Path) -> Result<Payload> {
    let p = build_dir.join("payload").join("payload.json");
    let bytes = std::fs::read(&p).map_err(|source| Error::Io { path: p.clone(), source })?;
    let payload: Payload = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: not an edgeimg payload manifest: {e}", p.display())))?;
    for a in &payload.artifacts {
        let f = build_dir.join("payload").join(&a.name);
        let (size, sha) = sha256_file(&f)?;
        if size != a.size || sha != a.sha256 {
            return Err(Error::Refused(format!(
                "{} does not match payload.json (size {size} vs {}, sha256 {sha} vs {}): the build output was changed after the build; rebuild it",
                f.display(),
                a.size,
                a.sha256
            )));
        }
    }
    Ok(payload)
}

pub async fn publish(repo: &Repo, keys: &KeyDir, opts: &PublishOptions) -> Result<Published> {
    let _lock = repo.lock()?;
    let payload = read_payload(&opts.build_dir)?;
    let names = |file: &str| target_name(&payload.image, &payload.board, &payload.version, file);
    let mut manifest = ReleaseManifest {
        format: RELEASE_FORMAT,
        image: payload.image.clone(),
        board: payload.board.clone(),
        arch: payload.arch.clone(),
        version: payload.version.clone(),
        security_version: opts.security_version,
        min_updater_version: opts.min_updater_version.clone(),
        build_id: payload.build_id.clone(),
        roothash: payload.roothash.clone(),
        published: crate::round_seconds(opts.now).to_string(),
        artifacts: payload
            .artifacts
            .iter()
            .map(|a| ReleaseArtifact {
                name: a.name.clone(),
                kind: a.kind,
                target: names(&a.name),
                size: a.size,
                sha256: a.sha256.clone(),
            })
            .collect(),
        slots: payload.slots.clone(),
        deltas: Vec::new(),
        verity: payload.verity.clone(),
        expected_pcrs: {
            // PCR 15 after booting this release (what the device measures, before the
            // network is up); other PCRs only as the caller gives them.
            let mut pcrs = opts.expected_pcrs.clone();
            pcrs.entry(RELEASE_PCR.to_string())
                .or_insert_with(|| hex::encode(release_pcr(&payload.image, &payload.version, &payload.roothash)));
            pcrs
        },
    };
    let manifest_name = manifest_target(&payload.image, &payload.board, &payload.version);

    let (mut editor, created, versions) = if repo.exists() {
        let loaded = repo.load().await?;
        if loaded.targets().signed.targets.contains_key(&target_name_of(&manifest_name)?) {
            return Err(Error::Refused(format!(
                "{} {} for {} is already published; releases are immutable: build a new version",
                payload.image, payload.version, payload.board
            )));
        }
        let v = (
            loaded.targets().signed.version.get(),
            loaded.snapshot().signed.version.get(),
            loaded.timestamp().signed.version.get(),
        );
        let root = repo.latest_root()?;
        (RepositoryEditor::from_repo(&root, loaded).await.map_err(tough_err("opening the repository"))?, false, v)
    } else {
        let root = keys.dir.join("root.json");
        let mut e = RepositoryEditor::new(&root).await.map_err(tough_err(format!("reading {}", root.display())))?;
        // The online rollout role may only name channel files: it decides who gets a
        // release and when, never what a release is.
        let paths =
            PathSet::Paths(vec![PathPattern::new(edgeimg_proto::channel::CHANNEL_PATTERN)
                .map_err(tough_err("the channel path pattern"))?]);
        e.delegate_role(
            ROLLOUT_ROLE,
            &keys.sources(&[KeyName::Rollout])?,
            paths,
            true,
            NonZeroU64::MIN,
            expires_in(opts.now, opts.lifetimes.rollout),
            NonZeroU64::MIN,
        )
        .await
        .map_err(tough_err("delegating channels to the rollout role"))?;
        (e, true, (0, 0, 0))
    };

    let staging = tempfile::tempdir_in(&repo.dir).map_err(|source| Error::Io { path: repo.dir.clone(), source })?;
    let earlier = if created { Vec::new() } else { earlier_releases(repo, &manifest, opts.deltas)? };
    let delta_files = if opts.deltas == 0 {
        Vec::new()
    } else {
        make_deltas(&opts.build_dir.join("payload"), staging.path(), repo, &mut manifest, &earlier)?
    };
    let manifest_file = staging.path().join("release.json");
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Invalid(e.to_string()))?;
    json.push(b'\n');
    std::fs::write(&manifest_file, &json).map_err(|source| Error::Io { path: manifest_file.clone(), source })?;

    let mut files: Vec<(PathBuf, String)> =
        manifest.artifacts.iter().map(|a| (opts.build_dir.join("payload").join(&a.name), a.target.clone())).collect();
    files.extend(delta_files);
    files.push((manifest_file, manifest_name.clone()));
    for (path, name) in &files {
        let target = Target::from_path(path).await.map_err(tough_err(format!("hashing {}", path.display())))?;
        editor.add_target(target_name_of(name)?, target).map_err(tough_err(format!("adding target {name}")))?;
    }
    let next = |v: u64| NonZeroU64::new(v + 1).unwrap_or(NonZeroU64::MIN);
    editor.targets_version(next(versions.0)).map_err(tough_err("targets version"))?;
    editor.targets_expires(expires_in(opts.now, opts.lifetimes.targets)).map_err(tough_err("targets expiry"))?;
    editor.snapshot_version(next(versions.1)).snapshot_expires(expires_in(opts.now, opts.lifetimes.snapshot));
    editor.timestamp_version(next(versions.2)).timestamp_expires(expires_in(opts.now, opts.lifetimes.timestamp));
    let signed = editor
        .sign(&keys.sources(&[KeyName::Targets, KeyName::Snapshot, KeyName::Timestamp])?)
        .await
        .map_err(tough_err("signing the repository"))?;

    let meta = staging.path().join("metadata");
    signed.write(&meta).await.map_err(tough_err("writing metadata"))?;
    let targets_dir = repo.targets_dir();
    std::fs::create_dir_all(&targets_dir).map_err(|source| Error::Io { path: targets_dir.clone(), source })?;
    for (path, name) in &files {
        signed
            .copy_target(path, &targets_dir, PathExists::Skip, Some(&target_name_of(name)?))
            .await
            .map_err(tough_err(format!("copying {}", path.display())))?;
    }
    world_readable(&targets_dir)?;
    repo.commit_metadata(&meta)?;
    tracing::info!(
        "published {} {} for {} into {}",
        manifest.image,
        manifest.version,
        manifest.board,
        repo.dir.display()
    );
    Ok(Published { manifest, manifest_target: manifest_name, created, targets_version: versions.0 + 1 })
}

/// The file of a published target (consistent snapshots: `<sha256>.<name>`).
pub fn target_file(repo: &Repo, name: &str) -> Result<PathBuf> {
    let dir = repo.targets_dir();
    let suffix = format!(".{name}");
    let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&suffix) && n.len() == 65 + name.len())
        })
        .ok_or_else(|| Error::Invalid(format!("target {name} is not in {}", dir.display())))
}

/// Up to `n` releases of the same image and board older than `new`, newest first.
fn earlier_releases(repo: &Repo, new: &ReleaseManifest, n: usize) -> Result<Vec<ReleaseManifest>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let prefix = format!("{}{SEP}{}{SEP}", new.image, new.board);
    let suffix = format!("{SEP}release.json");
    let dir = repo.targets_dir();
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some((_, name)) = file.split_once('.') else { continue };
        if !(name.starts_with(&prefix) && name.ends_with(&suffix)) {
            continue;
        }
        let bytes = std::fs::read(e.path()).map_err(|source| Error::Io { path: e.path(), source })?;
        match serde_json::from_slice::<ReleaseManifest>(&bytes) {
            Ok(m) if compare_versions(&m.version, &new.version).is_lt() => found.push(m),
            Ok(_) => {}
            Err(err) => tracing::warn!("{}: not a release manifest ({err}); no delta from it", e.path().display()),
        }
    }
    found.sort_by(|a, b| compare_versions(&b.version, &a.version));
    found.truncate(n);
    Ok(found)
}

/// The source of a delta for artifact `a` from release `old`: the same kind of artifact
/// for the root image and hash tree; for a boot file, the file that the *other* slot's
/// entry of `old` has at the same place (a device installing into slot B runs slot A).
fn delta_source<'a>(
    new: &ReleaseManifest,
    old: &'a ReleaseManifest,
    a: &ReleaseArtifact,
) -> Option<&'a ReleaseArtifact> {
    if a.kind != ArtifactKind::BootFile {
        return old.artifact(a.kind);
    }
    let (slot, path) = new
        .slots
        .iter()
        .find_map(|(s, b)| b.files.iter().find(|f| f.artifact == a.name).map(|f| (*s, f.path.as_str())))?;
    let theirs = format!("{}{}", slot.other().boot_dir(), path.strip_prefix(&slot.boot_dir())?);
    let name = &old.slots.get(&slot.other())?.files.iter().find(|f| f.path == theirs)?.artifact;
    old.artifact_named(name)
}

/// Block indexes of the root image and hash tree, and deltas from `earlier` releases to
/// them and to changed boot files, written into `staging` and listed in the manifest.
fn make_deltas(
    payload: &Path,
    staging: &Path,
    repo: &Repo,
    manifest: &mut ReleaseManifest,
    earlier: &[ReleaseManifest],
) -> Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let names = |file: &str| target_name(&manifest.image, &manifest.board, &manifest.version, file);
    let mut refs = Vec::new();
    for a in &manifest.artifacts {
        let new_path = payload.join(&a.name);
        let mut add = |file: String, path: PathBuf, kind: DeltaKind, from: Option<DeltaSource>| -> Result<()> {
            let (size, sha256) = sha256_file(&path)?;
            refs.push(DeltaRef { artifact: a.name.clone(), kind, from, target: names(&file), size, sha256 });
            files.push((path, names(&file)));
            Ok(())
        };
        if a.kind != ArtifactKind::BootFile {
            let idx = staging.join(format!("{}.index", a.name));
            crate::delta::index_file(&a.name, &new_path, &idx)?;
            add(format!("{}.index", a.name), idx, DeltaKind::Index, None)?;
        }
        for old in earlier {
            // A boot file the device already has is copied, not downloaded: no delta.
            let Some(src) = delta_source(manifest, old, a).filter(|s| s.sha256 != a.sha256) else { continue };
            let file = format!("{}.from-{}.delta", a.name, old.version);
            let out = staging.join(&file);
            let stats = crate::delta::make_files(&a.name, &target_file(repo, &src.target)?, &new_path, &out)?;
            tracing::info!(
                "{} from {}: {} bytes ({:.2}% of {}), {} operations, {} new blocks",
                a.name,
                old.version,
                stats.file_bytes,
                stats.file_bytes as f64 * 100.0 / a.size.max(1) as f64,
                a.size,
                stats.ops,
                stats.new_blocks
            );
            let from = DeltaSource {
                version: old.version.clone(),
                roothash: old.roothash.clone(),
                size: src.size,
                sha256: src.sha256.clone(),
            };
            add(file, out, DeltaKind::Delta, Some(from))?;
        }
    }
    manifest.deltas = refs;
    Ok(files)
}

/// Make every target readable by all: a repository is public (TUF's signatures, not file
/// modes, protect it) and is often served by a web server running as another user, which
/// answers 403 for a file only its owner may read. Targets keep their builds' modes when
/// copied (dracut writes the initrd 0600, veritysetup the hash tree), and repositories
/// published before this have such files; they are mended here too.
fn world_readable(targets_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    for e in std::fs::read_dir(targets_dir).map_err(io(targets_dir))? {
        let e = e.map_err(io(targets_dir))?;
        let meta = e.metadata().map_err(io(&e.path()))?;
        if meta.is_file() && meta.permissions().mode() & 0o044 != 0o044 {
            let mode = meta.permissions().mode() | 0o644;
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode)).map_err(io(&e.path()))?;
        }
    }
    Ok(())
}
