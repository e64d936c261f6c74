//! The server's view of the TUF repository: channels, releases and metadata expiry, read
//! through tough exactly as a client would (signatures checked; expired metadata shown, not
//! refused, since showing it is the point). Reloaded when `timestamp.json` changes (someone
//! ran `edgeimg publish` or `edgeimg rollout`) and right after the server's own writes.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, RwLock};

use edgeimg_proto::channel::Channel;
use edgeimg_proto::release::{ReleaseManifest, SEP};
use edgeimg_release::keys::ROLLOUT_ROLE;
use edgeimg_release::Repo;
use futures_util::TryStreamExt;
use serde::Serialize;
use tough::{Repository, TargetName};

/// One published release (a manifest signed by the offline targets role).
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub image: String,
    pub board: String,
    pub version: String,
    pub manifest_target: String,
    /// None if the manifest could not be read (the error is in `RepoView::error`).
    pub manifest: Option<ReleaseManifest>,
}

/// Version and expiry of one metadata role.
#[derive(Debug, Clone, Serialize)]
pub struct RoleInfo {
    pub role: &'static str,
    pub version: u64,
    /// Unix seconds.
    pub expires: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepoView {
    /// Unix seconds of the load.
    pub loaded_at: i64,
    /// Why the repository could not be read (then the rest is empty).
    pub error: Option<String>,
    pub channels: BTreeMap<String, Channel>,
    pub releases: Vec<Release>,
    pub roles: Vec<RoleInfo>,
}

impl RepoView {
    pub fn role(&self, name: &str) -> Option<&RoleInfo> {
        self.roles.iter().find(|r| r.role == name)
    }

    pub fn release(&self, image: &str, board: &str, version: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.image == image && r.board == board && r.version == version)
    }
}

/// Identity of `timestamp.json` on disk: it is replaced by rename on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(repo: &Repo) -> Option<Stamp> {
    let m = std::fs::metadata(repo.metadata_dir().join("timestamp.json")).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

pub struct ViewCell {
    current: RwLock<Arc<RepoView>>,
    stamp: Mutex<Option<Stamp>>,
    /// Release manifests never change once published: read each once.
    manifests: Mutex<HashMap<String, ReleaseManifest>>,
    loading: tokio::sync::Mutex<()>,
}

impl Default for ViewCell {
    fn default() -> Self {
        Self {
            current: RwLock::new(Arc::new(RepoView::default())),
            stamp: Mutex::new(None),
            manifests: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
        }
    }
}

impl ViewCell {
    pub fn get(&self) -> Arc<RepoView> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Read the repository again now.
    pub async fn reload(&self, repo: &Repo, now: i64) -> Arc<RepoView> {
        let _one = self.loading.lock().await;
        let st = stamp(repo);
        let view = match self.load(repo, now).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cannot read the repository {}: {e}", repo.dir.display());
                RepoView { loaded_at: now, error: Some(e), ..Default::default() }
            }
        };
        let view = Arc::new(view);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = view.clone();
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = st;
        view
    }

    /// Reload if `timestamp.json` changed since the last load.
    pub async fn reload_if_changed(&self, repo: &Repo, now: i64) {
        let changed = *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) != stamp(repo);
        if changed {
            self.reload(repo, now).await;
        }
    }

    async fn load(&self, repo: &Repo, now: i64) -> Result<RepoView, String> {
        let r = repo.load().await.map_err(|e| edgeimg_release::chain(&e))?;
        let mut roles = vec![
            RoleInfo {
                role: "root",
                version: r.root().signed.version.get(),
                expires: r.root().signed.expires.as_second(),
            },
            RoleInfo {
                role: "targets",
                version: r.targets().signed.version.get(),
                expires: r.targets().signed.expires.as_second(),
            },
        ];
        let rollout = r.delegated_role(ROLLOUT_ROLE).and_then(|d| d.targets.as_ref());
        if let Some(t) = rollout {
            roles.push(RoleInfo {
                role: "rollout",
                version: t.signed.version.get(),
                expires: t.signed.expires.as_second(),
            });
        }
        roles.push(RoleInfo {
            role: "snapshot",
            version: r.snapshot().signed.version.get(),
            expires: r.snapshot().signed.expires.as_second(),
        });
        roles.push(RoleInfo {
            role: "timestamp",
            version: r.timestamp().signed.version.get(),
            expires: r.timestamp().signed.expires.as_second(),
        });

        let mut errors = Vec::new();
        let mut channels = BTreeMap::new();
        let names: Vec<String> = rollout
            .map(|t| t.signed.targets.keys().filter_map(|n| channel_name(n.raw())).collect())
            .unwrap_or_default();
        for name in names {
            match edgeimg_release::rollout::read_channel(&r, &name).await {
                Ok(Some(c)) => {
                    channels.insert(name, c);
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("channel {name}: {e}")),
            }
        }

        let mut releases = Vec::new();
        let mut targets: Vec<&str> = r.targets().signed.targets.keys().map(|t| t.raw()).collect();
        targets.sort();
        for t in targets {
            let parts: Vec<&str> = t.split(SEP).collect();
            if parts.len() != 4 || parts[3] != "release.json" {
                continue;
            }
            let cached = self.manifests.lock().unwrap_or_else(|p| p.into_inner()).get(t).cloned();
            let manifest = match cached {
                Some(m) => Some(m),
                None => match read_manifest(&r, t).await {
                    Ok(m) => {
                        self.manifests.lock().unwrap_or_else(|p| p.into_inner()).insert(t.to_string(), m.clone());
                        Some(m)
                    }
                    Err(e) => {
                        errors.push(format!("release manifest {t}: {e}"));
                        None
                    }
                },
            };
            releases.push(Release {
                image: parts[0].into(),
                board: parts[1].into(),
                version: parts[2].into(),
                manifest_target: t.into(),
                manifest,
            });
        }
        releases.sort_by(|a, b| {
            (&a.board, &a.image)
                .cmp(&(&b.board, &b.image))
                .then(edgeimg_proto::release::compare_versions(&a.version, &b.version))
        });
        Ok(RepoView {
            loaded_at: now,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            channels,
            releases,
            roles,
        })
    }
}

/// `channel~<name>.json` → `<name>`.
fn channel_name(target: &str) -> Option<String> {
    let rest = target.strip_prefix("channel")?.strip_prefix(SEP)?;
    rest.strip_suffix(".json").map(String::from)
}

async fn read_manifest(r: &Repository, name: &str) -> Result<ReleaseManifest, String> {
    let tn = TargetName::new(name).map_err(|e| e.to_string())?;
    let stream = r.read_target(&tn).await.map_err(|e| edgeimg_release::chain(&e))?.ok_or("not in the repository")?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.map_err(|e| edgeimg_release::chain(&e))?;
    serde_json::from_slice(&chunks.concat()).map_err(|e| format!("not a release manifest: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert_eq!(channel_name("channel~stable.json").as_deref(), Some("stable"));
        assert_eq!(channel_name("channel~a-b_c.json").as_deref(), Some("a-b_c"));
        assert_eq!(channel_name("edge~qemu~1.0.0~release.json"), None);
        assert_eq!(channel_name("channelstable.json"), None);
    }
}
