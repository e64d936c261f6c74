//! The updater's work: find out what booted, check the channel, install into the inactive
//! slot, stage it, reboot, and commit or roll back. Every transition is persisted before
//! its action (see state.rs) and reported to the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgeimg_proto::channel::{channel_target, Channel};
use edgeimg_proto::payload::ArtifactKind;
use edgeimg_proto::release::{manifest_target, DeltaKind, ReleaseArtifact, ReleaseManifest};
use edgeimg_proto::report::EventKind;
use edgeimg_proto::Slot;

use crate::boot::{fake::Fake, systemd_boot::SystemdBoot, BootBackend, BootError, BootFiles};
use crate::config::{BootBackendKind, RebootPolicy, Settings, TimePolicy};
use crate::decide::{check_manifest, decide, Decision, Refusal};
use crate::delta::{self, DeltaError};
use crate::install::{self, InstallError};
use crate::state::{self, event, Persistent, ReleaseRef, State, StateDir, StateError, Via};
use crate::tuf::{self, store::Store, Client as Tuf, Limits, TargetInfo, TufError};

pub const UPDATER_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("boot loader ({0})")]
    Boot(#[from] BootError),
    #[error("TUF: {0}")]
    Tuf(#[from] TufError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("refused {release}: {refusal}")]
    Refused { release: String, refusal: Refusal },
    #[error("{0}")]
    Other(String),
}

/// Repository access: the server over HTTP, or a directory (offline install).
pub enum Fetcher {
    Http(tuf::HttpFetcher),
    Dir(tuf::DirFetcher),
}

impl tuf::Fetcher for Fetcher {
    async fn fetch(&self, metadata: bool, path: &str, max: u64) -> Result<Vec<u8>, TufError> {
        match self {
            Fetcher::Http(f) => f.fetch(metadata, path, max).await,
            Fetcher::Dir(f) => f.fetch(metadata, path, max).await,
        }
    }
    fn location(&self, metadata: bool, path: &str) -> String {
        match self {
            Fetcher::Http(f) => f.location(metadata, path),
            Fetcher::Dir(f) => f.location(metadata, path),
        }
    }
}

/// A verified plan: the manifest and where each artifact comes from.
#[derive(Debug, Clone)]
pub struct Plan {
    pub manifest: ReleaseManifest,
    pub sources: BTreeMap<String, (TargetInfo, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Decision(Decision),
    WaitingForTime,
    Install(String),
}

impl std::fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckOutcome::Decision(d) => match d {
                Decision::NoRelease => write!(f, "the channel has no release for this board"),
                Decision::UpToDate => write!(f, "up to date"),
                Decision::Paused { reason } => write!(f, "the rollout is paused ({reason})"),
                Decision::NotYet { percent } => write!(f, "not in the rollout yet (at {percent}%)"),
                Decision::FailedBefore => write!(f, "the channel's release failed on this device before: not retried"),
                Decision::Older => write!(f, "the channel's release is older than what runs (no rollback ordered)"),
                Decision::Install { image, version } => write!(f, "{image} {version} available"),
            },
            CheckOutcome::WaitingForTime => write!(f, "waiting for the clock to be synchronized"),
            CheckOutcome::Install(what) => write!(f, "{what} available"),
        }
    }
}

pub struct Agent {
    pub settings: Settings,
    pub root: PathBuf,
    pub boot: Box<dyn BootBackend>,
    pub dir: StateDir,
    pub http: reqwest::Client,
}

fn url_of<'a>(plan: &'a Plan, name: &str) -> Result<&'a str, DeltaError> {
    plan.sources.get(name).map(|(_, u)| u.as_str()).ok_or_else(|| DeltaError::Unusable(format!("no source for {name}")))
}

