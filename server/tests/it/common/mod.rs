//! Shared fixtures: key sets, fake builds published into a repository, a server running
//! in-process on 127.0.0.1, simulated devices (own ed25519 key, signed reports), and a
//! device-side TUF client (tough over HTTP from the server).

#![allow(dead_code)]

pub mod seed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use edgeimg_proto::channel::{channel_target, Channel};
use edgeimg_proto::payload::{Artifact, ArtifactKind, BootFile, Payload, SlotBoot, PAYLOAD_FORMAT};
use edgeimg_proto::report::{
    self, Enrollment, Event, EventKind, HealthResult, Report, HEADER_DEVICE, HEADER_SIGNATURE,
};
use edgeimg_proto::Slot;
use edgeimg_release::keys::{self, InitOptions};
use edgeimg_release::publish::{publish, PublishOptions};
use edgeimg_release::rollout::{self, Change};
use edgeimg_release::{KeyDir, Lifetimes, Repo};
use edgeimg_server::{Config, Server};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tough::{ExpirationEnforcement, Repository, RepositoryLoader};

pub const BOARD: &str = "qemu-x86_64";
pub const IMAGE: &str = "edge";
pub const ENROLL_TOKEN: &str = "fleet-enroll-token-for-tests-0001";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0002";

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub async fn keyset(dir: &Path) -> KeyDir {
    keys::init(
        dir,
        &InitOptions {
            root_keys: 1,
            root_threshold: 1,
            root_expires: now() + jiff::SignedDuration::from_hours(24 * 365),
            insecure_example: false,
        },
    )
    .await
    .unwrap();
    KeyDir::new(dir)
}

/// The online half of a key set, as the server holds it.
pub fn online_keys(keys: &KeyDir, dest: &Path) -> PathBuf {
    std::fs::create_dir_all(dest).unwrap();
    for f in ["rollout.pk8", "snapshot.pk8", "timestamp.pk8", "root.json"] {
        std::fs::copy(keys.dir.join(f), dest.join(f)).unwrap();
    }
    dest.into()
}

/// A build output directory with a payload whose files are small but real (`root_len`
/// bytes of root image).
pub fn fake_build(dir: &Path, board: &str, image: &str, version: &str, root_len: usize) -> PathBuf {
    let b = dir.join(format!("{board}-{image}-{version}"));
    let p = b.join("payload");
    std::fs::create_dir_all(&p).unwrap();
    let mut artifacts = Vec::new();
    for (name, kind, len) in [
        ("root.img", ArtifactKind::RootImage, root_len),
        ("root.verity", ArtifactKind::VerityTree, 4096),
        ("linux", ArtifactKind::BootFile, 1000),
        ("initrd", ArtifactKind::BootFile, 2000),
    ] {
        let mut content: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ version.len() as u8 ^ name.len() as u8)
            .collect();
        content.extend_from_slice(version.as_bytes());
        std::fs::write(p.join(name), &content).unwrap();
        artifacts.push(Artifact {
            name: name.into(),
            kind,
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(&content)),
        });
    }
    let slots = Slot::ALL
        .iter()
        .map(|&s| {
            let d = s.boot_dir();
            (
                s,
                SlotBoot {
                    cmdline: format!("roothash=00 edgeimg.slot={}", s.letter()),
                    files: vec![
                        BootFile { artifact: "linux".into(), path: format!("{d}/linux") },
                        BootFile { artifact: "initrd".into(), path: format!("{d}/initrd") },
                    ],
                },
            )
        })
        .collect();
    let payload = Payload {
        format: PAYLOAD_FORMAT,
        board: board.into(),
        image: image.into(),
        version: version.into(),
        arch: "amd64".into(),
        build_id: format!("build-{version}"),
        roothash: "ab".repeat(32),
        security_version: 1,
        artifacts,
        slots,
        verity: None,
    };
    std::fs::write(p.join("payload.json"), serde_json::to_vec_pretty(&payload).unwrap()).unwrap();
    b
}

/// Build and publish `version` of the test image for `board`; returns the build directory.
pub async fn publish_for(
    repo: &Repo,
    keys: &KeyDir,
    work: &Path,
    board: &str,
    version: &str,
    root_len: usize,
    life: Lifetimes,
) -> PathBuf {
    let build = fake_build(work, board, IMAGE, version, root_len);
    let opts = PublishOptions {
        build_dir: build.clone(),
        security_version: 1,
        min_updater_version: "0.1.0".into(),
        expected_pcrs: BTreeMap::new(),
        deltas: 3,
        lifetimes: life,
        now: now(),
    };
    publish(repo, keys, &opts).await.unwrap();
    build
}

/// Publish `version` of the test image for the test board.
pub async fn publish_version(repo: &Repo, keys: &KeyDir, work: &Path, version: &str, root_len: usize, life: Lifetimes) {
    publish_for(repo, keys, work, BOARD, version, root_len, life).await;
}

