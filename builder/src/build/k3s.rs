//! K3s in the image: the pinned binary, the upstream airgap archive, the recipe's images
//! (pulled by digest into one OCI archive), config, manifests and the systemd units.
//!
//! Layout on the device:
//! - read-only, verity-protected: `/usr/local/bin/k3s`, `/etc/rancher/k3s/*.yaml`,
//!   archives in `/usr/lib/edgeimg/k3s/images/`, manifests in `/usr/lib/edgeimg/k3s/manifests/`;
//! - on /data (through /var): the K3s data dir `/var/lib/rancher/k3s`; at every boot
//!   `edgeimg-updater k3s-prepare` links this release's archives into `agent/images`,
//!   syncs the manifests, and turns the provisioning file into K3s's environment.

use std::path::{Path, PathBuf};
use std::time::Instant;

use edgeimg_proto::k3s::{DeviceK3s, ARCHIVE_DIR, DEVICE_FILE, MANIFEST_DIR};

use crate::config::k3s::{K3s, Role};
use crate::config::LoadedRecipe;
use crate::download::{self, DownloadError};
use crate::fsutil::{in_root, write_file, write_symlink};
use crate::oci::archive::{self, ArchiveInfo};
use crate::oci::lock::{self, LockError, LockFile};
use crate::oci::pull::{PullError, Puller};
use crate::oci::ImageRef;
use crate::progress::{Reporter, ReporterExt};
use crate::sbom::Component;

pub const DATA_DIR: &str = "/var/lib/rancher/k3s";

#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    #[error("the recipe pins no K3s binary for {arch}: add sha256.{arch} to [k3s]")]
    NoPin { arch: String },
    #[error("k3s.airgap_images is true but k3s.airgap_sha256 has no {arch} entry: pin the airgap archive or set airgap_images = false")]
    NoAirgapPin { arch: String },
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Helm(#[from] super::helm::HelmError),
    #[error(transparent)]
    Gitops(#[from] super::gitops::GitopsError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> K3sError {
    let what = what.into();
    move |source| K3sError::Io { what, source }
}

/// Everything fetched for K3s, ready to be installed into a tree.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub binary: PathBuf,
    pub binary_sha256: String,
    pub airgap: Option<(PathBuf, String, String)>,
    pub images: Option<(PathBuf, ArchiveInfo)>,
    /// `[[helm]]` charts, downloaded and checked.
    pub charts: Vec<super::helm::Fetched>,
    /// The `[gitops]` agent's install manifest, downloaded and checked.
    pub gitops: Option<super::gitops::Fetched>,
    pub download_seconds: f64,
    pub pull_seconds: f64,
}

/// Where fetching works: cache, plain-HTTP registries, scratch space, timestamp, progress.
pub struct FetchEnv<'a> {
    pub cache: &'a Path,
    pub insecure: &'a [String],
    pub work: &'a Path,
    pub epoch: u64,
    pub rep: &'a dyn Reporter,
}