pub fn backend(s: &Settings, root: &Path) -> Box<dyn BootBackend> {
    match s.backend {
        BootBackendKind::SystemdBoot => Box::new(SystemdBoot {
            esp: s.boot_dir.clone(),
            efivars: s.efivars.clone(),
            cmdline: root.join("proc/cmdline"),
        }),
        BootBackendKind::UBoot => Box::new(crate::boot::uboot::UBoot {
            boot_dir: s.boot_dir.clone(),
            configs: s.fw_env_config.clone(),
            cmdline: root.join("proc/cmdline"),
            scratch: s.state_dir.join("tmp"),
            fw_setenv: "fw_setenv".into(),
        }),
        BootBackendKind::Tryboot => Box::new(crate::boot::tryboot::Tryboot {
            boot_dir: s.boot_dir.clone(),
            partitions: s.boot_partitions.clone(),
            cmdline: root.join("proc/cmdline"),
        }),
        BootBackendKind::L4t => Box::new(crate::boot::l4t::L4t {
            boot_dir: s.boot_dir.clone(),
            partitions: s.boot_partitions.clone(),
            efivars: s.efivars.clone(),
            cmdline: root.join("proc/cmdline"),
            nvbootctrl: s.nvbootctrl.clone(),
            systemctl: "systemctl".into(),
            root: root.to_path_buf(),
        }),
        BootBackendKind::Fake => Box::new(Fake {
            state_file: s.fake_state.clone().unwrap_or_else(|| s.state_dir.join("fake-boot.json")),
            boot_dir: s.boot_dir.clone(),
        }),
    }
}

impl Agent {
    pub fn new(settings: Settings, root: &Path) -> Self {
        let boot = backend(&settings, root);
        let dir = StateDir::new(&settings.state_dir);
        Self { settings, root: root.into(), boot, dir, http: crate::net::client() }
    }

    /// The release running now, from the image's os-release and what we know of the slot.
    pub fn running(&self, p: &Persistent) -> ReleaseRef {
        let image = crate::config::os_release_value(&self.root, "IMAGE_ID").unwrap_or_default();
        let version = crate::config::os_release_value(&self.root, "IMAGE_VERSION").unwrap_or_default();
        let sv = self
            .boot
            .booted_slot()
            .ok()
            .and_then(|s| p.slots.get(&s))
            .filter(|r| r.image == image && r.version == version)
            .map_or(0, |r| r.security_version);
        ReleaseRef { image, version, security_version: sv }
    }

    /// The anti-rollback floor in force: the higher of the state file's and the TPM's (a
    /// TPM keeps it when /data is wiped or an old state file is put back).
    pub fn floor(&self, p: &Persistent) -> u64 {
        match crate::tpm::open(&self.settings, &self.root).map(|t| t.floor()) {
            Ok(Ok(f)) => f.max(p.security_floor),
            Ok(Err(e)) => {
                tracing::warn!("reading the TPM security floor: {e}; using the state file's");
                p.security_floor
            }
            Err(_) => p.security_floor,
        }
    }

    /// Raise the TPM floor to the state file's (after a commit, and at start: a power cut
    /// between the two writes leaves the TPM behind, never ahead).
    pub fn sync_tpm_floor(&self, p: &Persistent) {
        if let Ok(t) = crate::tpm::open(&self.settings, &self.root) {
            if let Err(e) = t.raise_floor(p.security_floor) {
                tracing::warn!("raising the TPM security floor to {}: {e}", p.security_floor);
            }
        }
    }

    /// Now, if the clock can be trusted under the configured time policy.
    pub fn trusted_now(&self) -> Option<i64> {
        match self.settings.time {
            TimePolicy::System => Some(state::now()),
            TimePolicy::Synchronized => self.root.join("run/systemd/timesync/synchronized").exists().then(state::now),
        }
    }

    fn tuf(&self, repository: &str) -> Result<Tuf<Fetcher>, AgentError> {
        let fetcher = if repository.starts_with("http://") || repository.starts_with("https://") {
            Fetcher::Http(tuf::HttpFetcher::new(self.http.clone(), repository))
        } else {
            Fetcher::Dir(tuf::DirFetcher { dir: PathBuf::from(repository) })
        };
        let store = Store::open(&self.settings.state_dir.join("tuf"), &self.settings.trusted_root)?;
        Ok(Tuf::new(fetcher, store, Limits::default(), self.trusted_now())?)
    }

