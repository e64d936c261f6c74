//! Progress for long jobs: bars on a terminal, JSON lines for machines, plain log lines otherwise.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

/// One thing that happened during a job. Serialized as one JSON object per line with `--json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A step began.
    Start {
        step: String,
        message: String,
    },
    /// Units of work done in a step (bytes unless the step says otherwise).
    Progress {
        step: String,
        done: u64,
        total: Option<u64>,
    },
    /// A line of output from a tool in this step (shown under the spinner).
    Output {
        step: String,
        line: String,
    },
    /// A step ended successfully.
    Finish {
        step: String,
        seconds: f64,
        detail: String,
    },
    Warning {
        message: String,
    },
    /// The whole job succeeded.
    Done {
        summary: serde_json::Value,
    },
    /// The whole job failed.
    Failed {
        error: String,
    },
}

pub trait Reporter: Send + Sync {
    fn event(&self, e: Event);
}

/// Helpers that keep call sites short.
pub trait ReporterExt: Reporter {
    fn start(&self, step: &str, message: impl Into<String>) -> Instant {
        self.event(Event::Start { step: step.into(), message: message.into() });
        Instant::now()
    }
    fn finish(&self, step: &str, started: Instant, detail: impl Into<String>) -> f64 {
        let seconds = started.elapsed().as_secs_f64();
        self.event(Event::Finish { step: step.into(), seconds, detail: detail.into() });
        seconds
    }
    fn progress(&self, step: &str, done: u64, total: Option<u64>) {
        self.event(Event::Progress { step: step.into(), done, total });
    }
    fn output(&self, step: &str, line: &str) {
        self.event(Event::Output { step: step.into(), line: line.into() });
    }
    fn warn(&self, message: impl Into<String>) {
        self.event(Event::Warning { message: message.into() });
    }
}
impl<T: Reporter + ?Sized> ReporterExt for T {}

/// `--json`: one event per line on stdout, flushed at once.
pub struct JsonReporter;

impl Reporter for JsonReporter {
    fn event(&self, e: Event) {
        if matches!(e, Event::Output { .. }) {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &e);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

/// No terminal and no `--json`: step lines through tracing.
pub struct LogReporter;

impl Reporter for LogReporter {
    fn event(&self, e: Event) {
        match e {
            Event::Start { step, message } => tracing::info!(step, "{message}"),
            Event::Finish { step, seconds, detail } => {
                tracing::info!(step, seconds = format!("{seconds:.1}"), "done {detail}")
            }
            Event::Output { step, line } => tracing::debug!(step, "{line}"),
            Event::Warning { message } => tracing::warn!("{message}"),
            // The caller prints the error itself.
            Event::Failed { .. } | Event::Progress { .. } | Event::Done { .. } => {}
        }
    }
}

/// Interactive terminal: a spinner or bar per running step, a line per finished one.
pub struct TerminalReporter {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Default for TerminalReporter {
    fn default() -> Self {
        Self { multi: MultiProgress::new(), bars: Mutex::new(HashMap::new()) }
    }
}

impl TerminalReporter {
    fn spinner_style() -> ProgressStyle {
        ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {msg} {elapsed:.dim}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
    }
    fn bar_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "{spinner:.cyan} {prefix:.bold} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
    }
}

impl Reporter for TerminalReporter {
    fn event(&self, e: Event) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            Event::Start { step, message } => {
                let pb = self.multi.add(ProgressBar::new_spinner());
                pb.set_style(Self::spinner_style());
                pb.set_prefix(step.clone());
                pb.set_message(message);
                pb.enable_steady_tick(Duration::from_millis(120));
                bars.insert(step, pb);
            }
            Event::Progress { step, done, total } => {
                if let Some(pb) = bars.get(&step) {
                    if let Some(t) = total {
                        if pb.length() != Some(t) {
                            pb.set_style(Self::bar_style());
                            pb.set_length(t);
                        }
                    }
                    pb.set_position(done);
                }
            }
            Event::Output { step, line } => {
                if let Some(pb) = bars.get(&step) {
                    let mut l = line;
                    l.truncate(70);
                    pb.set_message(l);
                }
            }
            Event::Finish { step, seconds, detail } => {
                if let Some(pb) = bars.remove(&step) {
                    pb.finish_and_clear();
                    self.multi.remove(&pb);
                }
                let _ = self.multi.println(format!("  \u{2714} {step:<12} {seconds:>6.1}s  {detail}"));
            }
            Event::Warning { message } => {
                let _ = self.multi.println(format!("  ! {message}"));
            }
            Event::Failed { error } => {
                for (_, pb) in bars.drain() {
                    pb.abandon();
                }
                let _ = self.multi.println(format!("  \u{2718} {error}"));
            }
            Event::Done { .. } => {}
        }
    }
}

/// Pick the reporter: `--json` wins, then a terminal, then plain logs.
pub fn reporter(json: bool) -> Box<dyn Reporter> {
    use std::io::IsTerminal;
    if json {
        Box::new(JsonReporter)
    } else if std::io::stderr().is_terminal() {
        Box::new(TerminalReporter::default())
    } else {
        Box::new(LogReporter)
    }
}

/// A reporter that records events, for tests.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Event>>);

impl Reporter for Recorder {
    fn event(&self, e: Event) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
}