/// Download and verify the K3s artifacts, pull the images. Network happens here only.
pub fn fetch(k3s: &K3s, recipe: &LoadedRecipe, arch: &str, env: &FetchEnv<'_>) -> Result<Fetched, K3sError> {
    let FetchEnv { cache, insecure, work, epoch, rep } = *env;
    let rt = crate::net::runtime();
    let client = crate::net::client();
    let t = Instant::now();
    let sha = k3s.sha256.get(arch).ok_or_else(|| K3sError::NoPin { arch: arch.into() })?;
    let asset = K3s::binary_asset(arch);
    let (binary, _) = rt.block_on(download::fetch(
        &client,
        &format!("K3s {} binary ({asset})", k3s.version),
        &k3s.asset_url(&asset),
        sha,
        cache,
        |d, t| rep.progress("k3s", d, t),
    ))?;
    let airgap = if k3s.airgap_images {
        let sha = k3s.airgap_sha256.get(arch).ok_or_else(|| K3sError::NoAirgapPin { arch: arch.into() })?;
        let asset = K3s::airgap_asset(arch);
        let (p, _) = rt.block_on(download::fetch(
            &client,
            &format!("K3s {} airgap images ({asset})", k3s.version),
            &k3s.asset_url(&asset),
            sha,
            cache,
            |d, t| rep.progress("k3s", d, t),
        ))?;
        // Versioned name: K3s's import cache is keyed by path.
        Some((p, format!("k3s-airgap-images-{arch}-{}.tar.zst", &sha[..16]), sha.clone()))
    } else {
        None
    };
    let mut charts = Vec::new();
    for (i, h) in recipe.recipe.helm.iter().enumerate() {
        let archive = if h.chart.starts_with("oci://") {
            let r = h.oci_ref().expect("validated with the recipe");
            let puller = Puller::new(cache, &Puller::insecure_list(insecure, std::slice::from_ref(&r)))?;
            rt.block_on(puller.pull_chart(&r, &h.sha256))?
        } else {
            rt.block_on(download::fetch(
                &client,
                &format!("Helm chart {} {} (helm[{i}])", h.name, h.version),
                &h.chart,
                &h.sha256,
                cache,
                |d, t| rep.progress("k3s", d, t),
            ))?
            .0
        };
        let values = h.values_text(&recipe.dir).map_err(io(format!("reading helm[{i}].values_file")))?;
        charts.push(super::helm::check(i, h, &archive, &values)?);
    }
    let gitops = match &recipe.recipe.gitops {
        Some(g) => {
            let (install, _) = rt.block_on(download::fetch(
                &client,
                &format!("GitOps agent ({}) install manifest", g.agent),
                &g.install,
                &g.sha256,
                cache,
                |d, t| rep.progress("k3s", d, t),
            ))?;
            Some(super::gitops::check(g, &install)?)
        }
        None => None,
    };
    let download_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let wanted = all_images(k3s, recipe);
    let images = if wanted.is_empty() {
        None
    } else {
        let refs: Vec<ImageRef> =
            wanted.iter().map(|r| ImageRef::parse(r).expect("validated with the recipe")).collect();
        let lock_path = lock::path_for(&recipe.source.path);
        let lockfile = LockFile::load(&lock_path)?;
        let pinned = LockFile::pin(lockfile.as_ref(), &refs, &recipe.source.path)?;
        let puller = Puller::new(cache, &Puller::insecure_list(insecure, &pinned))?;
        let mut pulled = Vec::new();
        for (i, r) in pinned.iter().enumerate() {
            rep.output("images", &format!("[{}/{}] {r}", i + 1, pinned.len()));
            pulled.push(rt.block_on(puller.pull(r, arch))?);
        }
        let dir = work.join("k3s-images");
        std::fs::create_dir_all(&dir).map_err(io("creating the image archive directory"))?;
        let info = archive::write(&dir, &pulled, &cache.join("blobs").join("sha256"), epoch)
            .map_err(io("writing the image archive"))?;
        Some((dir.join(&info.file_name), info))
    };
    Ok(Fetched {
        binary,
        binary_sha256: sha.clone(),
        airgap,
        images,
        charts,
        gitops,
        download_seconds,
        pull_seconds: t.elapsed().as_secs_f64(),
    })
}

/// Every image to pre-pull: `k3s.images`, the charts' and the GitOps agent's, each once.
pub fn all_images(k3s: &K3s, recipe: &LoadedRecipe) -> Vec<String> {
    let mut v: Vec<String> = k3s.images.clone();
    let more = recipe
        .recipe
        .helm
        .iter()
        .flat_map(|h| h.images.iter())
        .chain(recipe.recipe.gitops.iter().flat_map(|g| g.images.iter()));
    for i in more {
        if !v.contains(i) {
            v.push(i.clone());
        }
    }
    v
}