    pub fn device_id(&self) -> String {
        crate::report::Device::load_or_create(&self.settings.state_dir, &self.root).map(|d| d.id).unwrap_or_default()
    }

    /// Resolve a release through TUF and check it: signed manifest, every artifact a target
    /// with matching hashes, for this board, not below the floor.
    async fn plan(&self, tuf: &mut Tuf<Fetcher>, image: &str, version: &str, floor: u64) -> Result<Plan, AgentError> {
        let name = manifest_target(image, &self.settings.board, version);
        let info =
            tuf.target(&name).await?.ok_or_else(|| TufError::Missing { what: name.clone(), role: "targets".into() })?;
        let manifest: ReleaseManifest = serde_json::from_slice(&tuf.fetch_target(&info).await?)
            .map_err(|e| TufError::Malformed { role: name.clone(), message: e.to_string() })?;
        let rel = format!("{image} {version}");
        if manifest.image != image || manifest.version != version {
            return Err(AgentError::Refused {
                release: rel,
                refusal: Refusal::Incomplete("manifest names another release".into()),
            });
        }
        check_manifest(&manifest, &self.settings.board, UPDATER_VERSION, floor, self.settings.max_download)
            .map_err(|refusal| AgentError::Refused { release: rel.clone(), refusal })?;
        let mut sources = BTreeMap::new();
        for a in &manifest.artifacts {
            let t = tuf
                .target(&a.target)
                .await?
                .ok_or_else(|| TufError::Missing { what: a.target.clone(), role: "targets".into() })?;
            // The manifest and the TUF metadata must agree on every artifact.
            if t.length != a.size || t.hashes.get("sha256").map(|h| h.to_ascii_lowercase()) != Some(a.sha256.clone()) {
                return Err(AgentError::Refused {
                    release: rel,
                    refusal: Refusal::Incomplete(format!("{} differs from its TUF target", a.name)),
                });
            }
            let url = tuf.target_location(&t);
            sources.insert(a.name.clone(), (t, url));
        }
        // Deltas and indexes are optional: one that TUF does not vouch for is left out
        // (the artifact is then downloaded in full).
        for d in &manifest.deltas {
            match tuf.target(&d.target).await {
                Ok(Some(t))
                    if t.length == d.size
                        && t.hashes.get("sha256").map(|h| h.to_ascii_lowercase()).as_deref() == Some(&d.sha256) =>
                {
                    let url = tuf.target_location(&t);
                    sources.insert(d.target.clone(), (t, url));
                }
                Ok(_) => tracing::warn!("{}: not a matching TUF target; not used", d.target),
                Err(e) => tracing::warn!("{}: {e}; not used", d.target),
            }
        }
        Ok(Plan { manifest, sources })
    }

    /// Check the channel (or install an explicit release). Does not install.
    pub async fn check(
        &mut self,
        repository: Option<&str>,
        explicit: Option<(&str, &str)>,
    ) -> Result<(CheckOutcome, Option<Plan>), AgentError> {
        let repo = repository
            .map(String::from)
            .or_else(|| self.settings.repository.clone())
            .ok_or_else(|| AgentError::Other("no repository configured (set `server` or `repository`)".into()))?;
        let mut p = self.dir.load()?;
        if self.trusted_now().is_none() {
            return Ok((CheckOutcome::WaitingForTime, None));
        }
        let mut tuf = self.tuf(&repo)?;
        tuf.refresh().await?;
        p.last_check = Some(state::now());
        let running = self.running(&p);
        let (image, version) = match explicit {
            Some((i, v)) => (i.to_string(), v.to_string()),
            None => {
                let entry = match tuf.target(&channel_target(&self.settings.channel)).await? {
                    None => None,
                    Some(info) => {
                        let ch: Channel = serde_json::from_slice(&tuf.fetch_target(&info).await?)
                            .map_err(|e| TufError::Malformed { role: "channel".into(), message: e.to_string() })?;
                        ch.boards.get(&self.settings.board).cloned()
                    }
                };
                let d = decide(entry.as_ref(), &running, &p.failed, &self.device_id(), state::now());
                self.dir.save(&p)?;
                match d {
                    Decision::Install { image, version } => (image, version),
                    other => return Ok((CheckOutcome::Decision(other), None)),
                }
            }
        };
        let floor = self.floor(&p);
        let plan = self.plan(&mut tuf, &image, &version, floor).await?;
        self.dir.save(&p)?;
        Ok((CheckOutcome::Install(format!("{image} {version}")), Some(plan)))
    }

