//! Report load generator for `edgeimg serve` (bench/server runs it).
//!
//!     loadgen --url http://127.0.0.1:8080 --token-file FILE [--devices 1000]
//!             [--reports 40000] [--concurrency 64]
//!
//! Enrols `--devices` devices (each with its own ed25519 key) with the fleet token, signs
//! all reports up front (sequence numbers increasing per device; one in four carries an
//! install event), then sends them with `--concurrency` requests in flight. Each device's
//! reports go out in order from one worker, so none is refused as replayed. Prints
//! reports/s and latency percentiles, and a last line `reports_per_sec=… p99_ms=…`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use edgeimg_proto::report::{self, Enrollment, Event, EventKind, HealthResult, Report};
use edgeimg_proto::Slot;
use sha2::{Digest, Sha256};

struct Args {
    url: String,
    token: String,
    devices: usize,
    reports: usize,
    concurrency: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { url: String::new(), token: String::new(), devices: 1000, reports: 40_000, concurrency: 64 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val()?.trim_end_matches('/').to_string(),
            "--token-file" => {
                let p = val()?;
                a.token = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?.trim().to_string();
            }
            "--devices" => a.devices = val()?.parse()?,
            "--reports" => a.reports = val()?.parse()?,
            "--concurrency" => a.concurrency = val()?.parse()?,
            other => bail!("unknown flag {other} (see the comment at the top of loadgen.rs)"),
        }
    }
    if a.url.is_empty() || a.token.is_empty() {
        bail!("usage: loadgen --url URL --token-file FILE [--devices N] [--reports N] [--concurrency N]");
    }
    a.concurrency = a.concurrency.clamp(1, a.devices.max(1));
    Ok(a)
}

struct Dev {
    id: String,
    key: SigningKey,
}

/// A signed request: body and signature header.
struct Signed {
    device: usize,
    body: bytes::Bytes,
    sig: String,
}

fn report_for(d: &Dev, seq: u64) -> Report {
    let event = seq.is_multiple_of(4).then(|| Event {
        kind: [EventKind::Downloading, EventKind::Installed, EventKind::Trying, EventKind::Committed]
            [(seq / 4 % 4) as usize],
        image: "bench".into(),
        version: "1.0.1".into(),
        detail: String::new(),
    });
    Report {
        device_id: d.id.clone(),
        seq,
        sent: jiff::Timestamp::now().as_second(),
        board: "qemu-x86_64".into(),
        channel: "bench".into(),
        image: "bench".into(),
        version: "1.0.0".into(),
        slot: Slot::A,
        state: "idle".into(),
        security_floor: 1,
        event,
        health: vec![
            HealthResult { check: "k3s-node-ready".into(), ok: true, detail: String::new() },
            HealthResult { check: "units".into(), ok: true, detail: String::new() },
        ],
        last_error: None,
        attestation: None,
        credential_secret: None,
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args()?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(a.concurrency * 2).build()?;
    let run = jiff::Timestamp::now().as_second();
    let devs: Vec<Dev> = (0..a.devices)
        .map(|i| {
            let id = format!("lg-{run}-{i}");
            let key = SigningKey::from_bytes(&Sha256::digest(format!("loadgen:{id}")).into());
            Dev { id, key }
        })
        .collect();

    // Enrol (16 at a time).
    let t = Instant::now();
    for chunk in devs.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for d in chunk {
            let e = Enrollment {
                device_id: d.id.clone(),
                public_key: hex::encode(d.key.verifying_key().to_bytes()),
                board: "qemu-x86_64".into(),
                image: "bench".into(),
                version: "1.0.0".into(),
                token: Some(a.token.clone()),
                tpm: None,
            };
            let body = serde_json::to_vec(&e)?;
            let req = http
                .post(format!("{}/api/v1/enroll", a.url))
                .header(report::HEADER_DEVICE, &d.id)
                .header(report::HEADER_SIGNATURE, report::sign(&d.key, &body))
                .body(body);
            set.spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
        }
        while let Some(r) = set.join_next().await {
            let s = r??;
            if s != 201 && s != 200 {
                bail!("enrollment answered HTTP {s}: is the token right?");
            }
        }
    }
    eprintln!("enrolled {} devices in {:.1} s", devs.len(), t.elapsed().as_secs_f64());

    // Sign everything up front: the measurement is the server's, not the signer's.
    let per_device = a.reports.div_ceil(a.devices.max(1)).max(1) as u64;
    let t = Instant::now();
    let mut queues: Vec<Vec<Signed>> = (0..a.concurrency).map(|_| Vec::new()).collect();
    for seq in 1..=per_device {
        for (i, d) in devs.iter().enumerate() {
            let body = bytes::Bytes::from(serde_json::to_vec(&report_for(d, seq))?);
            let sig = report::sign(&d.key, &body);
            queues[i % a.concurrency].push(Signed { device: i, body, sig });
        }
    }
    let total: usize = queues.iter().map(Vec::len).sum();
    eprintln!("signed {total} reports in {:.1} s; sending with {} in flight", t.elapsed().as_secs_f64(), a.concurrency);

    let devs = Arc::new(devs);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for q in queues {
        let (http, url, devs) = (http.clone(), format!("{}/api/v1/report", a.url), devs.clone());
        set.spawn(async move {
            let mut lat = Vec::with_capacity(q.len());
            let mut bad = 0usize;
            for s in q {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .header(report::HEADER_DEVICE, &devs[s.device].id)
                    .header(report::HEADER_SIGNATURE, s.sig)
                    .header("content-type", "application/json")
                    .body(s.body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        bad += 1;
                        if bad <= 3 {
                            let st = r.status();
                            eprintln!("refused: HTTP {st} {}", r.text().await.unwrap_or_default());
                        }
                    }
                    Err(e) => {
                        bad += 1;
                        if bad <= 3 {
                            eprintln!("request failed: {e}");
                        }
                    }
                }
                lat.push(t.elapsed());
            }
            (lat, bad)
        });
    }
    let mut lat = Vec::with_capacity(total);
    let mut bad = 0;
    while let Some(r) = set.join_next().await {
        let (l, b) = r?;
        lat.extend(l);
        bad += b;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let rate = (lat.len() - bad) as f64 / secs;
    println!("reports sent        {}", lat.len());
    println!("refused or failed   {bad}");
    println!("duration            {secs:.2} s");
    println!("reports/s           {rate:.0}");
    println!(
        "latency ms          p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 100.0)
    );
    println!("reports_per_sec={rate:.0} p99_ms={:.2} failed={bad}", pct(&lat, 99.0));
    if bad > 0 {
        bail!("{bad} reports were not accepted");
    }
    Ok(())
}