fn k3s_unit(k3s: &K3s) -> String {
    let mut args = vec![k3s.role.subcommand().to_string()];
    for a in &k3s.extra_args {
        // systemd's ExecStart quoting: double quotes, backslash-escaped.
        if a.contains([' ', '"', '\\', '\'']) {
            args.push(format!("\"{}\"", a.replace('\\', "\\\\").replace('"', "\\\"")));
        } else {
            args.push(a.clone());
        }
    }
    format!(
        "# Written by edgeimg: K3s {version}, baked into this release.\n\
         [Unit]\n\
         Description=Lightweight Kubernetes (K3s {version})\n\
         Documentation=https://docs.k3s.io\n\
         # State lives on /data; the clock must not be before the release (certificates).\n\
         RequiresMountsFor={DATA_DIR}\n\
         Wants=network-online.target\n\
         After=network-online.target time-set.target edgeimg-k3s-prepare.service\n\
         Requires=edgeimg-k3s-prepare.service\n\
         \n\
         [Service]\n\
         Type=notify\n\
         EnvironmentFile=-/run/edgeimg/k3s.env\n\
         KillMode=process\n\
         Delegate=yes\n\
         LimitNOFILE=1048576\n\
         LimitNPROC=infinity\n\
         LimitCORE=infinity\n\
         TasksMax=infinity\n\
         # The first start on a slow SD card imports every image archive before the\n\
         # kubelet runs: no start timeout, and no watchdog killing it half-way.\n\
         TimeoutStartSec=0\n\
         Restart=always\n\
         RestartSec=5s\n\
         ExecStartPre=-/sbin/modprobe br_netfilter\n\
         ExecStartPre=-/sbin/modprobe overlay\n\
         ExecStart=/usr/local/bin/k3s {args}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        version = k3s.version,
        args = args.join(" "),
    )
}

const PREPARE_UNIT: &str = "# Written by edgeimg.\n\
[Unit]\n\
Description=Prepare K3s: link this release's images, sync manifests, apply provisioning\n\
DefaultDependencies=no\n\
RequiresMountsFor=/var/lib\n\
After=local-fs.target edgeimg-provision.service\n\
Wants=edgeimg-provision.service\n\
Before=k3s.service\n\
\n\
[Service]\n\
Type=oneshot\n\
RemainAfterExit=yes\n\
ExecStart=/usr/bin/edgeimg-updater k3s-prepare\n";

/// What the install step put into the image, for the report and SBOM.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Installed {
    pub version: String,
    pub role: Role,
    pub binary_sha256: String,
    pub binary_bytes: u64,
    pub airgap: Option<serde_json::Value>,
    pub images: Option<ArchiveInfo>,
    pub import_cache: bool,
    pub manifests: Vec<String>,
    /// `[[helm]]` charts: name, chart, version, archive sha256, the images their values name.
    pub charts: Vec<serde_json::Value>,
    /// The GitOps agent: install manifest sha256, repository, branch, path, auth, images.
    pub gitops: Option<serde_json::Value>,
    pub download_seconds: f64,
    pub pull_seconds: f64,
}

