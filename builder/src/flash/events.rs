//! What `edgeimg flash` tells the user while it works: JSON lines for production-line
//! tools (`--json`), or bars with rate and ETA through the shared progress reporter.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::progress::{Event, Reporter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Zeroing the partition table area so a half-written card never looks complete.
    Wipe,
    /// Writing the image (mapped ranges only, with a block map).
    Write,
    /// Reading the written ranges back from the target and checking them.
    Verify,
    /// Dropping the provisioning file on the boot partition.
    Provision,
    /// Writing and checking the first MiB (partition table), last.
    Finalize,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Wipe => "wipe",
            Phase::Write => "write",
            Phase::Verify => "verify",
            Phase::Provision => "provision",
            Phase::Finalize => "finalize",
        }
    }
}

/// One JSON object per line with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FlashEvent {
    Start {
        image: String,
        target: String,
        /// Decompressed image size, if known up front.
        image_bytes: Option<u64>,
        /// Bytes that will be written (mapped ranges), if known.
        write_bytes: Option<u64>,
        bmap: Option<String>,
    },
    Phase {
        phase: Phase,
        total: Option<u64>,
    },
    Progress {
        phase: Phase,
        done: u64,
        total: Option<u64>,
        bytes_per_second: u64,
        eta_seconds: Option<u64>,
    },
    PhaseDone {
        phase: Phase,
        bytes: u64,
        seconds: f64,
        bytes_per_second: u64,
    },
    Warning {
        message: String,
    },
    Done {
        target: String,
        image_bytes: u64,
        bytes_written: u64,
        bytes_verified: u64,
        seconds: f64,
        provisioned: bool,
    },
    Failed {
        error: String,
        /// Whether anything was written (the first MiB is wiped then).
        partial: bool,
        stopped_at: Option<u64>,
    },
}

pub trait Sink: Sync {
    fn event(&self, e: FlashEvent);
}

/// `--json`: one event per line on stdout, flushed at once.
pub struct JsonSink;

impl Sink for JsonSink {
    fn event(&self, e: FlashEvent) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &e);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

/// Bars (bytes, rate, ETA) on a terminal, log lines otherwise: the shared reporter.
pub struct ReporterSink(pub Box<dyn Reporter>);

impl Sink for ReporterSink {
    fn event(&self, e: FlashEvent) {
        let r = &self.0;
        match e {
            FlashEvent::Start { .. } | FlashEvent::Done { .. } => {}
            FlashEvent::Phase { phase, total } => {
                r.event(Event::Start { step: phase.name().into(), message: describe(phase).into() });
                r.event(Event::Progress { step: phase.name().into(), done: 0, total });
            }
            FlashEvent::Progress { phase, done, total, .. } => {
                r.event(Event::Progress { step: phase.name().into(), done, total })
            }
            FlashEvent::PhaseDone { phase, bytes, seconds, bytes_per_second } => {
                let detail =
                    if bytes == 0 { String::new() } else { format!("{} at {}/s", size(bytes), size(bytes_per_second)) };
                r.event(Event::Finish { step: phase.name().into(), seconds, detail })
            }
            FlashEvent::Warning { message } => r.event(Event::Warning { message }),
            FlashEvent::Failed { error, .. } => r.event(Event::Failed { error }),
        }
    }
}

fn describe(p: Phase) -> &'static str {
    match p {
        Phase::Wipe => "wiping the old partition table",
        Phase::Write => "writing",
        Phase::Verify => "reading back and checking",
        Phase::Provision => "writing the provisioning file",
        Phase::Finalize => "writing the partition table",
    }
}

/// Counts the bytes of one phase and sends progress at most every 200 ms.
pub struct Meter<'a> {
    sink: &'a dyn Sink,
    phase: Phase,
    total: Option<u64>,
    started: Instant,
    last: Instant,
    sent: u64,
    pub done: u64,
}

impl<'a> Meter<'a> {
    pub fn start(sink: &'a dyn Sink, phase: Phase, total: Option<u64>) -> Self {
        sink.event(FlashEvent::Phase { phase, total });
        let now = Instant::now();
        Meter { sink, phase, total, started: now, last: now, sent: 0, done: 0 }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            self.send();
        }
    }

    fn rate(&self) -> u64 {
        let s = self.started.elapsed().as_secs_f64();
        if s > 0.0 {
            (self.done as f64 / s) as u64
        } else {
            0
        }
    }

    fn send(&mut self) {
        self.sent = self.done;
        let rate = self.rate();
        let eta = self.total.filter(|_| rate > 0).map(|t| t.saturating_sub(self.done) / rate);
        self.sink.event(FlashEvent::Progress {
            phase: self.phase,
            done: self.done,
            total: self.total,
            bytes_per_second: rate,
            eta_seconds: eta,
        });
    }

    /// Final progress and the phase's summary; returns the seconds it took.
    pub fn finish(mut self) -> f64 {
        if self.done != self.sent {
            self.send();
        }
        let seconds = self.started.elapsed().as_secs_f64();
        self.sink.event(FlashEvent::PhaseDone {
            phase: self.phase,
            bytes: self.done,
            seconds,
            bytes_per_second: self.rate(),
        });
        seconds
    }
}

/// Events kept in memory (for callers that inspect them afterwards).
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<FlashEvent>>);

impl Sink for Recorder {
    fn event(&self, e: FlashEvent) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
}

/// "1.5 GiB", "300 MiB", "12 KiB", "17 B".
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(17), "17 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(300 << 20), "300 MiB");
        assert_eq!(size(8 << 30), "8.0 GiB");
    }

    #[test]
    fn json_events_are_tagged() {
        let e = FlashEvent::Failed { error: "x".into(), partial: true, stopped_at: Some(4096) };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"failed","error":"x","partial":true,"stopped_at":4096}"#
        );
    }
}
