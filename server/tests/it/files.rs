//! Serving the repository: ranges, entity tags, conditional requests, caching headers,
//! streaming of large targets, and no way out of the repository directories.

use crate::common;

use common::*;
use edgeimg_proto::release::{manifest_target, ReleaseManifest};
use edgeimg_release::Lifetimes;
use reqwest::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request sent byte for byte (clients normalise `..` away; attackers do not).
async fn raw_get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_etags_caching_and_traversal() {
    let mut fx = Fixture::new().await;
    let work = fx.dir.path().join("builds");
    // A root image above the read-in-one-go size, so it is streamed.
    publish_version(&fx.repo, &fx.keys, &work, "1.0.0", 3 << 20, Lifetimes::default()).await;
    fx.start(fx.config()).await;
    let get = |path: &str| fx.http.get(format!("{}{path}", fx.url));

    // Metadata: the bytes on disk, revalidated every time.
    let ts = std::fs::read(fx.repo.metadata_dir().join("timestamp.json")).unwrap();
    let r = get("/tuf/metadata/timestamp.json").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[CACHE_CONTROL], "no-cache");
    assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let etag = r.headers()[ETAG].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "strong tag: {etag}");
    assert_eq!(r.bytes().await.unwrap(), ts);

    // Conditional GET.
    let r = get("/tuf/metadata/timestamp.json").header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()[ETAG].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = get("/tuf/metadata/timestamp.json").header("if-none-match", "\"other\", W/\"x\"").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // HEAD: headers only.
    let r = fx.http.head(format!("{}/tuf/metadata/timestamp.json", fx.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[CONTENT_LENGTH], ts.len().to_string().as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    // Ranges on metadata.
    let len = ts.len();
    for (range, want) in
        [("bytes=0-9", 0..10), ("bytes=10-", 10..len), ("bytes=-7", len - 7..len), ("bytes=5-999999", 5..len)]
    {
        let r = get("/tuf/metadata/timestamp.json").header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        let cr = r.headers()[CONTENT_RANGE].to_str().unwrap().to_string();
        assert_eq!(cr, format!("bytes {}-{}/{len}", want.start, want.end - 1), "{range}");
        assert_eq!(r.bytes().await.unwrap(), ts[want], "{range}");
    }
    let r = get("/tuf/metadata/timestamp.json").header("range", format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()[CONTENT_RANGE].to_str().unwrap(), format!("bytes */{len}"));
    // Several ranges: the whole file (allowed by RFC 9110).
    let r = get("/tuf/metadata/timestamp.json").header("range", "bytes=0-1,4-5").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A large target: immutable, tagged by its hash, streamed, resumable.
    let manifest_name = manifest_target(IMAGE, BOARD, "1.0.0");
    let tuf = fx.tuf_client(&fx.dir.path().join("store")).await.unwrap();
    let m: ReleaseManifest = serde_json::from_slice(&read_target(&tuf, &manifest_name).await.unwrap()).unwrap();
    let root = m.artifact_named("root.img").unwrap();
    let path = format!("/tuf/targets/{}.{}", root.sha256, root.target);
    let disk = std::fs::read(work.join(format!("{BOARD}-{IMAGE}-1.0.0/payload/root.img"))).unwrap();
    assert!(disk.len() > 2 << 20);
    let r = get(&path).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[CACHE_CONTROL], "public, max-age=31536000, immutable");
    assert_eq!(r.headers()[ETAG].to_str().unwrap(), format!("\"{}\"", root.sha256));
    assert_eq!(r.headers()[CONTENT_TYPE], "application/octet-stream");
    let body = r.bytes().await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&body)), root.sha256);
    let (a, b) = (1_000_001usize, 2_500_000usize);
    let r = get(&path).header("range", format!("bytes={a}-{b}")).send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()[CONTENT_LENGTH], (b - a + 1).to_string().as_str());
    assert_eq!(r.bytes().await.unwrap(), disk[a..=b]);
    // If-Range: a range only while the file is the one the client has.
    let tag = format!("\"{}\"", root.sha256);
    let r = get(&path).header("range", "bytes=100-").header("if-range", &tag).send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), disk[100..]);
    let r = get(&path).header("range", "bytes=100-").header("if-range", "\"stale\"").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), disk.len());

    // Not found, and nothing outside the two directories.
    assert_eq!(get("/tuf/metadata/99.root.json").send().await.unwrap().status(), 404);
    assert_eq!(get("/tuf/targets/nothing-here").send().await.unwrap().status(), 404);
    let addr = fx.url.trim_start_matches("http://").to_string();
    let secret = std::fs::read_to_string(fx.online.join("timestamp.pk8")).unwrap_or_default();
    for p in [
        "/tuf/metadata/../../online/root.json",
        "/tuf/metadata/..%2F..%2Fonline%2Froot.json",
        "/tuf/metadata/%2e%2e%2f%2e%2e%2fonline%2froot.json",
        "/tuf/targets/..%2Fmetadata%2F1.root.json",
        "/tuf/metadata/.lock",
        "/tuf/metadata/%2Fetc%2Fpasswd",
        "/tuf/targets/..",
        "/tuf/metadata/..%5C..%5Conline%5Croot.json",
    ] {
        let resp = raw_get(&addr, p).await;
        let status: u16 = resp.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(status == 400 || status == 404, "{p}: {resp}");
        assert!(
            !resp.contains("\"signed\"") && !resp.contains("root:") && (secret.is_empty() || !resp.contains(&secret)),
            "{p}"
        );
    }
    // The state directory (fleet database) is not served either.
    assert_eq!(get("/tuf/metadata/..%2F..%2Fstate%2Ffleet.sqlite").send().await.unwrap().status(), 400);

    let metrics = fx.get_text("/metrics").await;
    assert!(metrics.contains("edgeimg_tuf_requests_total{area=\"metadata\",status=\"206\"}"), "{metrics}");
    assert!(metrics.contains("edgeimg_tuf_requests_total{area=\"targets\",status=\"200\"}"));
    fx.stop().await;
}