/// Put K3s into a root tree.
pub fn install(tree: &Path, k3s: &K3s, recipe: &LoadedRecipe, f: &Fetched) -> Result<Installed, K3sError> {
    let bin = std::fs::read(&f.binary).map_err(io("reading the cached K3s binary"))?;
    write_file(tree, "/usr/local/bin/k3s", &bin, 0o755).map_err(io("installing k3s"))?;
    for tool in ["kubectl", "crictl", "ctr"] {
        // Like K3s's installer: only where the system has no such command of its own.
        if !in_root(tree, &format!("/usr/bin/{tool}")).exists() {
            write_symlink(tree, &format!("/usr/local/bin/{tool}"), "k3s").map_err(io("linking k3s tools"))?;
        }
    }
    let mut archives = Vec::new();
    let mut airgap_info = None;
    if let Some((p, name, sha)) = &f.airgap {
        let bytes = std::fs::read(p).map_err(io("reading the airgap archive"))?;
        write_file(tree, &format!("{ARCHIVE_DIR}/{name}"), &bytes, 0o644)
            .map_err(io("installing the airgap archive"))?;
        airgap_info = Some(serde_json::json!({"file": name, "sha256": sha, "bytes": bytes.len()}));
        archives.push(name.clone());
    }
    if let Some((p, info)) = &f.images {
        std::fs::create_dir_all(in_root(tree, ARCHIVE_DIR)).map_err(io("creating the archive directory"))?;
        std::fs::copy(p, in_root(tree, &format!("{ARCHIVE_DIR}/{}", info.file_name)))
            .map_err(io("installing the image archive"))?;
        archives.push(info.file_name.clone());
    }

    let mut manifests = Vec::new();
    std::fs::create_dir_all(in_root(tree, MANIFEST_DIR)).map_err(io("creating the manifest directory"))?;
    for m in &k3s.manifests {
        let src = recipe.dir.join(m);
        let text = std::fs::read(&src).map_err(io(format!("reading manifest {}", src.display())))?;
        let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        write_file(tree, &format!("{MANIFEST_DIR}/{name}"), &text, 0o644).map_err(io("installing a manifest"))?;
        manifests.push(name);
    }
    for c in &f.charts {
        let bytes = std::fs::read(&c.archive).map_err(io("reading a cached chart"))?;
        let name = format!("helm-{}.yaml", c.helm.name);
        write_file(tree, &format!("{MANIFEST_DIR}/{name}"), super::helm::manifest(c, &bytes), 0o644)
            .map_err(io("installing a HelmChart manifest"))?;
        manifests.push(name);
    }
    if let Some(g) = &f.gitops {
        let bytes = std::fs::read(&g.install).map_err(io("reading the cached GitOps install manifest"))?;
        write_file(tree, &format!("{MANIFEST_DIR}/flux-install.yaml"), &bytes, 0o644)
            .map_err(io("installing the GitOps agent"))?;
        write_file(tree, &format!("{MANIFEST_DIR}/flux-sync.yaml"), super::gitops::sync_manifest(&g.gitops), 0o644)
            .map_err(io("installing the GitOps sync manifest"))?;
        manifests.extend(["flux-install.yaml".to_string(), "flux-sync.yaml".to_string()]);
    }
    manifests.sort();

    let import_cache = k3s.import_cache_enabled();
    let device = DeviceK3s {
        version: k3s.version.clone(),
        role: serde_json::to_value(k3s.role).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        data_dir: DATA_DIR.into(),
        archives,
        import_cache,
        manifests: manifests.clone(),
        gitops_auth: f.gitops.as_ref().map(|g| g.gitops.auth.clone()).filter(|a| a != "none"),
    };
    let mut json = serde_json::to_vec_pretty(&device).map_err(|e| io("k3s.json")(std::io::Error::other(e)))?;
    json.push(b'\n');
    write_file(tree, DEVICE_FILE, json, 0o644).map_err(io("writing k3s.json"))?;

    let etc = |p: &str, text: &str| write_file(tree, p, text, 0o644).map_err(io(format!("writing {p}")));
    if !k3s.config.trim().is_empty() {
        etc("/etc/rancher/k3s/config.yaml", &k3s.config)?;
    }
    if !k3s.registries.trim().is_empty() {
        etc("/etc/rancher/k3s/registries.yaml", &k3s.registries)?;
    }
    // Loaded after config.yaml (config.yaml.d is read in lexical order, later wins).
    etc(
        "/etc/rancher/k3s/config.yaml.d/90-edgeimg.yaml",
        &format!(
            "# Written by edgeimg: /etc is read-only, K3s state lives on the data partition.\n\
             data-dir: {DATA_DIR}\n\
             write-kubeconfig: {DATA_DIR}/k3s.yaml\n"
        ),
    )?;
    // `k3s kubectl` looks here first; the node password must persist with the data dir.
    write_symlink(tree, "/etc/rancher/k3s/k3s.yaml", &format!("{DATA_DIR}/k3s.yaml"))
        .map_err(io("linking the kubeconfig"))?;
    write_symlink(tree, "/etc/rancher/node", "/var/lib/rancher/node").map_err(io("linking /etc/rancher/node"))?;
    etc("/etc/modules-load.d/k3s.conf", "overlay\nbr_netfilter\n")?;
    etc("/usr/lib/systemd/system/k3s.service", &k3s_unit(k3s))?;
    etc("/usr/lib/systemd/system/edgeimg-k3s-prepare.service", PREPARE_UNIT)?;
    etc(
        "/usr/lib/tmpfiles.d/edgeimg-k3s.conf",
        "d /var/lib/rancher 0755 root root -\nd /var/lib/rancher/node 0700 root root -\n",
    )?;

    Ok(Installed {
        version: k3s.version.clone(),
        role: k3s.role,
        binary_sha256: f.binary_sha256.clone(),
        binary_bytes: bin.len() as u64,
        airgap: airgap_info,
        images: f.images.as_ref().map(|(_, i)| i.clone()),
        import_cache,
        manifests,
        charts: f
            .charts
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.helm.name, "chart": c.info.name, "version": c.info.version,
                    "sha256": c.helm.sha256, "namespace": c.helm.namespace, "images": c.images_found,
                    "url": c.helm.chart,
                })
            })
            .collect(),
        gitops: f.gitops.as_ref().map(|g| {
            serde_json::json!({
                "agent": g.gitops.agent, "install": g.gitops.install, "sha256": g.gitops.sha256,
                "repository": g.gitops.repository, "branch": g.gitops.branch, "path": g.gitops.path,
                "auth": g.gitops.auth, "images": g.images_found,
            })
        }),
        download_seconds: f.download_seconds,
        pull_seconds: f.pull_seconds,
    })
}

