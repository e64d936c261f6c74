//! Turn a freshly bootstrapped Debian tree into an edgeimg root filesystem.

pub mod accounts;
pub mod system;

use std::fs;
use std::path::Path;

use crate::config::{Board, LoadedRecipe};
use crate::fsutil::{in_root, write_file, write_symlink};
use crate::tools::{Cmd, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum CustomizeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{what}: {source}")]
    Context { what: String, source: std::io::Error },
    #[error(transparent)]
    Accounts(#[from] accounts::AccountError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("time zone `{0}` is not in the image (/usr/share/zoneinfo); add `tzdata` to debian.packages")]
    NoTimezone(String),
    #[error("{recipe}: unit `{unit}` in services.{list} does not exist in the image")]
    NoUnit { recipe: String, list: &'static str, unit: String },
    #[error("{recipe}: file[{index}]: owner `{owner}` or group `{group}` does not exist in the image")]
    NoOwner { recipe: String, index: usize, owner: String, group: String },
    #[error(transparent)]
    K3s(#[from] super::k3s::K3sError),
}

trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, CustomizeError>;
}
impl<T> Ctx<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, CustomizeError> {
        self.map_err(|source| CustomizeError::Context { what: what(), source })
    }
}

pub struct Input<'a> {
    pub board: &'a Board,
    pub recipe: &'a LoadedRecipe,
    pub version: &'a str,
    pub build_id: &'a str,
    pub epoch: u64,
    /// The device updater binary to install as /usr/bin/edgeimg-updater.
    pub updater: &'a Path,
    /// edgeimg-tpm, installed as /usr/lib/edgeimg/edgeimg-tpm with the measuring unit.
    pub tpm_tool: Option<&'a Path>,
    /// K3s artifacts, when the recipe has a [k3s] section.
    pub k3s: Option<&'a super::k3s::Fetched>,
}

/// What customization found out, for the report.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub users: Vec<String>,
    pub ssh: bool,
    pub enabled: Vec<String>,
    pub masked: Vec<String>,
    pub files: usize,
    pub updater_sha256: String,
    pub k3s: Option<super::k3s::Installed>,
}

pub fn customize(root: &Path, input: &Input<'_>) -> Result<Summary, CustomizeError> {
    let r = &input.recipe.recipe;
    let mut summary = Summary::default();

    os_release(root, input)?;
    write_file(root, "/etc/hostname", format!("{}\n", r.image.hostname), 0o644)?;
    write_file(
        root,
        "/etc/hosts",
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
            r.image.hostname
        ),
        0o644,
    )?;
    timezone(root, &r.image.timezone)?;
    system::machine_id(root)?;
    system::generators(root)?;
    system::fstab(root)?;
    system::network(root)?;
    summary.ssh = system::ssh(root)?;
    if input.board.disk.grow_data {
        system::grow_data(root)?;
    }

    let u = &r.updater;
    let trusted_root = match &u.root {
        Some(p) => {
            let path = input.recipe.dir.join(p);
            Some(std::fs::read(&path).ctx(|| format!("reading the trusted root {}", path.display()))?)
        }
        None => None,
    };
    // The health unit may take the whole deadline, plus start-up slack.
    let deadline = crate::config::updater::parse_secs(&u.health_deadline).unwrap_or(300);
    summary.updater_sha256 = system::device_agent(
        root,
        input.updater,
        input.epoch,
        &u.render(&input.board.name, input.board.boot.backend.name(), input.board.boot.tries),
        trusted_root.as_deref(),
        deadline + 120,
    )?;
    if let Some(t) = input.tpm_tool {
        system::tpm(root, t)?;
    }
    match input.board.boot.backend {
        crate::config::BootBackend::UBoot => system::uboot_env(root, input.board.boot.tries)?,
        crate::config::BootBackend::L4t => system::l4t_retry_hold(root)?,
        _ => {}
    }
    if let (Some(k), Some(f)) = (&r.k3s, input.k3s) {
        summary.k3s = Some(super::k3s::install(root, k, input.recipe, f)?);
    }

    let made = accounts::add_users(root, &r.users, input.epoch)?;
    summary.users = made.iter().map(|(n, _, _)| n.clone()).collect();

    // Apt lists and caches are only needed to build; the image never runs apt.
    for p in ["/var/lib/apt/lists", "/var/cache/apt"] {
        let d = in_root(root, p);
        if d.is_dir() {
            for e in fs::read_dir(&d)? {
                let e = e?;
                if e.file_type()?.is_file() {
                    fs::remove_file(e.path())?;
                }
            }
        }
    }
    fs::create_dir_all(in_root(root, "/efi"))?;
    fs::create_dir_all(in_root(root, "/data"))?;

    // The recipe's own files and overlays come last so that they can override ours.
    summary.files = recipe_files(root, input)?;

    // /var moves to the factory copy only now, after everything that writes into it.
    system::journal(root, r.journal.persistent, &r.journal.max_use)?;
    system::var_to_factory(root).ctx(|| "moving /var to the factory directory".into())?;
    system::homes(root, &made)?;

    let (enabled, masked) = services(root, input, summary.ssh)?;
    summary.enabled = enabled;
    summary.masked = masked;
    Ok(summary)
}