    fn target_slot(&self) -> Result<Slot, AgentError> {
        Ok(self.boot.booted_slot()?.other())
    }

    fn staging(&self) -> PathBuf {
        self.settings.state_dir.join("staging")
    }

    fn dest(&self, kind: ArtifactKind, name: &str, target: Slot) -> PathBuf {
        match kind {
            ArtifactKind::RootImage => self.settings.root[&target].clone(),
            ArtifactKind::VerityTree => self.settings.verity[&target].clone(),
            ArtifactKind::BootFile => self.staging().join(name),
        }
    }

    /// The running slot's dm-verity root hash (what deltas are made from).
    fn booted_roothash(&self) -> Option<String> {
        let cmdline = std::fs::read_to_string(self.root.join("proc/cmdline")).ok()?;
        cmdline.split_whitespace().find_map(|a| a.strip_prefix("roothash=")).map(String::from)
    }

    /// How to write artifact `i`: a delta from the running release, else the block index,
    /// else (None) the full download.
    fn choose_via(&self, plan: &Plan, i: usize) -> Option<Via> {
        let a = plan.manifest.artifacts.get(i)?;
        let m = &plan.manifest;
        let d = self
            .booted_roothash()
            .and_then(|h| m.delta_from(&a.name, &h))
            .filter(|d| plan.sources.contains_key(&d.target))
            .or_else(|| m.index_for(&a.name).filter(|d| plan.sources.contains_key(&d.target)))?;
        Some(Via { kind: d.kind.clone(), file: d.target.clone(), applied: 0 })
    }

    /// Write one artifact through its delta or index. `Unusable` means: download in full.
    #[allow(clippy::too_many_arguments)]
    async fn write_via(
        &self,
        plan: &Plan,
        i: usize,
        via: &Via,
        offset: u64,
        target: Slot,
        p: &Persistent,
        got: &mut u64,
    ) -> Result<Option<Vec<u8>>, DeltaError> {
        let a = &plan.manifest.artifacts[i];
        let d = plan
            .manifest
            .deltas
            .iter()
            .find(|d| d.target == via.file)
            .ok_or_else(|| DeltaError::Unusable(format!("the manifest names no {}", via.file)))?;
        let (_, url) = &plan.sources[&d.target];
        let file = self.staging().join(&d.target);
        let state = |offset: u64, applied: u64| State::Downloading {
            manifest: Box::new(plan.manifest.clone()),
            target,
            artifact: i,
            offset,
            via: Some(Via { applied, ..via.clone() }),
        };
        let job = install::Job { what: &d.target, url, dest: &file, size: d.size, sha256: &d.sha256, start: offset };
        let opts = install::Options { rate_limit: self.settings.rate_limit, retries: 12 };
        let mut persisted = p.clone();
        let dir = self.dir.clone();
        let mut save = |st: State| {
            persisted.state = st;
            if let Err(e) = dir.save(&persisted) {
                tracing::warn!("could not persist install progress: {e}");
            }
        };
        let stats = install::download(&self.http, &job, &opts, |done| save(state(done, via.applied))).await.map_err(
            |e| match e {
                InstallError::Network { .. } => DeltaError::Network(e.to_string()),
                e => DeltaError::Unusable(e.to_string()),
            },
        )?;
        *got += stats.received;
        let booted = target.other();
        let source = match a.kind {
            ArtifactKind::VerityTree => self.settings.verity[&booted].clone(),
            ArtifactKind::RootImage => self.settings.root[&booted].clone(),
            ArtifactKind::BootFile => self
                .running_boot_file(plan, i, target)
                .ok_or_else(|| DeltaError::Unusable(format!("slot {booted} has no boot file where {} goes", a.name)))?,
        };
        let source = &source;
        let dest = self.dest(a.kind, &a.name, target);
        let release = ReleaseArtifact { ..a.clone() };
        match (&d.kind, &d.from) {
            (DeltaKind::Delta, Some(from)) => {
                tracing::info!(
                    "{}: building it in slot {target} from slot {booted} ({}) and a {}-byte delta",
                    a.name,
                    from.version,
                    d.size
                );
                delta::apply_delta(&file, &release, from, source, &dest, via.applied, |b| save(state(d.size, b)))?;
            }
            (DeltaKind::Index, _) => {
                let idx = delta::read_index(&file, &release)?;
                let want = delta::plan_index(&idx, source)?;
                // Worth it only if most of the artifact is already here.
                if want.fetch_bytes > a.size / 2 {
                    return Err(DeltaError::Unusable(format!(
                        "slot {booted} has only {}% of its blocks",
                        100 - want.fetch_bytes * 100 / a.size.max(1)
                    )));
                }
                tracing::info!(
                    "{}: building it in slot {target} from slot {booted}'s blocks and {} bytes in {} ranges",
                    a.name,
                    want.fetch_bytes,
                    want.fetch_ranges
                );
                *got += delta::apply_index(
                    &self.http,
                    url_of(plan, &a.name)?,
                    &idx,
                    &want,
                    source,
                    &dest,
                    via.applied,
                    |b| save(state(d.size, b)),
                )
                .await?;
            }
            (DeltaKind::Delta, None) => {
                return Err(DeltaError::Unusable(format!("{} names no source release", d.target)))
            }
        }
        // The read-back check of a rebuilt root image also hashes its blocks for dm-verity:
        // the hash tree is then computed here, not downloaded.
        let params = plan.manifest.verity.as_ref().filter(|_| a.kind == ArtifactKind::RootImage);
        delta::verify(&a.name, &dest, a.size, &a.sha256, params, Some(&plan.manifest.roothash))
    }

