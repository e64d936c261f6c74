//! `edgeimg-updater` command line: the service, the operator commands, boot-time jobs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::agent::{Agent, CheckOutcome};
use crate::state::State;

#[derive(Debug, Parser)]
#[command(
    name = "edgeimg-updater",
    version,
    about = "edgeimg device agent: A/B updates through TUF, tried once, committed or rolled back"
)]
pub struct Cli {
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Root of the system to work on (tests point this at a directory).
    #[arg(long, global = true, default_value = "/")]
    pub root: PathBuf,
    /// An extra configuration layer, read last.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The service: check, install, reboot, commit, report, forever.
    Run {
        /// One pass, then exit (tests, cron-style use).
        #[arg(long)]
        once: bool,
    },
    /// What runs in which slot, the update state, the security floor.
    Status,
    /// Ask the channel now; with --install, install what it offers.
    Check {
        #[arg(long)]
        install: bool,
    },
    /// Install a release from a repository (URL, or a directory such as a USB stick copy),
    /// bypassing the channel but not the signatures.
    Install {
        /// Repository URL or directory.
        repository: String,
        #[arg(long = "release")]
        version: String,
        #[arg(long)]
        image: Option<String>,
        /// Reboot into it when staged.
        #[arg(long)]
        reboot: bool,
    },
    /// Commit the trial boot now (skip the health checks).
    Commit,
    /// Exit 0 when this boot is committed, 1 on a trial boot: the `ExecCondition=` of units
    /// that must wait for the commit (L4T's nv-l4t-bootloader-config.service, which clears
    /// the firmware's retry count). When it cannot be told, 0, with a warning: the unit then
    /// runs as it would without edgeimg.
    Committed,
    /// Go back to the other slot, if it holds a committed release, and reboot.
    Rollback {
        #[arg(long)]
        no_reboot: bool,
    },
    /// Past transitions.
    History,
    /// Print the device metrics (Prometheus text format), e.g. for node-exporter's textfile
    /// collector; the same the daemon serves on `metrics_listen`.
    Metrics,
    /// Run the health checks; on a trial boot, commit when they pass, give the boot up when
    /// they fail (exit 1: the unit's FailureAction reboots into the previous slot).
    Health,
    /// Take the provisioning file from the boot partition and apply it (boot service).
    Provision {
        /// Mount point of the boot partition.
        #[arg(long, default_value = "/efi")]
        boot_dir: String,
    },
    /// Link this release's images and manifests into K3s's state (boot service).
    K3sPrepare,
    /// Measure the booted release (image, version, verity root hash) into TPM PCR 15, once
    /// per boot, before the network is up (boot service). Without a TPM: says so, exits 0.
    Measure,
    /// The device's TUF client on its own, with the TUF conformance suite's client protocol
    /// (diagnostics: would this device accept that repository?). Keeps its own metadata
    /// directory; never touches the updater's state.
    #[command(name = "tuf-client")]
    TufClient {
        #[arg(long)]
        metadata_dir: PathBuf,
        #[arg(long)]
        metadata_url: Option<String>,
        /// Target path to download (repeatable; processed in order).
        #[arg(long = "target-name")]
        target_names: Vec<String>,
        #[arg(long)]
        target_base_url: Option<String>,
        #[arg(long)]
        target_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: TufAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TufAction {
    /// Trust this root.json (copied as is, no network).
    Init { root: PathBuf },
    /// Update root, timestamp, snapshot and targets (TUF 1.0 §5.3–§5.6).
    Refresh,
    /// Refresh, then find each --target-name through the delegations and download it
    /// verified into --target-dir.
    Download,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime")
}

fn agent(cli: &Cli) -> Result<Agent> {
    let s = crate::config::load(&cli.root, cli.config.as_deref())?;
    Ok(Agent::new(s, &cli.root))
}

pub fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Provision { boot_dir } => {
            let live = cli.root == std::path::Path::new("/");
            let o = crate::provision::run(&cli.root, boot_dir, live).context("provisioning")?;
            match &o.applied {
                Some(p) => tracing::info!("provisioning applied: {}", p.summary()),
                None => tracing::info!("no provisioning file: using the image's defaults"),
            }
            Ok(())
        }
        Command::K3sPrepare => {
            match crate::k3s_prepare::run(&cli.root).context("preparing K3s")? {
                None => tracing::info!("this image has no K3s"),
                Some(r) => tracing::info!(
                    "K3s prepared: linked {:?}, unlinked {:?}, manifests written {:?}, removed {:?}, import cache {}",
                    r.linked,
                    r.unlinked,
                    r.manifests_written,
                    r.manifests_removed,
                    if r.import_cache { "on" } else { "off" }
                ),
            }
            Ok(())
        }
        Command::Run { once } => {
            let mut a = agent(&cli)?;
            if *once {
                let m = runtime().block_on(crate::daemon::once(&mut a))?;
                println!("{m}");
            } else {
                runtime().block_on(crate::daemon::run(a))?;
            }
            Ok(())
        }
        Command::Status => status(&cli),
        Command::History => {
            let a = agent(&cli)?;
            for e in a.dir.history() {
                let t = time::OffsetDateTime::from_unix_timestamp(e.time).map(|t| t.to_string()).unwrap_or_default();
                println!("{t}  {:<12} {}", e.state, e.detail);
            }
            Ok(())
        }
        Command::Check { install } => {
            let mut a = agent(&cli)?;
            let rt = runtime();
            let (outcome, plan) = rt.block_on(a.check(None, None))?;
            match (&outcome, plan) {
                (CheckOutcome::Install(what), Some(plan)) if *install => {
                    println!("installing {what}");
                    rt.block_on(a.install(&plan))?;
                    println!("{what} staged; it is tried at the next reboot");
                }
                (CheckOutcome::Install(what), _) => println!("update available: {what} (run with --install)"),
                (o, _) => println!("{o}"),
            }
            Ok(())
        }
        Command::Install { repository, version, image, reboot } => {
            let mut a = agent(&cli)?;
            let p = a.dir.load()?;
            let image = image.clone().unwrap_or_else(|| a.running(&p).image);
            let rt = runtime();
            let (_, plan) = rt.block_on(a.check(Some(repository), Some((&image, version))))?;
            let plan = plan.ok_or_else(|| {
                anyhow::anyhow!(
                    "the clock is not synchronised yet; the repository's signatures cannot be checked for expiry"
                )
            })?;
            rt.block_on(a.install(&plan))?;
            println!("{image} {version} staged");
            if *reboot {
                a.maybe_reboot(true)?;
            }
            Ok(())
        }
        Command::Commit => {
            let mut a = agent(&cli)?;
            println!("{}", a.commit()?);
            Ok(())
        }
        Command::Committed => {
            match agent(&cli).and_then(|a| Ok(a.boot.is_trial()?)) {
                Ok(true) => {
                    println!("this boot is a trial, not committed yet");
                    // ExecCondition=: 1 skips the unit without failing it.
                    std::process::exit(1)
                }
                Ok(false) => println!("this boot is committed"),
                Err(e) => {
                    tracing::warn!("cannot tell whether this boot is committed ({e:#}); answering that it is");
                    println!("committed (unknown: {e:#})");
                }
            }
            Ok(())
        }
        Command::Rollback { no_reboot } => {
            let a = agent(&cli)?;
            let other = a.boot.booted_slot()?.other();
            a.boot.set_default(other).with_context(|| format!("slot {other} cannot take over"))?;
            a.dir.log("rollback", &format!("operator made slot {other} the default"));
            println!("slot {other} is the default now");
            if !no_reboot {
                let cmd = &a.settings.reboot_command;
                std::process::Command::new(&cmd[0]).args(&cmd[1..]).status()?;
            }
            Ok(())
        }
        Command::Health => health(&cli),
        Command::Metrics => {
            print!("{}", crate::metrics::render(&agent(&cli)?));
            Ok(())
        }
        Command::Measure => measure(&cli),
        Command::TufClient { metadata_dir, metadata_url, target_names, target_base_url, target_dir, action } => {
            use crate::tuf::conformance::{Action, Args};
            let action = match action {
                TufAction::Init { root } => Action::Init(root.clone()),
                TufAction::Refresh => Action::Refresh,
                TufAction::Download => Action::Download,
            };
            runtime().block_on(crate::tuf::conformance::run(Args {
                metadata_dir: metadata_dir.clone(),
                metadata_url: metadata_url.clone(),
                target_names: target_names.clone(),
                target_base_url: target_base_url.clone(),
                target_dir: target_dir.clone(),
                action,
            }))
        }
    }
}

