//! The `[updater]` recipe section: how devices running this image find and take updates.
//! Every key is documented with its default in docs/configuration.md.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Updater {
    /// Update server base URL (`edgeimg serve`); the TUF repository is `<server>/tuf`.
    #[serde(default)]
    pub server: Option<String>,
    /// TUF repository URL when it is not below the server (e.g. a CDN).
    #[serde(default)]
    pub repository: Option<String>,
    /// Trusted root.json (relative to the recipe), from `edgeimg keys init`.
    #[serde(default)]
    pub root: Option<PathBuf>,
    #[serde(default = "default_channel")]
    pub channel: String,
    #[serde(default = "default_poll")]
    pub poll_interval: String,
    /// "synchronized": wait for NTP before trusting metadata expiry; "system": trust the clock.
    #[serde(default = "default_time")]
    pub time: String,
    /// "auto" or "manual".
    #[serde(default = "default_reboot")]
    pub reboot: String,
    #[serde(default)]
    pub reboot_window: Option<String>,
    #[serde(default)]
    pub download_window: Option<String>,
    /// Bytes per second.
    #[serde(default)]
    pub rate_limit: Option<u64>,
    #[serde(default)]
    pub drain: bool,
    #[serde(default = "default_deadline")]
    pub health_deadline: String,
    /// K3s node Ready check; default: on when the image has K3s.
    #[serde(default)]
    pub k3s_node_ready: Option<bool>,
    #[serde(default)]
    pub health_units: Vec<String>,
    #[serde(default)]
    pub health_http: Vec<String>,
    #[serde(default)]
    pub health_commands: Vec<Vec<String>>,
    /// Use the device's TPM: bake in edgeimg-tpm and the TCG software stack, measure the
    /// booted release into PCR 15 early in boot, attest to the server, keep the security
    /// floor in TPM NV storage. Devices without a TPM work as before.
    #[serde(default)]
    pub tpm: bool,
    /// Serve device metrics (Prometheus text) on this address, e.g. "127.0.0.1:9101".
    #[serde(default)]
    pub metrics: Option<String>,
}

impl Default for Updater {
    /// The same defaults as an empty `[updater]` section.
    fn default() -> Self {
        toml::from_str("").expect("every key has a default")
    }
}

fn default_channel() -> String {
    "stable".into()
}
fn default_poll() -> String {
    "1h".into()
}
fn default_time() -> String {
    "synchronized".into()
}
fn default_reboot() -> String {
    "auto".into()
}
fn default_deadline() -> String {
    "300s".into()
}

/// Seconds of a duration such as 90s, 15m, 6h, 2d.
pub fn parse_secs(s: &str) -> Option<u64> {
    let i = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..i].parse().ok()?;
    Some(match &s[i..] {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    })
}

fn valid_duration(s: &str) -> bool {
    let Some(i) = s.find(|c: char| !c.is_ascii_digit()) else { return false };
    i > 0 && ["s", "m", "h", "d"].contains(&&s[i..])
}

fn valid_window(s: &str) -> bool {
    let ok = |t: &str| {
        t.split_once(':')
            .is_some_and(|(h, m)| h.parse::<u32>().is_ok_and(|h| h < 24) && m.parse::<u32>().is_ok_and(|m| m < 60))
    };
    s.split_once('-').is_some_and(|(a, b)| ok(a) && ok(b))
}