    /// The running slot's counterpart of boot file `i` of `target` (slot-a/uki.efi for
    /// slot-b/uki.efi), on the boot partition.
    fn running_boot_file(&self, plan: &Plan, i: usize, target: Slot) -> Option<PathBuf> {
        let a = &plan.manifest.artifacts[i];
        let f = plan.manifest.slots.get(&target)?.files.iter().find(|f| f.artifact == a.name)?;
        let rest = f.path.strip_prefix(&target.boot_dir())?;
        Some(self.settings.boot_dir.join(format!("{}{rest}", target.other().boot_dir()).trim_start_matches('/')))
    }

    /// A boot file the running slot already has (same sha256): copy it instead of
    /// downloading it.
    fn copy_local(&self, plan: &Plan, i: usize, target: Slot, dest: &Path) -> bool {
        let a = &plan.manifest.artifacts[i];
        let Some(have) = self.running_boot_file(plan, i, target) else { return false };
        let same = std::fs::metadata(&have).is_ok_and(|m| m.len() == a.size)
            && install::verify(&a.name, &have, a.size, &a.sha256).is_ok()
            && crate::fsutil::copy_synced(&have, dest).is_ok();
        if same {
            tracing::info!(
                "{}: the same file as slot {}'s, copied ({} bytes not downloaded)",
                a.name,
                target.other(),
                a.size
            );
        }
        same
    }