fn os_release(root: &Path, input: &Input<'_>) -> Result<(), CustomizeError> {
    let path = in_root(root, "/usr/lib/os-release");
    let base = fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
    let mut out: String = base
        .lines()
        .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION=") && !l.starts_with("EDGEIMG_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let r = &input.recipe.recipe;
    out.push_str(&format!(
        "IMAGE_ID={}\nIMAGE_VERSION={}\nEDGEIMG_BOARD={}\nEDGEIMG_BUILD_ID={}\n",
        r.image.name, input.version, input.board.name, input.build_id
    ));
    write_file(root, "/usr/lib/os-release", out, 0o644)?;
    write_symlink(root, "/etc/os-release", "../usr/lib/os-release")?;
    Ok(())
}

fn timezone(root: &Path, tz: &str) -> Result<(), CustomizeError> {
    let zone = format!("/usr/share/zoneinfo/{tz}");
    if tz != "Etc/UTC" && !in_root(root, &zone).exists() {
        return Err(CustomizeError::NoTimezone(tz.into()));
    }
    write_symlink(root, "/etc/localtime", &zone)?;
    write_file(root, "/etc/timezone", format!("{tz}\n"), 0o644)?;
    Ok(())
}

fn lookup_id(root: &Path, file: &str, name: &str) -> Option<u32> {
    let text = fs::read_to_string(in_root(root, file)).ok()?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(2)?.parse().ok())
}

fn recipe_files(root: &Path, input: &Input<'_>) -> Result<usize, CustomizeError> {
    let rec = input.recipe;
    for o in &rec.recipe.rootfs.overlays {
        let src = rec.dir.join(o);
        // Overlay files are owned by root in the image, whoever owns them in the checkout.
        Cmd::new("cp").args(["-rT", "--no-preserve=ownership", "--preserve=mode,links"]).arg(&src).arg(root).run()?;
    }
    for (index, f) in rec.recipe.files.iter().enumerate() {
        let bytes = match (&f.content, &f.source) {
            (Some(c), _) => c.clone().into_bytes(),
            (None, Some(s)) => {
                let p = rec.dir.join(s);
                fs::read(&p).ctx(|| format!("reading {}", p.display()))?
            }
            (None, None) => Vec::new(),
        };
        write_file(root, &f.path, bytes, f.mode_bits())?;
        let uid = lookup_id(root, "/etc/passwd", &f.owner);
        let gid = lookup_id(root, "/etc/group", &f.group);
        let (Some(uid), Some(gid)) = (uid, gid) else {
            return Err(CustomizeError::NoOwner {
                recipe: rec.source.path.display().to_string(),
                index,
                owner: f.owner.clone(),
                group: f.group.clone(),
            });
        };
        std::os::unix::fs::chown(in_root(root, &f.path), Some(uid), Some(gid))?;
    }
    Ok(rec.recipe.files.len())
}

fn unit_exists(root: &Path, unit: &str) -> bool {
    let base = match unit.split_once('@') {
        Some((prefix, rest)) if !rest.starts_with('.') => {
            let suffix = rest.rsplit_once('.').map(|(_, s)| s).unwrap_or("service");
            format!("{prefix}@.{suffix}")
        }
        _ => unit.to_string(),
    };
    ["/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .any(|d| in_root(root, &format!("{d}/{unit}")).exists() || in_root(root, &format!("{d}/{base}")).exists())
}

fn services(root: &Path, input: &Input<'_>, ssh: bool) -> Result<(Vec<String>, Vec<String>), CustomizeError> {
    let s = &input.recipe.recipe.services;
    let recipe = input.recipe.source.path.display().to_string();
    for (list, units) in [("enable", &s.enable), ("disable", &s.disable), ("mask", &s.mask)] {
        for u in units {
            if list != "mask" && !unit_exists(root, u) {
                return Err(CustomizeError::NoUnit { recipe: recipe.clone(), list, unit: u.clone() });
            }
        }
    }
    let mut enable: Vec<String> = system::default_enabled(root, ssh).iter().map(|s| s.to_string()).collect();
    if input.recipe.recipe.k3s.is_some() {
        enable.push("k3s.service".into());
    }
    enable.extend(s.enable.iter().cloned());
    let mut mask: Vec<String> =
        system::MASKED_BY_DEFAULT.iter().filter(|u| unit_exists(root, u)).map(|s| s.to_string()).collect();
    mask.extend(s.mask.iter().cloned());
    let disable: Vec<String> = ["e2scrub_all.timer", "e2scrub_reap.service"]
        .iter()
        .filter(|u| unit_exists(root, u))
        .map(|s| s.to_string())
        .chain(s.disable.iter().cloned())
        .collect();

    let systemctl = |verb: &str, units: &[String]| -> Result<(), CustomizeError> {
        if units.is_empty() {
            return Ok(());
        }
        Cmd::new("systemctl").arg(format!("--root={}", root.display())).arg(verb).args(units).run()?;
        Ok(())
    };
    systemctl("disable", &disable)?;
    systemctl("enable", &enable)?;
    systemctl("mask", &mask)?;
    Ok((enable, mask))
}
