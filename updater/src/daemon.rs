//! `edgeimg-updater run`: the service loop.

use std::time::Duration;

use edgeimg_proto::report::{EventKind, Report};

use crate::agent::{Agent, AgentError, CheckOutcome};
use crate::report::{Client, Device, ReportError};
use crate::state::{self, event, ReleaseRef, State};

/// Send pending events (one report each) and the current state. Best effort: what is not
/// accepted stays pending.
pub async fn report(agent: &Agent) -> Result<(), AgentError> {
    let Some(server) = agent.settings.server.clone() else { return Ok(()) };
    let device =
        Device::load_or_create(&agent.settings.state_dir, &agent.root).map_err(|e| AgentError::Other(e.to_string()))?;
    let client = Client { http: &agent.http, server: &server, device: &device };
    let marker = agent.settings.state_dir.join("enrolled");
    let mut p = agent.dir.load()?;
    let running = agent.running(&p);
    // The TPM, when the image has edgeimg-tpm and the device a TPM: its attestation key is
    // enrolled, and the server's nonces are answered with quotes of PCR 15.
    let tpm = crate::tpm::open(&agent.settings, &agent.root).ok();
    let tpm_dir = agent.settings.state_dir.join("tpm");
    // The marker names the server and whether the TPM identity went with the enrollment, so
    // a device whose TPM shows up later (or failed before) enrolls it.
    let enrolled_as = |with_tpm: bool| if with_tpm { format!("{server}\ntpm") } else { server.clone() };
    if std::fs::read_to_string(&marker).ok() != Some(enrolled_as(tpm.is_some())) {
        // The configured token file, else the one the provisioning file left, else the
        // state directory's (put there by hand).
        let token = [
            agent.settings.enroll_token_file.clone(),
            Some(crate::fsutil::at(&agent.root, crate::provision::ENROLL_TOKEN)),
            Some(agent.settings.state_dir.join("enroll-token")),
        ]
        .into_iter()
        .flatten()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
        let e = edgeimg_proto::report::Enrollment {
            device_id: device.id.clone(),
            public_key: device.public_key_hex(),
            board: agent.settings.board.clone(),
            image: running.image.clone(),
            version: running.version.clone(),
            token,
            tpm: tpm.as_ref().and_then(|t| match t.identity(&tpm_dir) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!("enrolling without TPM attestation: {e}");
                    None
                }
            }),
        };
        match client.enroll(&e).await {
            Ok(()) => {
                crate::fsutil::atomic_write(&marker, enrolled_as(e.tpm.is_some()).as_bytes(), 0o644)
                    .map_err(|e| AgentError::Other(e.to_string()))?;
                tracing::info!("enrolled as {} with {server}", device.id);
            }
            Err(ReportError::Pending) => {
                tracing::info!("enrollment of {} is waiting for approval on {server}", device.id);
                return Ok(());
            }
            Err(e) => return Err(AgentError::Other(e.to_string())),
        }
    }
    let slot = agent.boot.booted_slot()?;
    let boot_id = state::boot_id(&agent.root);
    let mut events: Vec<Option<edgeimg_proto::report::Event>> = p.pending_events.iter().cloned().map(Some).collect();
    if events.is_empty() {
        events.push(None);
    }
    let mut events = events.into_iter();
    let mut nonce: Option<String> = None;
    let mut challenge: Option<edgeimg_proto::attest::CredentialChallenge> = None;
    let (mut attested, mut activated) = (false, false);
    loop {
        // Pending events first (one report each), then the answer to a credential challenge
        // (binds the AK to the EK), then a quote if the server asked for one.
        let (ev, attestation, credential_secret) = match events.next() {
            Some(ev) => (ev, None, None),
            None => match (challenge.take(), nonce.take(), &tpm) {
                (Some(c), _, Some(t)) if !activated => {
                    activated = true;
                    match t.activate(&tpm_dir, &c) {
                        Ok(secret) => {
                            tracing::info!("binding the attestation key to the TPM's endorsement key");
                            (None, None, Some(secret))
                        }
                        Err(e) => {
                            tracing::warn!("the server's credential challenge: {e}");
                            break;
                        }
                    }
                }
                (_, Some(n), Some(t)) if !attested => {
                    attested = true;
                    match t.quote(&tpm_dir, &n) {
                        Ok(a) => {
                            tracing::info!(
                                "attesting {} {} with a TPM quote of PCR 15",
                                running.image,
                                running.version
                            );
                            (None, Some(a), None)
                        }
                        Err(e) => {
                            tracing::warn!("the server asked for a TPM quote: {e}");
                            break;
                        }
                    }
                }
                _ => break,
            },
        };
        // The sequence number is persisted before sending: a crash never reuses one.
        p.report_seq += 1;
        agent.dir.save(&p)?;
        let r = Report {
            device_id: device.id.clone(),
            seq: p.report_seq,
            sent: state::now(),
            board: agent.settings.board.clone(),
            channel: agent.settings.channel.clone(),
            image: running.image.clone(),
            version: running.version.clone(),
            slot,
            state: p.state.name().into(),
            security_floor: p.security_floor,
            event: ev.clone(),
            health: crate::health::load(&agent.settings.state_dir, &boot_id),
            last_error: p.last_error.clone(),
            attestation,
            credential_secret,
        };
        let reply = client.report(&r).await.map_err(|e| AgentError::Other(e.to_string()))?;
        nonce = reply.attest_nonce;
        challenge = reply.credential;
        if ev.is_some() {
            p.pending_events.remove(0);
            agent.dir.save(&p)?;
        }
    }
    Ok(())
}