fn measure(cli: &Cli) -> Result<()> {
    let a = agent(cli)?;
    let tpm = match crate::tpm::open(&a.settings, &cli.root) {
        Ok(t) => t,
        Err(why) => {
            tracing::info!("not measured: {why}");
            return Ok(());
        }
    };
    // Once per boot: a second extend would make PCR 15 match no release.
    let marker = cli.root.join("run/edgeimg/measured");
    let boot_id = crate::state::boot_id(&cli.root);
    if std::fs::read_to_string(&marker).is_ok_and(|b| b == boot_id) {
        tracing::info!("already measured in this boot");
        return Ok(());
    }
    let cmdline = std::fs::read_to_string(cli.root.join("proc/cmdline")).context("reading /proc/cmdline")?;
    let root_hash = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("roothash="))
        .context("the kernel command line has no roothash= (not a verity-protected edgeimg slot)")?;
    let running = a.running(&a.dir.load()?);
    // The marker first: a power cut after it and before the extend leaves PCR 15 at zero,
    // which attests as "unknown" (safe); the other order could measure twice.
    crate::fsutil::atomic_write(&marker, boot_id.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", marker.display()))?;
    let pcr = tpm.measure(&running.image, &running.version, root_hash).map_err(anyhow::Error::msg)?;
    tracing::info!("measured {} {} (root hash {root_hash}) into PCR 15: {pcr}", running.image, running.version);
    Ok(())
}

