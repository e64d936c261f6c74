//! `edgeimg keys`, `publish`, `rollout`, `refresh`: the release side of the CLI, thin
//! wrappers over the edgeimg-release crate.

use std::path::PathBuf;

use anyhow::{Context, Result};
use edgeimg_proto::channel::{HaltPolicy, Waves};
use edgeimg_release::publish::PublishOptions;
use edgeimg_release::rollout::Change;
use edgeimg_release::{KeyDir, KeyName, Lifetimes, Repo};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a new set of release keys and the signed root.json.
    Init {
        /// Directory for the keys (must not hold keys already).
        #[arg(long)]
        out: PathBuf,
        /// Number of root keys (give each to a different person).
        #[arg(long, default_value_t = 1)]
        root_keys: usize,
        /// Root signatures needed to change the root.
        #[arg(long, default_value_t = 1)]
        root_threshold: usize,
        /// Lifetime of the root metadata, e.g. 365d.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        root_expires: jiff::SignedDuration,
        /// Mark the keys as INSECURE examples (for keys-example/ only).
        #[arg(long, hide = true)]
        insecure_example: bool,
    },
    /// Replace a compromised online key (snapshot or timestamp) with a new one.
    Rotate {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        repo: PathBuf,
        /// snapshot or timestamp
        #[arg(long)]
        role: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Build output directory (out/<board>/<image>/<version>/).
    pub build: PathBuf,
    /// The TUF repository (created on first publish).
    #[arg(long)]
    pub repo: PathBuf,
    /// Key directory with targets.pk8, snapshot.pk8 and timestamp.pk8 (and, the first
    /// time, rollout.pk8).
    #[arg(long)]
    pub keys: PathBuf,
    /// Security version (default: the recipe's image.security_version).
    #[arg(long)]
    pub security_version: Option<u64>,
    /// Oldest updater version that can install this release.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub min_updater_version: String,
    /// Then roll it out on this channel (needs rollout.pk8).
    #[arg(long)]
    pub channel: Option<String>,
    /// With --channel: percentage of devices.
    #[arg(long, requires = "channel")]
    pub percent: Option<u8>,
    /// Make deltas from this many earlier releases of the image for the board (devices on
    /// those download only changed blocks; others use the block index or the full image).
    /// 0: no deltas and no block index.
    #[arg(long, default_value_t = 3)]
    pub deltas: usize,
}

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Channel name, e.g. canary, beta, stable.
    pub channel: String,
    /// The TUF repository (made by `edgeimg publish`).
    #[arg(long)]
    pub repo: PathBuf,
    /// Key directory with the online keys: rollout.pk8, snapshot.pk8, timestamp.pk8.
    #[arg(long)]
    pub keys: PathBuf,
    /// Board whose entry in the channel changes.
    #[arg(long)]
    pub board: String,
    /// Release version to roll out (must be published).
    #[arg(long = "release")]
    pub version: Option<String>,
    /// Image name (needed only if several images have this version for the board).
    #[arg(long)]
    pub image: Option<String>,
    /// Percentage of devices that may install it.
    #[arg(long, conflicts_with = "waves")]
    pub percent: Option<u8>,
    /// Time waves: percentages, e.g. 1,5,25,100, spread over --period.
    #[arg(long, value_delimiter = ',', requires = "period")]
    pub waves: Vec<u8>,
    /// Duration of the whole wave schedule, e.g. 4d or 12h.
    #[arg(long, value_parser = parse_duration)]
    pub period: Option<jiff::SignedDuration>,
    /// Stop new installs.
    #[arg(long, conflicts_with = "resume")]
    pub pause: bool,
    /// Why (shown on the dashboard).
    #[arg(long, requires = "pause")]
    pub reason: Option<String>,
    /// Let new installs continue.
    #[arg(long)]
    pub resume: bool,
    /// Allow moving the channel to an older release.
    #[arg(long)]
    pub rollback: bool,
    /// Count devices healthy only with a passing TPM attestation.
    #[arg(long)]
    pub require_attestation: Option<bool>,
    /// Auto-halt: pause when more than this many devices fail the release ...
    #[arg(long)]
    pub halt_after_failures: Option<u32>,
    /// ... once at least this many devices have tried it.
    #[arg(long, default_value_t = 1)]
    pub halt_min_devices: u32,
}

/// Durations like 90s, 30m, 12h, 4d.
pub fn parse_duration(s: &str) -> Result<jiff::SignedDuration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| format!("`{s}`: expected a number and a unit, e.g. 4d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" | "" => n * 86_400,
        _ => return Err(format!("`{s}`: units are s, m, h, d")),
    };
    if secs <= 0 {
        return Err(format!("`{s}`: must be positive"));
    }
    Ok(jiff::SignedDuration::from_secs(secs))
}

fn runtime() -> tokio::runtime::Runtime {
    crate::net::runtime()
}