    /// Write a planned release into the inactive slot and stage it. Resumes a persisted
    /// Downloading/Verified state for the same release.
    pub async fn install(&mut self, plan: &Plan) -> Result<(), AgentError> {
        let mut p = self.dir.load()?;
        let target = self.target_slot()?;
        let rel = ReleaseRef::of(&plan.manifest);
        let state = |artifact: usize, offset: u64, via: Option<Via>| State::Downloading {
            manifest: Box::new(plan.manifest.clone()),
            target,
            artifact,
            offset,
            via,
        };
        let (mut artifact, mut offset, mut via) = match &p.state {
            State::Downloading { manifest, target: t, artifact, offset, via }
                if **manifest == plan.manifest && *t == target =>
            {
                match plan.manifest.artifacts.get(*artifact) {
                    Some(a) => tracing::info!(
                        "resuming {rel} into slot {target}: {} at byte {offset}{}",
                        a.name,
                        via.as_ref().map_or(String::new(), |v| format!(" of {} (block {} written)", v.file, v.applied))
                    ),
                    None => tracing::info!("resuming {rel} into slot {target}: all written, verifying"),
                }
                (*artifact, *offset, via.clone())
            }
            State::Verified { manifest, target: t } if **manifest == plan.manifest && *t == target => {
                (plan.manifest.artifacts.len(), 0, None)
            }
            State::Idle | State::RolledBack { .. } | State::Downloading { .. } | State::Verified { .. } => {
                // Intent first, then make the target unbootable before touching it.
                let via = self.choose_via(plan, 0);
                p.state = state(0, 0, via.clone());
                event(&mut p, EventKind::Downloading, &rel, format!("into slot {target}"));
                self.dir.save(&p)?;
                self.dir.log("downloading", &format!("{rel} into slot {target}"));
                (0, 0, via)
            }
            State::Staged { .. } => {
                return Err(AgentError::Other("an update is already staged; reboot to try it".into()))
            }
        };
        self.boot.disarm(target)?;
        p.slots.remove(&target);
        let opts = install::Options { rate_limit: self.settings.rate_limit, retries: 12 };
        // Bytes received in this run, and artifacts already read back in it.
        let mut got = 0u64;
        let mut checked = vec![false; plan.manifest.artifacts.len()];
        // The hash tree computed from a rebuilt root image, if any.
        let mut tree: Option<Vec<u8>> = None;
        while artifact < plan.manifest.artifacts.len() {
            let a = &plan.manifest.artifacts[artifact];
            let dest = self.dest(a.kind, &a.name, target);
            let mut done = !plan.manifest.needed_for(target, a); // the other slot's own UKI
            if let (false, ArtifactKind::VerityTree, Some(t)) = (done, a.kind, tree.take()) {
                match delta::write_computed(&a.name, &t, &dest, a.size, &a.sha256) {
                    Ok(()) => {
                        tracing::info!(
                            "{}: computed from the rebuilt root image ({} bytes not downloaded)",
                            a.name,
                            a.size
                        );
                        (done, checked[artifact]) = (true, true);
                    }
                    Err(why) => tracing::warn!("{}: {why}; fetching it", a.name),
                }
            }
            if let (false, Some(v)) = (done, via.take()) {
                match self.write_via(plan, artifact, &v, offset, target, &p, &mut got).await {
                    Ok(t) => {
                        (done, checked[artifact]) = (true, true);
                        tree = tree.or(t);
                    }
                    Err(DeltaError::Network(message)) => {
                        return Err(InstallError::Network { url: v.file.clone(), message }.into())
                    }
                    Err(DeltaError::Unusable(why)) => {
                        tracing::warn!("{}: {} not usable ({why}); downloading it in full", a.name, v.file);
                        self.dir.log("delta-refused", &format!("{}: {why}", v.file));
                        offset = 0;
                        p.state = state(artifact, 0, None);
                        self.dir.save(&p)?;
                    }
                }
            }
            if !done
                && offset == 0
                && a.kind == ArtifactKind::BootFile
                && self.copy_local(plan, artifact, target, &dest)
            {
                done = true;
            }
            if !done {
                let url = url_of(plan, &a.name).map_err(|e| AgentError::Other(e.to_string()))?;
                let job =
                    install::Job { what: &a.name, url, dest: &dest, size: a.size, sha256: &a.sha256, start: offset };
                let dir = self.dir.clone();
                let mut persisted = p.clone();
                let stats = install::download(&self.http, &job, &opts, |done| {
                    persisted.state = state(artifact, done, None);
                    if let Err(e) = dir.save(&persisted) {
                        tracing::warn!("could not persist download progress: {e}");
                    }
                })
                .await?;
                got += stats.received;
            }
            artifact += 1;
            offset = 0;
            via = self.choose_via(plan, artifact);
            p.state = state(artifact, 0, via.clone());
            self.dir.save(&p)?;
        }
        for (i, a) in plan.manifest.artifacts.iter().enumerate() {
            if plan.manifest.needed_for(target, a) && !checked[i] {
                install::verify(&a.name, &self.dest(a.kind, &a.name, target), a.size, &a.sha256)?;
            }
        }
        let full = plan.manifest.download_size_for(target);
        tracing::info!(
            "{rel}: {got} bytes downloaded in this run ({:.2}% of the {full} of a full download)",
            got as f64 * 100.0 / full.max(1) as f64
        );
        self.dir.log("downloaded", &format!("{got} of {full} bytes"));
        p.state = State::Verified { manifest: Box::new(plan.manifest.clone()), target };
        self.dir.save(&p)?;
        self.dir.log("verified", &format!("{rel} in slot {target}"));

        // Only now does the slot become bootable, as its own step.
        let sb = &plan.manifest.slots[&target];
        let files = BootFiles {
            cmdline: sb.cmdline.clone(),
            files: sb.files.iter().map(|f| (self.staging().join(&f.artifact), f.path.clone())).collect(),
            title: format!("{} {}", plan.manifest.image, plan.manifest.version),
        };
        self.boot.stage(target, &files, self.settings.tries)?;
        p.slots.insert(target, rel.clone());
        p.state = State::Staged {
            manifest: Box::new(plan.manifest.clone()),
            target,
            boot_id: state::boot_id(&self.root),
            staged_at: state::now(),
            reboot_started: false,
        };
        event(&mut p, EventKind::Installed, &rel, format!("slot {target} armed for one try"));
        self.dir.save(&p)?;
        self.dir.log("staged", &format!("{rel} in slot {target}"));
        let _ = std::fs::remove_dir_all(self.staging());
        Ok(())
    }