/// What an operator does with `edgeimg rollout`.
pub async fn rollout(repo: &Repo, keys: &KeyDir, change: Change) -> Channel {
    rollout::apply(repo, keys, &change, &Lifetimes::default(), now()).await.unwrap()
}

pub fn change(channel: &str) -> Change {
    Change { channel: channel.into(), board: BOARD.into(), ..Default::default() }
}

/// A temp dir with a key set and a repository, and a server over it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub keys: KeyDir,
    pub online: PathBuf,
    pub repo: Repo,
    pub server: Option<Server>,
    pub url: String,
    pub http: reqwest::Client,
}

impl Fixture {
    /// Keys and an empty repository location; no server yet.
    pub async fn new() -> Self {
        init();
        let dir = tempfile::tempdir().unwrap();
        let keys = keyset(&dir.path().join("keys")).await;
        let online = online_keys(&keys, &dir.path().join("online"));
        let repo = Repo::new(dir.path().join("repo"));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self { dir, keys, online, repo, server: None, url: String::new(), http }
    }

    /// The server configuration tests start from: online keys, both tokens, fast polling.
    pub fn config(&self) -> Config {
        let mut c = Config::new(&self.repo.dir, self.dir.path().join("state"));
        c.listen = "127.0.0.1:0".parse().unwrap();
        c.keys = Some(self.online.clone());
        c.enroll_token = Some(edgeimg_server::config::Secret::new(ENROLL_TOKEN));
        c.admin_token = Some(edgeimg_server::config::Secret::new(ADMIN_TOKEN));
        c.repo_poll = Duration::from_millis(200);
        c
    }

    pub async fn start(&mut self, config: Config) {
        let s = Server::start(config).await.unwrap();
        self.url = s.url();
        self.server = Some(s);
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }

    pub fn root_json(&self) -> PathBuf {
        self.keys.dir.join("root.json")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.http.get(format!("{}{path}", self.url)).send().await.unwrap().text().await.unwrap()
    }

    /// A strict device-side TUF client (expired metadata refused) over HTTP.
    pub async fn tuf_client(&self, datastore: &Path) -> Result<Repository, tough::error::Error> {
        tuf_client_with(&self.url, &self.root_json(), datastore, Some(&self.http)).await
    }

    /// The same with tough's own HTTP transport (feature `http`).
    pub async fn tough_http_client(&self, datastore: &Path) -> Result<Repository, tough::error::Error> {
        tuf_client(&self.url, &self.root_json(), datastore).await
    }

    /// A number from `/metrics` (first sample whose line starts with `prefix`).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.get_text("/metrics").await;
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

/// A device-side TUF client over HTTP. `shared`: fetch with one long-lived HTTP client (as
/// a device daemon does); otherwise with tough's own `http` transport, which builds a new
/// HTTP client (and loads the system's root certificates) for every request: correct, but
/// slow in debug builds, so the fleet simulations use the shared client.
pub async fn tuf_client_with(
    base: &str,
    root: &Path,
    datastore: &Path,
    shared: Option<&reqwest::Client>,
) -> Result<Repository, tough::error::Error> {
    let root = std::fs::read(root).unwrap();
    std::fs::create_dir_all(datastore).unwrap();
    let mut loader = RepositoryLoader::new(
        &root,
        url::Url::parse(&format!("{base}/tuf/metadata/")).unwrap(),
        url::Url::parse(&format!("{base}/tuf/targets/")).unwrap(),
    )
    .expiration_enforcement(ExpirationEnforcement::Safe)
    .datastore(datastore);
    if let Some(c) = shared {
        loader = loader.transport(SharedHttp(c.clone()));
    }
    loader.load().await
}

pub async fn tuf_client(base: &str, root: &Path, datastore: &Path) -> Result<Repository, tough::error::Error> {
    tuf_client_with(base, root, datastore, None).await
}

/// A tough transport over one reqwest client.
#[derive(Debug, Clone)]
pub struct SharedHttp(pub reqwest::Client);

#[async_trait::async_trait]
impl tough::Transport for SharedHttp {
    async fn fetch(&self, url: url::Url) -> Result<tough::TransportStream, tough::TransportError> {
        use tough::{TransportError, TransportErrorKind};
        let r = self
            .0
            .get(url.clone())
            .send()
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e))?;
        match r.status().as_u16() {
            200 => {}
            403 | 404 | 410 => return Err(TransportError::new(TransportErrorKind::FileNotFound, url.as_str())),
            s => {
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url.as_str(),
                    format!("HTTP {s}"),
                ))
            }
        }
        let body =
            r.bytes().await.map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e))?;
        Ok(Box::pin(futures_util::stream::once(async move { Ok(body) })))
    }
}

