//! Updater configuration in layers: the image's defaults (`/usr/lib/edgeimg/updater.toml`),
//! then `/etc/edgeimg/updater.toml`, then `/data/edgeimg/updater.toml` (per device, survives
//! updates). Each layer is a fragment (every key optional, unknown keys rejected); later
//! layers win key by key; the merge is then validated into `Settings`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const LAYERS: [&str; 3] =
    ["/usr/lib/edgeimg/updater.toml", "/etc/edgeimg/updater.toml", "/data/edgeimg/updater.toml"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("updater configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    pub server: Option<String>,
    pub repository: Option<String>,
    pub channel: Option<String>,
    pub board: Option<String>,
    pub trusted_root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub poll_interval: Option<String>,
    pub enroll_token_file: Option<PathBuf>,
    /// "synchronized" (wait for NTP) or "system" (trust the clock as it is).
    pub time: Option<String>,
    /// "auto" (use the TPM when there is one and edgeimg-tpm is installed), "off", or a
    /// TCTI such as "device:/dev/tpmrm0" or "swtpm:host=127.0.0.1,port=2321".
    pub tpm: Option<String>,
    /// The edgeimg-tpm program.
    pub tpm_tool: Option<PathBuf>,
    pub max_download: Option<u64>,
    pub rate_limit: Option<u64>,
    pub download_window: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. "127.0.0.1:9101"); off when unset.
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub boot: Option<BootFragment>,
    #[serde(default)]
    pub slots: Option<SlotsFragment>,
    #[serde(default)]
    pub reboot: Option<RebootFragment>,
    #[serde(default)]
    pub health: Option<HealthFragment>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFragment {
    pub backend: Option<String>,
    pub boot_dir: Option<PathBuf>,
    pub efivars: Option<PathBuf>,
    /// U-Boot: fw_env.config files of the two copies of the boot state, first copy first.
    pub fw_env_config: Option<Vec<PathBuf>>,
    pub tries: Option<u32>,
    /// L4T: NVIDIA's nvbootctrl (default: `nvbootctrl` on PATH).
    pub nvbootctrl: Option<PathBuf>,
    /// File-backed fake backend state (tests).
    pub fake_state: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsFragment {
    pub root_a: Option<PathBuf>,
    pub root_b: Option<PathBuf>,
    pub verity_a: Option<PathBuf>,
    pub verity_b: Option<PathBuf>,
    /// Each slot's boot partition (tryboot: boot-a/boot-b; l4t: APP/APP_b by default).
    pub boot_a: Option<PathBuf>,
    pub boot_b: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootFragment {
    /// "auto" (reboot when an update is staged), "manual" (an operator runs `reboot`).
    pub policy: Option<String>,
    /// Local time window for reboots, e.g. "02:00-04:00".
    pub window: Option<String>,
    /// Cordon and drain the K3s node before rebooting, uncordon after commit.
    pub drain: Option<bool>,
    /// Command that reboots (default: systemctl reboot).
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFragment {
    pub deadline: Option<String>,
    pub k3s_node_ready: Option<bool>,
    pub units: Option<Vec<String>>,
    pub http: Option<Vec<String>>,
    pub commands: Option<Vec<Vec<String>>>,
}

macro_rules! merge_opt {
    ($dst:expr, $src:expr, $($f:ident),*) => { $( if $src.$f.is_some() { $dst.$f = $src.$f.clone(); } )* };
}

impl Fragment {
    pub fn merge(&mut self, o: &Fragment) {
        merge_opt!(
            self,
            o,
            server,
            repository,
            channel,
            board,
            trusted_root,
            state_dir,
            poll_interval,
            enroll_token_file,
            time,
            tpm,
            tpm_tool,
            max_download,
            rate_limit,
            download_window,
            metrics_listen
        );
        if let Some(b) = &o.boot {
            let m = self.boot.get_or_insert_with(Default::default);
            merge_opt!(m, b, backend, boot_dir, efivars, fw_env_config, tries, nvbootctrl, fake_state);
        }
        if let Some(s) = &o.slots {
            let m = self.slots.get_or_insert_with(Default::default);
            merge_opt!(m, s, root_a, root_b, verity_a, verity_b, boot_a, boot_b);
        }
        if let Some(r) = &o.reboot {
            let m = self.reboot.get_or_insert_with(Default::default);
            merge_opt!(m, r, policy, window, drain, command);
        }
        if let Some(h) = &o.health {
            let m = self.health.get_or_insert_with(Default::default);
            merge_opt!(m, h, deadline, k3s_node_ready, units, http, commands);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootBackendKind {
    SystemdBoot,
    UBoot,
    Tryboot,
    L4t,
    Fake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootPolicy {
    Auto,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimePolicy {
    Synchronized,
    System,
}

/// Validated settings with defaults applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: Option<String>,
    pub repository: Option<String>,
    pub channel: String,
    pub board: String,
    pub trusted_root: PathBuf,
    pub state_dir: PathBuf,
    pub poll_interval: Duration,
    pub enroll_token_file: Option<PathBuf>,
    pub time: TimePolicy,
    pub tpm: crate::tpm::TpmSetting,
    pub tpm_tool: PathBuf,
    pub max_download: u64,
    pub rate_limit: Option<u64>,
    pub download_window: Option<(u32, u32)>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub backend: BootBackendKind,
    pub boot_dir: PathBuf,
    pub efivars: PathBuf,
    pub fw_env_config: Vec<PathBuf>,
    pub tries: u32,
    pub fake_state: Option<PathBuf>,
    pub root: BTreeMap<edgeimg_proto::Slot, PathBuf>,
    pub verity: BTreeMap<edgeimg_proto::Slot, PathBuf>,
    /// Each slot's own boot partition (tryboot: boot-a/boot-b; l4t: APP/APP_b).
    pub boot_partitions: [PathBuf; 2],
    pub nvbootctrl: PathBuf,
    pub reboot_policy: RebootPolicy,
    pub reboot_window: Option<(u32, u32)>,
    pub drain: bool,
    pub reboot_command: Vec<String>,
    pub health_deadline: Duration,
    pub k3s_node_ready: Option<bool>,
    pub health_units: Vec<String>,
    pub health_http: Vec<String>,
    pub health_commands: Vec<Vec<String>>,
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    Some(Duration::from_secs(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    }))
}

/// "02:00-04:00" → minutes since midnight (start, end); a window may wrap midnight.
pub fn parse_window(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    let m = |t: &str| -> Option<u32> {
        let (h, mi) = t.trim().split_once(':')?;
        let (h, mi): (u32, u32) = (h.parse().ok()?, mi.parse().ok()?);
        (h < 24 && mi < 60).then_some(h * 60 + mi)
    };
    Some((m(a)?, m(b)?))
}

pub fn in_window(window: (u32, u32), minute_of_day: u32) -> bool {
    let (a, b) = window;
    if a <= b {
        (a..b).contains(&minute_of_day)
    } else {
        minute_of_day >= a || minute_of_day < b
    }
}

/// Read the layers under `root` (missing files are skipped) and validate.
pub fn load(root: &Path, extra: Option<&Path>) -> Result<Settings, ConfigError> {
    let mut f = Fragment::default();
    let mut paths: Vec<PathBuf> = LAYERS.iter().map(|p| root.join(p.trim_start_matches('/'))).collect();
    if let Some(e) = extra {
        paths.push(e.to_path_buf());
    }
    for p in paths {
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ConfigError::Parse { path: p, message: e.to_string() }),
        };
        let frag: Fragment =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: p.clone(), message: e.to_string() })?;
        f.merge(&frag);
    }
    settings(f, root)
}

fn settings(f: Fragment, root: &Path) -> Result<Settings, ConfigError> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let dur = |key: &str, v: &Option<String>, default: u64| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(Duration::from_secs(default)),
            Some(s) => {
                parse_duration(s).ok_or_else(|| ConfigError::Invalid(format!("{key} = \"{s}\": use e.g. 90s, 15m, 6h")))
            }
        }
    };
    let board = f.board.clone().or_else(|| os_release_value(root, "EDGEIMG_BOARD")).ok_or_else(|| {
        ConfigError::Invalid("no board: set `board` or run an image whose os-release has EDGEIMG_BOARD".into())
    })?;
    let boot = f.boot.clone().unwrap_or_default();
    let backend = match boot.backend.as_deref().unwrap_or("systemd-boot") {
        "systemd-boot" => BootBackendKind::SystemdBoot,
        "u-boot" => BootBackendKind::UBoot,
        "tryboot" => BootBackendKind::Tryboot,
        "l4t" => BootBackendKind::L4t,
        "fake" => BootBackendKind::Fake,
        other => {
            return Err(ConfigError::Invalid(format!(
                "boot.backend = \"{other}\": known backends are systemd-boot, u-boot, tryboot, l4t, fake"
            )))
        }
    };
    let slots = f.slots.clone().unwrap_or_default();
    use edgeimg_proto::Slot;
    let part = |s: Slot, verity: bool| {
        let label = if verity { s.verity_label() } else { s.root_label() };
        at(&format!("/dev/disk/by-partlabel/{label}"))
    };
    let root_map = BTreeMap::from([
        (Slot::A, slots.root_a.clone().unwrap_or_else(|| part(Slot::A, false))),
        (Slot::B, slots.root_b.clone().unwrap_or_else(|| part(Slot::B, false))),
    ]);
    let verity_map = BTreeMap::from([
        (Slot::A, slots.verity_a.clone().unwrap_or_else(|| part(Slot::A, true))),
        (Slot::B, slots.verity_b.clone().unwrap_or_else(|| part(Slot::B, true))),
    ]);
    let boot_part = |v: &Option<PathBuf>, s: Slot| {
        let label = match backend {
            BootBackendKind::L4t => edgeimg_proto::l4t::app_label(s).to_string(),
            _ => edgeimg_proto::tryboot::boot_label(s),
        };
        v.clone().unwrap_or_else(|| at(&format!("/dev/disk/by-partlabel/{label}")))
    };
    let boot_partitions = [boot_part(&slots.boot_a, Slot::A), boot_part(&slots.boot_b, Slot::B)];
    let reboot = f.reboot.clone().unwrap_or_default();
    let health = f.health.clone().unwrap_or_default();
    let window = |key: &str, v: &Option<String>| -> Result<Option<(u32, u32)>, ConfigError> {
        v.as_ref()
            .map(|w| parse_window(w).ok_or_else(|| ConfigError::Invalid(format!("{key} = \"{w}\": use HH:MM-HH:MM"))))
            .transpose()
    };
    let s = Settings {
        server: f.server.clone(),
        repository: f
            .repository
            .clone()
            .or_else(|| f.server.as_ref().map(|s| format!("{}/tuf", s.trim_end_matches('/')))),
        channel: f.channel.clone().unwrap_or_else(|| "stable".into()),
        board,
        trusted_root: f.trusted_root.clone().unwrap_or_else(|| at("/usr/lib/edgeimg/root.json")),
        state_dir: f.state_dir.clone().unwrap_or_else(|| at("/data/edgeimg/updater")),
        poll_interval: dur("poll_interval", &f.poll_interval, 3600)?,
        enroll_token_file: f.enroll_token_file.clone(),
        time: match f.time.as_deref().unwrap_or("synchronized") {
            "synchronized" => TimePolicy::Synchronized,
            "system" => TimePolicy::System,
            other => {
                return Err(ConfigError::Invalid(format!("time = \"{other}\": use \"synchronized\" or \"system\"")))
            }
        },
        tpm: crate::tpm::TpmSetting::parse(f.tpm.as_deref().unwrap_or("auto")).map_err(ConfigError::Invalid)?,
        tpm_tool: f.tpm_tool.clone().unwrap_or_else(|| at("/usr/lib/edgeimg/edgeimg-tpm")),
        max_download: f.max_download.unwrap_or(8 << 30),
        rate_limit: f.rate_limit,
        download_window: window("download_window", &f.download_window)?,
        metrics_listen: f
            .metrics_listen
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "metrics_listen = \"{a}\": give an address and port such as \"127.0.0.1:9101\" \
                         (0.0.0.0 exposes it to the network)"
                    ))
                })
            })
            .transpose()?,
        backend,
        boot_dir: boot.boot_dir.clone().unwrap_or_else(|| at("/efi")),
        efivars: boot.efivars.clone().unwrap_or_else(|| at("/sys/firmware/efi/efivars")),
        fw_env_config: boot
            .fw_env_config
            .clone()
            .unwrap_or_else(|| vec![at("/etc/fw_env.config"), at("/usr/lib/edgeimg/fw_env.redund.config")]),
        tries: boot.tries.unwrap_or(1).clamp(1, 9),
        fake_state: boot.fake_state.clone(),
        root: root_map,
        verity: verity_map,
        boot_partitions,
        nvbootctrl: boot.nvbootctrl.clone().unwrap_or_else(|| "nvbootctrl".into()),
        reboot_policy: match reboot.policy.as_deref().unwrap_or("auto") {
            "auto" => RebootPolicy::Auto,
            "manual" => RebootPolicy::Manual,
            other => {
                return Err(ConfigError::Invalid(format!("reboot.policy = \"{other}\": use \"auto\" or \"manual\"")))
            }
        },
        reboot_window: window("reboot.window", &reboot.window)?,
        drain: reboot.drain.unwrap_or(false),
        reboot_command: reboot.command.clone().unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()]),
        health_deadline: dur("health.deadline", &health.deadline, 300)?,
        k3s_node_ready: health.k3s_node_ready,
        health_units: health.units.clone().unwrap_or_default(),
        health_http: health.http.clone().unwrap_or_default(),
        health_commands: health.commands.clone().unwrap_or_default(),
    };
    if let Some(r) = &s.repository {
        if !(r.starts_with("http://") || r.starts_with("https://") || r.starts_with('/')) {
            return Err(ConfigError::Invalid(format!("repository `{r}`: an http(s) URL or a local directory")));
        }
    }
    Ok(s)
}