impl Updater {
    pub fn validate(&self, src: &Source, dir: &std::path::Path) -> Result<(), ConfigError> {
        for (key, v) in [("updater.server", &self.server), ("updater.repository", &self.repository)] {
            if let Some(u) = v {
                if !u.starts_with("http://") && !u.starts_with("https://") {
                    return Err(src.error_at(key, "must be an http:// or https:// URL"));
                }
            }
        }
        if self.server.is_some() || self.repository.is_some() {
            match &self.root {
                None => {
                    return Err(src.error_at(
                        "updater.root",
                        "devices need the trusted root.json to verify updates (edgeimg keys init makes one)",
                    ))
                }
                Some(r) if !dir.join(r).is_file() => {
                    return Err(src.error_at("updater.root", format!("{} is not a file", dir.join(r).display())))
                }
                _ => {}
            }
        }
        edgeimg_proto::channel::validate_name(&self.channel).map_err(|m| src.error_at("updater.channel", m))?;
        for (key, v) in
            [("updater.poll_interval", &self.poll_interval), ("updater.health_deadline", &self.health_deadline)]
        {
            if !valid_duration(v) {
                return Err(src.error_at(key, format!("`{v}`: a duration such as 90s, 15m, 6h")));
            }
        }
        if !["synchronized", "system"].contains(&self.time.as_str()) {
            return Err(src.error_at("updater.time", "\"synchronized\" or \"system\""));
        }
        if !["auto", "manual"].contains(&self.reboot.as_str()) {
            return Err(src.error_at("updater.reboot", "\"auto\" or \"manual\""));
        }
        for (key, v) in
            [("updater.reboot_window", &self.reboot_window), ("updater.download_window", &self.download_window)]
        {
            if let Some(w) = v {
                if !valid_window(w) {
                    return Err(src.error_at(key, format!("`{w}`: a local time window such as \"02:00-04:00\"")));
                }
            }
        }
        if let Some(m) = &self.metrics {
            if m.parse::<std::net::SocketAddr>().is_err() {
                return Err(src.error_at(
                    "updater.metrics",
                    format!(
                        "`{m}`: an address and port such as \"127.0.0.1:9101\" (0.0.0.0 exposes it to the network)"
                    ),
                ));
            }
        }
        for (i, c) in self.health_commands.iter().enumerate() {
            if c.is_empty() || !c[0].starts_with('/') {
                return Err(src.error_at(
                    &format!("updater.health_commands[{i}]"),
                    "a command as a list, starting with an absolute path",
                ));
            }
        }
        Ok(())
    }

    /// The image's layer of the updater configuration (/usr/lib/edgeimg/updater.toml).
    pub fn render(&self, board: &str, backend: &str, tries: u32) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut t = String::from("# Written by edgeimg build: the image's defaults. Override per device in\n# /etc/edgeimg/updater.toml or /data/edgeimg/updater.toml.\n");
        if let Some(s) = &self.server {
            t.push_str(&format!("server = {}\n", q(s)));
        }
        if let Some(r) = &self.repository {
            t.push_str(&format!("repository = {}\n", q(r)));
        }
        t.push_str(&format!("tpm = {}\n", q(if self.tpm { "auto" } else { "off" })));
        t.push_str(&format!(
            "board = {}\nchannel = {}\npoll_interval = {}\ntime = {}\n",
            q(board),
            q(&self.channel),
            q(&self.poll_interval),
            q(&self.time)
        ));
        if let Some(w) = &self.download_window {
            t.push_str(&format!("download_window = {}\n", q(w)));
        }
        if let Some(r) = self.rate_limit {
            t.push_str(&format!("rate_limit = {r}\n"));
        }
        if let Some(m) = &self.metrics {
            t.push_str(&format!("metrics_listen = {}\n", q(m)));
        }
        t.push_str(&format!("\n[boot]\nbackend = {}\ntries = {tries}\n", q(backend)));
        t.push_str(&format!("\n[reboot]\npolicy = {}\ndrain = {}\n", q(&self.reboot), self.drain));
        if let Some(w) = &self.reboot_window {
            t.push_str(&format!("window = {}\n", q(w)));
        }
        t.push_str(&format!("\n[health]\ndeadline = {}\n", q(&self.health_deadline)));
        if let Some(k) = self.k3s_node_ready {
            t.push_str(&format!("k3s_node_ready = {k}\n"));
        }
        let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
        t.push_str(&format!("units = [{}]\nhttp = [{}]\n", list(&self.health_units), list(&self.health_http)));
        t.push_str(&format!(
            "commands = [{}]\n",
            self.health_commands.iter().map(|c| format!("[{}]", list(c))).collect::<Vec<_>>().join(", ")
        ));
        t
    }
}