pub fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Init { out, root_keys, root_threshold, root_expires, insecure_example } => {
            let opts = edgeimg_release::keys::InitOptions {
                root_keys,
                root_threshold,
                root_expires: jiff::Timestamp::now() + root_expires,
                insecure_example,
            };
            let root = runtime().block_on(edgeimg_release::keys::init(&out, &opts))?;
            println!("wrote keys and {} ({root_keys} root keys, threshold {root_threshold})", root.display());
            println!("keep root-*.pk8 and targets.pk8 offline; rollout/snapshot/timestamp.pk8 go to the update server");
            Ok(())
        }
        KeysCommand::Rotate { keys, repo, role } => {
            let role = match role.as_str() {
                "snapshot" => KeyName::Snapshot,
                "timestamp" => KeyName::Timestamp,
                other => anyhow::bail!("--role {other}: only snapshot and timestamp keys can be rotated here"),
            };
            let v = runtime().block_on(edgeimg_release::rotate::rotate_online_key(
                &Repo::new(repo),
                &KeyDir::new(keys),
                role,
                &Lifetimes::default(),
                jiff::Timestamp::now(),
            ))?;
            println!("root version {v} now lists the new {} key; the old key is revoked", role.file());
            Ok(())
        }
    }
}

pub fn publish(a: PublishArgs, json: bool) -> Result<()> {
    let payload = edgeimg_release::publish::read_payload(&a.build)?;
    let opts = PublishOptions {
        build_dir: a.build.clone(),
        security_version: a.security_version.unwrap_or(payload.security_version),
        min_updater_version: a.min_updater_version,
        expected_pcrs: Default::default(),
        deltas: a.deltas,
        lifetimes: Lifetimes::default(),
        now: jiff::Timestamp::now(),
    };
    let repo = Repo::new(&a.repo);
    let keys = KeyDir::new(&a.keys);
    let rt = runtime();
    let p = rt.block_on(edgeimg_release::publish::publish(&repo, &keys, &opts)).context("publishing")?;
    let mut channel = None;
    if let Some(c) = &a.channel {
        let change = Change {
            channel: c.clone(),
            board: p.manifest.board.clone(),
            image: Some(p.manifest.image.clone()),
            version: Some(p.manifest.version.clone()),
            percent: Some(a.percent.unwrap_or(100)),
            ..Default::default()
        };
        channel = Some(rt.block_on(edgeimg_release::rollout::apply(
            &repo,
            &keys,
            &change,
            &Lifetimes::default(),
            opts.now,
        ))?);
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"manifest_target": p.manifest_target, "manifest": p.manifest, "channel": channel})
        );
    } else {
        println!(
            "published {} {} for {} ({} MiB in {} artifacts) into {}{}",
            p.manifest.image,
            p.manifest.version,
            p.manifest.board,
            p.manifest.download_size() >> 20,
            p.manifest.artifacts.len(),
            a.repo.display(),
            if p.created { " (new repository)" } else { "" }
        );
        for d in p.manifest.deltas.iter().filter(|d| d.from.is_some()) {
            let full = p.manifest.artifact_named(&d.artifact).map_or(0, |a| a.size);
            println!(
                "  delta {} from {}: {} bytes ({:.2}% of {})",
                d.artifact,
                d.from.as_ref().map_or("", |f| f.version.as_str()),
                d.size,
                d.size as f64 * 100.0 / full.max(1) as f64,
                full
            );
        }
        if let Some(c) = channel {
            println!("channel {}: {} at {}%", c.name, p.manifest.version, c.boards[&p.manifest.board].percent);
        }
    }
    Ok(())
}

pub fn rollout(a: RolloutArgs, json: bool) -> Result<()> {
    let now = jiff::Timestamp::now();
    let waves = match (a.waves.is_empty(), a.period) {
        (true, _) => None,
        (false, Some(period)) => {
            let steps = a.waves.len() as i64;
            Some(Waves {
                percents: a.waves.clone(),
                start: now.as_second(),
                interval: (period.as_secs() / steps).max(1),
            })
        }
        (false, None) => anyhow::bail!("--waves needs --period"),
    };
    let change = Change {
        channel: a.channel.clone(),
        board: a.board.clone(),
        image: a.image,
        version: a.version,
        percent: a.percent,
        waves,
        pause: if a.pause {
            Some(true)
        } else if a.resume {
            Some(false)
        } else {
            None
        },
        reason: a.reason,
        rollback: a.rollback,
        require_attestation: a.require_attestation,
        halt: a.halt_after_failures.map(|max_failures| HaltPolicy { max_failures, min_devices: a.halt_min_devices }),
    };
    let ch = runtime().block_on(edgeimg_release::rollout::apply(
        &Repo::new(&a.repo),
        &KeyDir::new(&a.keys),
        &change,
        &Lifetimes::default(),
        now,
    ))?;
    let b = &ch.boards[&a.board];
    if json {
        println!("{}", serde_json::to_string(&ch)?);
    } else {
        let how = match &b.waves {
            Some(w) => {
                format!("waves {:?}% every {}s (now {}%)", w.percents, w.interval, b.percent_at(now.as_second()))
            }
            None => format!("{}%", b.percent),
        };
        println!(
            "channel {} / {}: {} {} at {how}{}{}",
            ch.name,
            a.board,
            b.image,
            b.version,
            if b.paused { ", PAUSED" } else { "" },
            if b.rollback { ", rollback allowed" } else { "" }
        );
    }
    Ok(())
}

pub fn refresh(repo: PathBuf, keys: PathBuf) -> Result<()> {
    runtime().block_on(edgeimg_release::rollout::refresh(
        &Repo::new(&repo),
        &KeyDir::new(&keys),
        &Lifetimes::default(),
        jiff::Timestamp::now(),
    ))?;
    println!("re-signed rollout, snapshot and timestamp in {}", repo.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("4d").unwrap().as_secs(), 4 * 86_400);
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("12h").unwrap().as_secs(), 43_200);
        assert!(parse_duration("4w").is_err());
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("d").is_err());
    }
}