    /// After a boot: commit bookkeeping, detect a fallback, clean up an interrupted install.
    pub fn reconcile(&mut self) -> Result<String, AgentError> {
        let mut p = self.dir.load()?;
        self.sync_tpm_floor(&p);
        let booted = self.boot.booted_slot()?;
        let msg = match p.state.clone() {
            State::Staged { manifest, target, boot_id, reboot_started, .. } => {
                let rel = ReleaseRef::of(&manifest);
                if boot_id == state::boot_id(&self.root) {
                    format!("{rel} staged in slot {target}, waiting for the reboot")
                } else if booted != target && !reboot_started && self.boot.trial_reboot_arg().is_some() {
                    // The trial is armed by the reboot itself, and this boot was not that
                    // reboot (a power cut, or someone else's reboot): still staged.
                    if let State::Staged { boot_id, .. } = &mut p.state {
                        *boot_id = state::boot_id(&self.root);
                    }
                    self.dir.save(&p)?;
                    format!("{rel} staged in slot {target}; the reboot into it did not happen, so it is still to come")
                } else if booted == target {
                    if self.boot.is_trial()? {
                        format!("trial boot of {rel} in slot {target}: health checks decide")
                    } else {
                        // Blessed but the bookkeeping was cut short: finish it.
                        self.finish_commit(&mut p, &manifest, target)?;
                        format!("{rel} committed")
                    }
                } else {
                    let reason = format!("slot {target} did not boot or was not committed; back on slot {booted}");
                    self.record_rollback(&mut p, rel.clone(), target, &reason)?;
                    reason
                }
            }
            State::RolledBack { release, .. } => {
                p.state = State::Idle;
                self.dir.save(&p)?;
                format!("{release} was rolled back")
            }
            State::Downloading { target, .. } | State::Verified { target, .. } if target == booted => {
                // Cannot happen unless the disk was changed behind our back: start over.
                p.state = State::Idle;
                self.dir.save(&p)?;
                "install state referred to the running slot; reset".into()
            }
            s => format!("state {}", s.name()),
        };
        Ok(msg)
    }

    fn finish_commit(&self, p: &mut Persistent, manifest: &ReleaseManifest, target: Slot) -> Result<(), AgentError> {
        let rel = ReleaseRef::of(manifest);
        p.security_floor = p.security_floor.max(manifest.security_version);
        p.slots.insert(target, rel.clone());
        p.failed.retain(|f| *f != rel);
        p.state = State::Idle;
        p.last_error = None;
        event(p, EventKind::Committed, &rel, format!("slot {target}"));
        self.dir.save(p)?;
        self.sync_tpm_floor(p);
        self.dir.log("committed", &format!("{rel} in slot {target}"));
        Ok(())
    }

