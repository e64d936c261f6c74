//! systemd's notify protocol (READY=1, WATCHDOG=1, STATUS=...) without a library.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let addr = if let Some(abs) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(abs.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    let (Ok(addr), Ok(sock)) = (addr, UnixDatagram::unbound()) else { return };
    let _ = sock.send_to_addr(msg.as_bytes(), &addr);
}

/// Half the watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(std::time::Duration::from_micros(usec / 2))
}