/// Exit non-zero only for a trial boot whose checks failed: the unit's FailureAction then
/// reboots into the previous slot. Anything else (no trial, or the updater cannot even
/// read its configuration) exits 0, so a committed slot is never rebooted in a loop.
fn health(cli: &Cli) -> Result<()> {
    let mut a = match agent(cli) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("cannot load the updater configuration ({e:#}); not judging this boot (a trial boot stays uncommitted and falls back at the next reboot)");
            return Ok(());
        }
    };
    let trial = match a.boot.is_trial() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot tell whether this is a trial boot ({e}); not judging it");
            return Ok(());
        }
    };
    let checks = crate::health::checks(&a.settings, &cli.root);
    let results = runtime().block_on(crate::health::run_all(&checks, a.settings.health_deadline, &a.http));
    for r in &results {
        tracing::info!("health {}: {} ({})", r.check, if r.ok { "ok" } else { "FAILED" }, r.detail);
    }
    // Kept for the reports (the fleet view shows them), before anything is committed.
    if let Err(e) = crate::health::save(&a.settings.state_dir, &crate::state::boot_id(&cli.root), &results) {
        tracing::warn!("could not keep the health results for the reports: {e}");
    }
    let ok = results.iter().all(|r| r.ok);
    if !trial {
        if !ok {
            tracing::warn!("health checks failed on a committed slot: reported, no reboot");
        }
        return Ok(());
    }
    if ok {
        println!("{}", a.commit()?);
        if a.settings.drain {
            crate::k3s_drain::uncordon(&cli.root);
        }
        Ok(())
    } else {
        let failed: Vec<String> =
            results.iter().filter(|r| !r.ok).map(|r| format!("{}: {}", r.check, r.detail)).collect();
        a.fail_trial(&format!("health checks failed: {}", failed.join("; ")))?;
        anyhow::bail!("health checks failed on the trial boot; giving it up")
    }
}

fn status(cli: &Cli) -> Result<()> {
    let a = agent(cli)?;
    let p = a.dir.load()?;
    let booted = a.boot.booted_slot()?;
    let slots = a.boot.status()?;
    let running = a.running(&p);
    let tpm = crate::tpm::open(&a.settings, &cli.root);
    let mut floor = p.security_floor;
    let weaker = "kept only in the state file on /data: weaker, a wiped or restored /data resets it";
    let (storage, floor_note) = match &tpm {
        Ok(t) => match t.floor() {
            Ok(f) => {
                floor = floor.max(f);
                ("tpm-nv", format!("kept in TPM NV storage ({}) and the state file", t.tcti))
            }
            Err(e) => ("state-file", format!("{weaker} (the TPM {} cannot be read: {e})", t.tcti)),
        },
        Err(why) => ("state-file", format!("{weaker} ({why})")),
    };
    if cli.json {
        let v = serde_json::json!({
            "device_id": a.device_id(),
            "board": a.settings.board,
            "channel": a.settings.channel,
            "booted_slot": booted,
            "trial": a.boot.is_trial()?,
            "running": running,
            "state": p.state,
            "slots": slots,
            "installed": p.slots,
            "security_floor": floor,
            "security_floor_storage": storage,
            "failed": p.failed,
            "last_check": p.last_check,
            "last_error": p.last_error,
            "pending_reports": p.pending_events.len(),
            "boot_backend": a.boot.name(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("device        {} (board {}, channel {})", a.device_id(), a.settings.board, a.settings.channel);
    println!(
        "running       {} {} in slot {booted}{}",
        running.image,
        running.version,
        if a.boot.is_trial()? { " (ON TRIAL)" } else { "" }
    );
    for s in &slots {
        let what = p.slots.get(&s.slot).map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        let st = if s.good {
            "good".to_string()
        } else if let Some(n) = s.tries_left {
            format!("on trial, {n} tries left")
        } else {
            "not bootable".into()
        };
        println!("slot {}        {:<28} {:<24} {}", s.slot, what, st, s.detail);
    }
    let state = match &p.state {
        State::Downloading { manifest, artifact, offset, via, .. } => {
            let how = match via {
                Some(v) => format!("from {} ({offset} bytes of it, {} blocks written)", v.file, v.applied),
                None => format!("{offset} bytes"),
            };
            format!("downloading {} {} (artifact {artifact}, {how})", manifest.image, manifest.version)
        }
        s => s.name().to_string(),
    };
    println!("state         {state}");
    println!("floor         security version {floor} ({floor_note})");
    if !p.failed.is_empty() {
        println!("never retried {}", p.failed.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "));
    }
    if let Some(e) = &p.last_error {
        println!("last error    {e}");
    }
    Ok(())
}