    fn record_rollback(
        &self,
        p: &mut Persistent,
        rel: ReleaseRef,
        target: Slot,
        reason: &str,
    ) -> Result<(), AgentError> {
        if !p.failed.contains(&rel) {
            p.failed.push(rel.clone());
        }
        p.slots.remove(&target);
        p.last_error = Some(format!("{rel}: {reason}"));
        p.state = State::RolledBack { release: rel.clone(), target, reason: reason.into() };
        event(p, EventKind::RolledBack, &rel, reason);
        self.dir.save(p)?;
        self.dir.log("rolled-back", &format!("{rel}: {reason}"));
        Ok(())
    }

    /// Commit the trial boot now (health passed, or an operator said so).
    pub fn commit(&mut self) -> Result<String, AgentError> {
        let mut p = self.dir.load()?;
        let booted = self.boot.booted_slot()?;
        if !self.boot.is_trial()? {
            return Ok(format!("slot {booted} is already committed"));
        }
        self.boot.mark_good(booted)?;
        crate::crashpoint::hit("blessed");
        match p.state.clone() {
            State::Staged { manifest, target, .. } if target == booted => {
                self.finish_commit(&mut p, &manifest, target)?;
                Ok(format!("{} {} committed in slot {booted}", manifest.image, manifest.version))
            }
            _ => Ok(format!("slot {booted} committed")),
        }
    }

    /// The trial failed: remember the release (never retried) and give the boot up.
    pub fn fail_trial(&mut self, reason: &str) -> Result<(), AgentError> {
        let mut p = self.dir.load()?;
        let booted = self.boot.booted_slot()?;
        // Before the record: a power cut between the two then boots the committed slot,
        // where reconcile records the rollback anyway.
        self.boot.give_up(booted)?;
        let rel = match &p.state {
            State::Staged { manifest, target, .. } if *target == booted => ReleaseRef::of(manifest),
            _ => self.running(&p),
        };
        self.record_rollback(&mut p, rel, booted, reason)
    }

    /// Reboot into a staged update if the policy allows it now.
    pub fn maybe_reboot(&mut self, force: bool) -> Result<bool, AgentError> {
        let mut p = self.dir.load()?;
        let State::Staged { manifest, target, boot_id, .. } = p.state.clone() else { return Ok(false) };
        if boot_id != state::boot_id(&self.root) {
            return Ok(false);
        }
        if !force {
            if self.settings.reboot_policy == RebootPolicy::Manual {
                return Ok(false);
            }
            if let Some(w) = self.settings.reboot_window {
                if !crate::config::in_window(w, minute_of_day()) {
                    return Ok(false);
                }
            }
        }
        if self.settings.drain {
            crate::k3s_drain::drain(&self.root);
        }
        let rel = ReleaseRef::of(&manifest);
        event(&mut p, EventKind::Trying, &rel, format!("rebooting into slot {target}"));
        if let State::Staged { reboot_started, .. } = &mut p.state {
            *reboot_started = true;
        }
        self.dir.save(&p)?;
        self.dir.log("rebooting", &format!("into slot {target} to try {rel}"));
        let mut cmd = self.settings.reboot_command.clone();
        // Tryboot: `systemctl reboot "0 tryboot"` passes the flag to the firmware.
        cmd.extend(self.boot.trial_reboot_arg().map(String::from));
        let status = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .status()
            .map_err(|e| AgentError::Other(format!("{}: {e}", cmd.join(" "))))?;
        if !status.success() {
            return Err(AgentError::Other(format!("{} failed: {status}", cmd.join(" "))));
        }
        Ok(true)
    }
}

fn minute_of_day() -> u32 {
    // Local time as the system has it (systemd sets TZ from /etc/localtime).
    let t = time::OffsetDateTime::now_local().unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    t.hour() as u32 * 60 + t.minute() as u32
}