/// A value from the image's os-release (under `root`).
pub fn os_release_value(root: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(root.join("usr/lib/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("etc/os-release")))
        .ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).map(|v| v.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_and_validate() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, t: &str| {
            let f = d.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, t).unwrap();
        };
        w(LAYERS[0], "server = \"http://image\"\nboard = \"qemu-x86_64\"\n[health]\nunits = [\"k3s.service\"]\ndeadline = \"120s\"\n");
        w(LAYERS[1], "channel = \"beta\"\n[health]\ndeadline = \"5m\"\n");
        w(LAYERS[2], "server = \"http://device\"\n");
        let s = load(d.path(), None).unwrap();
        assert_eq!(s.server.as_deref(), Some("http://device"));
        assert_eq!(s.repository.as_deref(), Some("http://device/tuf"));
        assert_eq!(s.channel, "beta");
        assert_eq!(s.health_deadline, Duration::from_secs(300));
        assert_eq!(s.health_units, vec!["k3s.service"], "keys not set later keep earlier values");
        assert!(s.root[&edgeimg_proto::Slot::B].ends_with("dev/disk/by-partlabel/root-b"));
        w(LAYERS[2], "sever = \"typo\"\n");
        let e = load(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("updater.toml") && e.contains("sever"), "{e}");
    }

    #[test]
    fn windows() {
        assert_eq!(parse_window("02:00-04:30"), Some((120, 270)));
        assert!(in_window((120, 270), 200));
        assert!(!in_window((120, 270), 270));
        assert!(in_window((22 * 60, 120), 23 * 60), "wraps midnight");
        assert!(in_window((22 * 60, 120), 60));
        assert!(parse_window("25:00-01:00").is_none());
    }
}
