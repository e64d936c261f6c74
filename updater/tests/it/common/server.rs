//! A small HTTP/1.1 file server on 127.0.0.1 for the repository, with Range support and
//! faults on demand: cut every connection after N body bytes (a flaky link), or send
//! endless data for one path.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Default)]
pub struct Faults {
    /// Close each response after this many body bytes (0 = never).
    pub cut_every: Arc<AtomicU64>,
    /// Paths (suffix match) answered with endless bytes.
    pub endless: Arc<Mutex<Vec<String>>>,
    /// Total body bytes sent.
    pub sent: Arc<AtomicU64>,
    /// Requests served.
    pub requests: Arc<AtomicU64>,
}

pub struct Server {
    pub addr: SocketAddr,
    pub faults: Faults,
    _thread: std::thread::JoinHandle<()>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn decode(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&p[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(mut sock: tokio::net::TcpStream, root: PathBuf, f: Faults) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if req.len() > 64 * 1024 {
            return;
        }
    }
    f.requests.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&req).into_owned();
    let mut lines = text.lines();
    let path = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/").to_string();
    let range = lines.find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(String::from));
    let path = decode(path.trim_start_matches('/'));
    if path.split('/').any(|c| c == "..") {
        let _ = sock.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        return;
    }
    if f.endless.lock().unwrap().iter().any(|e| path.ends_with(e.as_str())) {
        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await;
        let chunk = vec![0x5au8; 64 * 1024];
        for _ in 0..100_000 {
            if sock.write_all(&chunk).await.is_err() {
                return;
            }
            f.sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        return;
    }
    let data = match std::fs::read(root.join(&path)) {
        Ok(d) => d,
        Err(_) => {
            let _ = sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            return;
        }
    };
    let (status, start, end) = match range.and_then(|r| {
        let (a, b) = r.trim().split_once('-')?;
        let a: u64 = a.parse().ok()?;
        let b: u64 = if b.is_empty() { data.len() as u64 - 1 } else { b.parse().ok()? };
        Some((a, b))
    }) {
        Some((a, _)) if a >= data.len() as u64 => {
            let _ = sock
                .write_all(
                    format!(
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\n\r\n",
                        data.len()
                    )
                    .as_bytes(),
                )
                .await;
            return;
        }
        Some((a, b)) => ("206 Partial Content", a as usize, (b as usize).min(data.len() - 1) + 1),
        None => ("200 OK", 0, data.len()),
    };
    let body = &data[start..end];
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n", body.len());
    if status.starts_with("206") {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{}\r\n", end - 1, data.len()));
    }
    head.push_str("\r\n");
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let cut = f.cut_every.load(Ordering::SeqCst);
    let limit = if cut > 0 { (cut as usize).min(body.len()) } else { body.len() };
    for piece in body[..limit].chunks(256 * 1024) {
        if sock.write_all(piece).await.is_err() {
            return;
        }
        f.sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
    }
    let _ = sock.flush().await;
}

/// Serve `root` on a free port of 127.0.0.1 from a background thread.
pub fn start(root: PathBuf) -> Server {
    let faults = Faults::default();
    let f2 = faults.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            loop {
                let Ok((sock, _)) = l.accept().await else { continue };
                tokio::spawn(handle(sock, root.clone(), f2.clone()));
            }
        });
    });
    Server { addr: rx.recv().unwrap(), faults, _thread: thread }
}