/// Failures that say something about the release (not the network): recorded and, when
/// permanent, remembered so the release is not tried again.
fn classify(agent: &Agent, e: &AgentError) -> Result<(), AgentError> {
    let mut p = agent.dir.load()?;
    let (release, permanent) = match (e, &p.state) {
        (AgentError::Refused { release, .. }, _) => (release.clone(), true),
        (AgentError::Install(ie), State::Downloading { manifest, .. }) => match ie {
            crate::install::InstallError::Network { .. } => return Ok(()),
            _ => (format!("{} {}", manifest.image, manifest.version), false),
        },
        _ => return Ok(()),
    };
    let (image, version) = release.split_once(' ').unwrap_or((&release, ""));
    let rel = ReleaseRef { image: image.into(), version: version.into(), security_version: 0 };
    if permanent && !p.failed.contains(&rel) {
        p.failed.push(rel.clone());
    }
    p.last_error = Some(e.to_string());
    if matches!(p.state, State::Downloading { .. } | State::Verified { .. }) {
        p.state = State::Idle;
    }
    event(&mut p, EventKind::Failed, &rel, e.to_string());
    agent.dir.save(&p)?;
    agent.dir.log("failed", &e.to_string());
    Ok(())
}

/// One pass: reconcile, report, check/install/resume, maybe reboot.
pub async fn once(agent: &mut Agent) -> Result<String, AgentError> {
    let msg = agent.reconcile()?;
    tracing::info!("{msg}");
    if let Err(e) = report(agent).await {
        tracing::warn!("reporting: {e}");
    }
    let p = agent.dir.load()?;
    let window_ok = agent.settings.download_window.is_none_or(|w| crate::config::in_window(w, minute_of_day()));
    let step: Result<String, AgentError> = match &p.state {
        State::Idle if agent.settings.repository.is_none() => {
            Ok("no update server configured: idle (edgeimg-updater install <repository> works)".into())
        }
        State::Idle if window_ok => match agent.check(None, None).await {
            Ok((CheckOutcome::Install(what), Some(plan))) => {
                tracing::info!("installing {what}");
                agent.install(&plan).await.map(|_| format!("{what} staged"))
            }
            Ok((o, _)) => Ok(o.to_string()),
            Err(e) => Err(e),
        },
        State::Downloading { manifest, .. } | State::Verified { manifest, .. } => {
            let (image, version) = (manifest.image.clone(), manifest.version.clone());
            match agent.check(None, Some((&image, &version))).await {
                Ok((_, Some(plan))) => {
                    agent.install(&plan).await.map(|_| format!("{image} {version} staged (resumed)"))
                }
                Ok((o, _)) => Ok(format!("resume waits: {o}")),
                Err(e) => Err(e),
            }
        }
        State::Idle => Ok("outside the download window".into()),
        s => Ok(format!("state {}", s.name())),
    };
    match step {
        Ok(m) => {
            tracing::info!("{m}");
            // Report what the step did before a possible reboot (the trying event follows
            // from the new boot); a staged update never waits long for the server.
            if matches!(agent.dir.load()?.state, State::Staged { .. }) {
                match tokio::time::timeout(Duration::from_secs(15), report(agent)).await {
                    Ok(Err(e)) => tracing::warn!("reporting before the reboot: {e}"),
                    Err(_) => tracing::warn!("reporting before the reboot: no answer in 15 s"),
                    Ok(Ok(())) => {}
                }
            } else {
                let _ = report(agent).await;
            }
            if agent.maybe_reboot(false)? {
                return Ok("rebooting".into());
            }
            Ok(m)
        }
        Err(e) => {
            tracing::warn!("{e}");
            classify(agent, &e)?;
            let _ = report(agent).await;
            Err(e)
        }
    }
}

fn minute_of_day() -> u32 {
    let t = time::OffsetDateTime::now_local().unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    t.hour() as u32 * 60 + t.minute() as u32
}

pub async fn run(mut agent: Agent) -> Result<(), AgentError> {
    if let Some(addr) = agent.settings.metrics_listen {
        crate::metrics::spawn(addr, agent.settings.clone(), agent.root.clone()).await;
    }
    crate::sdnotify::notify("READY=1\nSTATUS=starting");
    if let Some(iv) = crate::sdnotify::watchdog_interval() {
        tokio::spawn(async move {
            loop {
                crate::sdnotify::notify("WATCHDOG=1");
                tokio::time::sleep(iv).await;
            }
        });
    }
    loop {
        let status = match once(&mut agent).await {
            Ok(m) => m,
            Err(e) => format!("error: {e}"),
        };
        crate::sdnotify::notify(&format!("STATUS={status}"));
        tokio::time::sleep(agent.settings.poll_interval.max(Duration::from_secs(5))).await;
    }
}
