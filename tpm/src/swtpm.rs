//! A software TPM for tests: `swtpm` in socket mode on 127.0.0.1 with its own state
//! directory (kept across restarts, like a TPM's NV and seeds), killed on drop.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Swtpm {
    child: Child,
    pub port: u16,
}

/// Next port pair to try: tests in one process run in parallel, and two of them picking the
/// same free pair before either swtpm binds it would share one TPM. Each process walks its
/// own range (from its pid), so pairs are never handed out twice.
static NEXT_PAIR: AtomicU32 = AtomicU32::new(0);

fn free_port_pair() -> u16 {
    // swtpm needs two consecutive ports (data, control), here in 20000..64000.
    let start = std::process::id() % 22_000;
    for _ in 0..500 {
        let pair = (start + NEXT_PAIR.fetch_add(1, Ordering::SeqCst)) % 22_000;
        let p = 20_000 + 2 * pair as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two free consecutive ports on 127.0.0.1");
}

impl Swtpm {
    /// Start swtpm on `state` (kept across restarts: a TPM's NV and seeds).
    pub fn start(state: &Path) -> Self {
        std::fs::create_dir_all(state).unwrap();
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .args(["--server", &format!("type=tcp,port={port},bindaddr=127.0.0.1")])
            .args(["--ctrl", &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1)])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("swtpm is installed (apt-get install swtpm)");
        let mut child = child;
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "swtpm did not listen on {port}");
            assert!(child.try_wait().unwrap().is_none(), "swtpm exited before listening on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
