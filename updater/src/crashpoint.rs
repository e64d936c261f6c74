//! Simulated power cuts for tests: with `EDGEIMG_TEST_CRASH_AT=<point>` (or `<point>#<k>`
//! for its k-th occurrence) the process aborts right after persisting that state (no destructors, no flushing: like pulling the plug),
//! and with `EDGEIMG_TEST_CRASH_AFTER_BYTES=<n>` once a slot write passes byte n.
//! Unset (always, on devices) they cost one environment lookup per process.

use std::sync::OnceLock;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn hit(point: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static AT: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static SEEN: AtomicU32 = AtomicU32::new(0);
    let at = AT.get_or_init(|| {
        var("EDGEIMG_TEST_CRASH_AT").map(|v| match v.split_once('#') {
            Some((p, k)) => (p.to_string(), k.parse().unwrap_or(1)),
            None => (v, 1),
        })
    });
    if let Some((p, k)) = at {
        if p == point && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *k {
            eprintln!("edgeimg-updater: simulated power cut after `{point}` #{k}");
            std::process::abort();
        }
    }
}

pub fn bytes(done: u64) {
    static AFTER: OnceLock<Option<u64>> = OnceLock::new();
    if let Some(n) = *AFTER.get_or_init(|| var("EDGEIMG_TEST_CRASH_AFTER_BYTES").and_then(|v| v.parse().ok())) {
        if done >= n {
            eprintln!("edgeimg-updater: simulated power cut after {done} bytes");
            std::process::abort();
        }
    }
}