pub async fn read_target(r: &Repository, name: &str) -> Result<Vec<u8>, String> {
    use futures_util::TryStreamExt;
    let tn = tough::TargetName::new(name).map_err(|e| e.to_string())?;
    let s = r.read_target(&tn).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no target {name}"))?;
    let chunks: Vec<bytes::Bytes> = s.try_collect().await.map_err(|e| format!("{e}"))?;
    Ok(chunks.concat())
}

pub async fn read_channel(r: &Repository, name: &str) -> Channel {
    serde_json::from_slice(&read_target(r, &channel_target(name)).await.unwrap()).unwrap()
}

/// Where simulated devices send their requests: an in-process fixture or a running
/// `edgeimg serve`.
pub trait Endpoint {
    fn base(&self) -> &str;
    fn http(&self) -> &reqwest::Client;
}

impl Endpoint for Fixture {
    fn base(&self) -> &str {
        &self.url
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// A server somewhere else.
pub struct Remote {
    pub url: String,
    pub http: reqwest::Client,
}

impl Remote {
    pub fn new(url: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self { url: url.trim_end_matches('/').into(), http: reqwest::Client::new() }
    }
}

impl Endpoint for Remote {
    fn base(&self) -> &str {
        &self.url
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// A simulated device: its own key (derived from its id, so runs are repeatable), its
/// report counter, what it runs.
pub struct Device {
    pub id: String,
    pub board: String,
    pub key: SigningKey,
    pub seq: u64,
    pub channel: String,
    pub version: String,
    pub state: String,
}

impl Device {
    pub fn new(id: &str, channel: &str, version: &str) -> Self {
        Self::with_key(id, channel, version, id)
    }

    pub fn with_key(id: &str, channel: &str, version: &str, seed: &str) -> Self {
        let key = SigningKey::from_bytes(&Sha256::digest(format!("test-device-key:{seed}")).into());
        Self {
            id: id.into(),
            board: BOARD.into(),
            key,
            seq: 0,
            channel: channel.into(),
            version: version.into(),
            state: "idle".into(),
        }
    }

    pub fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    pub fn enrollment(&self, token: Option<&str>) -> Enrollment {
        Enrollment {
            device_id: self.id.clone(),
            public_key: self.public_key(),
            board: self.board.clone(),
            image: IMAGE.into(),
            version: self.version.clone(),
            token: token.map(String::from),
            tpm: None,
        }
    }

    /// POST a body signed with this device's key.
    pub async fn post_signed(&self, fx: &impl Endpoint, path: &str, body: Vec<u8>) -> (u16, Value) {
        let sig = report::sign(&self.key, &body);
        post_raw(fx, path, Some(&self.id), Some(&sig), body).await
    }

    pub async fn enroll(&self, fx: &impl Endpoint, token: Option<&str>) -> (u16, Value) {
        self.post_signed(fx, "/api/v1/enroll", serde_json::to_vec(&self.enrollment(token)).unwrap()).await
    }

    /// The next report (seq incremented), with an optional event.
    pub fn next_report(&mut self, event: Option<(EventKind, &str)>) -> Report {
        self.seq += 1;
        Report {
            device_id: self.id.clone(),
            seq: self.seq,
            sent: now().as_second(),
            board: self.board.clone(),
            channel: self.channel.clone(),
            image: IMAGE.into(),
            version: self.version.clone(),
            slot: Slot::A,
            state: self.state.clone(),
            security_floor: 1,
            event: event.map(|(kind, v)| Event { kind, image: IMAGE.into(), version: v.into(), detail: String::new() }),
            health: vec![HealthResult { check: "k3s-node-ready".into(), ok: true, detail: String::new() }],
            last_error: None,
            attestation: None,
            credential_secret: None,
        }
    }

    pub async fn send(&self, fx: &impl Endpoint, r: &Report) -> (u16, Value) {
        self.post_signed(fx, "/api/v1/report", serde_json::to_vec(r).unwrap()).await
    }

    /// Send the next report and insist that it is accepted.
    pub async fn report(&mut self, fx: &impl Endpoint, event: Option<(EventKind, &str)>) {
        let r = self.next_report(event);
        let (status, body) = self.send(fx, &r).await;
        assert_eq!(status, 200, "report {} of {}: {body}", r.seq, self.id);
    }
}

pub async fn post_raw(
    fx: &impl Endpoint,
    path: &str,
    device: Option<&str>,
    sig: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = fx.http().post(format!("{}{path}", fx.base())).header("content-type", "application/json").body(body);
    if let Some(d) = device {
        req = req.header(HEADER_DEVICE, d);
    }
    if let Some(s) = sig {
        req = req.header(HEADER_SIGNATURE, s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Poll until `f` is true (or panic after `secs`).
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs} s waiting for: {what}");
}