/// SBOM entries for K3s, its airgap archive and every pre-pulled image.
pub fn sbom_components(k3s: &K3s, arch: &str, i: &Installed) -> Vec<Component> {
    let mut v = vec![Component {
        name: "k3s".into(),
        version: k3s.version.clone(),
        purl: format!("pkg:github/k3s-io/k3s@{}", k3s.version.replace('+', "%2B")),
        sha256: Some(i.binary_sha256.clone()),
        download: Some(k3s.asset_url(&K3s::binary_asset(arch))),
    }];
    if let Some(a) = &i.airgap {
        v.push(Component {
            name: K3s::airgap_asset(arch),
            version: k3s.version.clone(),
            purl: format!("pkg:github/k3s-io/k3s@{}#{}", k3s.version.replace('+', "%2B"), K3s::airgap_asset(arch)),
            sha256: a["sha256"].as_str().map(String::from),
            download: Some(k3s.asset_url(&K3s::airgap_asset(arch))),
        });
    }
    if let Some(info) = &i.images {
        for img in &info.images {
            let r = ImageRef::parse(&img.reference).expect("archived references are valid");
            let (repo_last, namespace) = match r.repository.rsplit_once('/') {
                Some((ns, last)) => (last.to_string(), ns.to_string()),
                None => (r.repository.clone(), String::new()),
            };
            let mut purl = format!(
                "pkg:oci/{repo_last}@{}?repository_url={}/{}",
                img.digest.replace(':', "%3A"),
                r.registry,
                r.repository
            );
            if let Some(t) = &r.tag {
                purl.push_str(&format!("&tag={t}"));
            }
            let _ = namespace;
            v.push(Component {
                name: r.name(),
                version: r.tag.clone().unwrap_or_else(|| img.digest.clone()),
                purl,
                sha256: Some(img.digest.trim_start_matches("sha256:").to_string()),
                download: None,
            });
        }
    }
    if let Some(g) = &i.gitops {
        v.push(Component {
            name: format!("{} install manifest", g["agent"].as_str().unwrap_or("gitops")),
            version: g["sha256"].as_str().unwrap_or_default().chars().take(12).collect(),
            purl: format!("pkg:generic/{}-install", g["agent"].as_str().unwrap_or("gitops")),
            sha256: g["sha256"].as_str().map(String::from),
            download: g["install"].as_str().map(String::from),
        });
    }
    for c in &i.charts {
        let (name, version) = (c["chart"].as_str().unwrap_or_default(), c["version"].as_str().unwrap_or_default());
        v.push(Component {
            name: format!("helm chart {name}"),
            version: version.to_string(),
            purl: format!("pkg:helm/{name}@{version}"),
            sha256: c["sha256"].as_str().map(String::from),
            download: c["url"].as_str().map(String::from),
        });
    }
    v
}
