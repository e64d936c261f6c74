//! Device authentication: enrollment (token, pending, approval, key change) and every way
//! a report is refused, each with a 4xx, a reason, and no change to the fleet state.

use crate::common;

use common::*;
use edgeimg_proto::report::{self, EventKind, MAX_BODY};
use edgeimg_release::Lifetimes;
use serde_json::Value;

async fn fixture() -> Fixture {
    let mut fx = Fixture::new().await;
    let work = fx.dir.path().join("builds");
    publish_version(&fx.repo, &fx.keys, &work, "1.0.0", 10_000, Lifetimes::default()).await;
    fx.start(fx.config()).await;
    fx
}

/// Everything the server knows about a device, plus the fleet-wide counts.
async fn state(fx: &Fixture, id: &str) -> (Value, Value, Option<f64>) {
    let (_, dev) = fx.get_json(&format!("/api/v1/devices/{id}")).await;
    let (_, all) = fx.get_json("/api/v1/devices").await;
    (dev, all, fx.metric("edgeimg_reports_accepted_total").await)
}

async fn approve(fx: &Fixture, id: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = fx.http.post(format!("{}/api/v1/devices/{id}/approve", fx.url)).body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn assert_refused(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    assert!(got.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reports_are_refused_and_change_nothing() {
    let mut fx = fixture().await;
    let mut d = Device::new("dev-a", "stable", "1.0.0");
    assert_eq!(d.enroll(&fx, Some(ENROLL_TOKEN)).await.0, 201);
    d.report(&fx, Some((EventKind::Committed, "1.0.0"))).await;
    let before = state(&fx, "dev-a").await;
    assert_eq!(before.0["last_seq"], 1);
    assert_eq!(before.0["events"].as_array().unwrap().len(), 1);

    let good = d.next_report(None); // seq 2, not sent yet
    let body = serde_json::to_vec(&good).unwrap();
    let sig = report::sign(&d.key, &body);
    let intruder = Device::with_key("dev-a", "stable", "1.0.0", "someone else");

    // Unauthenticated.
    assert_refused(post_raw(&fx, "/api/v1/report", None, None, body.clone()).await, 401, "unsigned");
    assert_refused(post_raw(&fx, "/api/v1/report", Some("dev-a"), None, body.clone()).await, 401, "unsigned");
    assert_refused(intruder.post_signed(&fx, "/api/v1/report", body.clone()).await, 401, "bad-signature");
    let mut tampered = good.clone();
    tampered.state = "committed".into();
    let tampered = serde_json::to_vec(&tampered).unwrap();
    assert_refused(post_raw(&fx, "/api/v1/report", Some("dev-a"), Some(&sig), tampered).await, 401, "bad-signature");
    assert_refused(
        post_raw(&fx, "/api/v1/report", Some("dev-a"), Some("ed25519=!!"), body.clone()).await,
        401,
        "bad-signature",
    );
    let stranger = Device::new("dev-unknown", "stable", "1.0.0");
    assert_refused(stranger.post_signed(&fx, "/api/v1/report", body.clone()).await, 401, "unknown-device");
    assert_refused(
        post_raw(&fx, "/api/v1/report", Some("../etc"), Some(&sig), body.clone()).await,
        400,
        "bad-device-id",
    );

    // Replayed and out of order.
    let first = {
        let mut r = good.clone();
        r.seq = 1;
        serde_json::to_vec(&r).unwrap()
    };
    let got = d.post_signed(&fx, "/api/v1/report", first).await;
    assert!(got.1["message"].as_str().unwrap().contains("replayed or out of order"), "{}", got.1);
    assert_refused(got, 409, "replayed");

    // Malformed (signed, so the parse error is what is reported).
    let got = d.post_signed(&fx, "/api/v1/report", b"{\"device_id\": \"dev-a\", \"seq\": ".to_vec()).await;
    assert!(got.1["message"].as_str().unwrap().contains("EOF"), "the serde error is given: {}", got.1);
    assert_refused(got, 400, "malformed");
    let mut extra: Value = serde_json::to_value(&good).unwrap();
    extra["surprise"] = Value::Bool(true);
    let got = d.post_signed(&fx, "/api/v1/report", serde_json::to_vec(&extra).unwrap()).await;
    assert!(got.1["message"].as_str().unwrap().contains("surprise"), "{}", got.1);
    assert_refused(got, 400, "malformed");
    let mut other = good.clone();
    other.device_id = "dev-b".into();
    assert_refused(
        d.post_signed(&fx, "/api/v1/report", serde_json::to_vec(&other).unwrap()).await,
        400,
        "device-mismatch",
    );
    let mut zero = good.clone();
    zero.seq = 0;
    assert_refused(d.post_signed(&fx, "/api/v1/report", serde_json::to_vec(&zero).unwrap()).await, 400, "invalid");
    let mut huge_seq = good.clone();
    huge_seq.seq = u64::MAX;
    assert_refused(d.post_signed(&fx, "/api/v1/report", serde_json::to_vec(&huge_seq).unwrap()).await, 400, "invalid");
    let mut bad_channel = good.clone();
    bad_channel.channel = "Stable/../x".into();
    assert_refused(
        d.post_signed(&fx, "/api/v1/report", serde_json::to_vec(&bad_channel).unwrap()).await,
        400,
        "invalid",
    );

    // Oversized: announced, and streamed without a length.
    let mut big = good.clone();
    big.last_error = Some("x".repeat(MAX_BODY));
    let big = serde_json::to_vec(&big).unwrap();
    assert_refused(d.post_signed(&fx, "/api/v1/report", big.clone()).await, 413, "body-too-large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let r = fx
        .http
        .post(format!("{}/api/v1/report", fx.url))
        .header(report::HEADER_DEVICE, "dev-a")
        .header(report::HEADER_SIGNATURE, report::sign(&d.key, &big))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    assert_eq!(state(&fx, "dev-a").await, before, "refused reports changed nothing");
    let rejected = fx.get_text("/metrics").await;
    for reason in
        ["unsigned", "bad-signature", "unknown-device", "replayed", "malformed", "device-mismatch", "body-too-large"]
    {
        assert!(rejected.contains(&format!("edgeimg_reports_rejected_total{{reason=\"{reason}\"}}")), "{reason}");
    }

    // The report that was held back all along is still good: the refusals did not use up
    // its sequence number.
    let (s, reply) = post_raw(&fx, "/api/v1/report", Some("dev-a"), Some(&sig), body.clone()).await;
    assert_eq!(s, 200, "{reply}");
    assert_eq!(reply, serde_json::json!({ "attest_nonce": null }));
    assert_refused(post_raw(&fx, "/api/v1/report", Some("dev-a"), Some(&sig), body).await, 409, "replayed");
    let after = state(&fx, "dev-a").await;
    assert_eq!(after.0["last_seq"], 2);
    assert_eq!(after.2, before.2.map(|n| n + 1.0));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_pending_approval_and_key_changes() {
    let mut fx = fixture().await;

    // A wrong token is refused and creates nothing.
    let mut a = Device::new("dev-tok", "stable", "1.0.0");
    assert_refused(a.enroll(&fx, Some("guess")).await, 401, "bad-token");
    assert_eq!(fx.get_json("/api/v1/devices/dev-tok").await.0, 404);
    // The right one approves at once; enrolling again is idempotent.
    let (s, body) = a.enroll(&fx, Some(ENROLL_TOKEN)).await;
    assert_eq!((s, &body["status"]), (201, &Value::from("approved")), "{body}");
    let (s, body) = a.enroll(&fx, None).await;
    assert_eq!((s, &body["status"]), (200, &Value::from("approved")), "{body}");
    a.report(&fx, None).await;

    // Proof of possession: the enrollment must be signed by the key it enrolls.
    let b = Device::new("dev-pop", "stable", "1.0.0");
    let enrol = serde_json::to_vec(&b.enrollment(Some(ENROLL_TOKEN))).unwrap();
    let other = Device::new("dev-pop-other", "stable", "1.0.0");
    let sig = report::sign(&other.key, &enrol);
    assert_refused(
        post_raw(&fx, "/api/v1/enroll", Some("dev-pop"), Some(&sig), enrol.clone()).await,
        401,
        "bad-signature",
    );
    assert_refused(post_raw(&fx, "/api/v1/enroll", None, None, enrol).await, 401, "unsigned");
    assert_eq!(fx.get_json("/api/v1/devices/dev-pop").await.0, 404);

    // Without a token: pending; its reports are refused until an admin approves.
    let mut p = Device::new("dev-pending", "stable", "1.0.0");
    let (s, body) = p.enroll(&fx, None).await;
    assert_eq!((s, &body["status"]), (202, &Value::from("pending")), "{body}");
    let r = p.next_report(None);
    assert_refused(p.send(&fx, &r).await, 403, "pending-approval");
    assert_refused(approve(&fx, "dev-pending", None, "").await, 401, "bad-admin-token");
    assert_refused(approve(&fx, "dev-pending", Some("nope"), "").await, 401, "bad-admin-token");
    assert_refused(approve(&fx, "dev-nobody", Some(ADMIN_TOKEN), "").await, 404, "not-found");
    let (s, body) = approve(&fx, "dev-pending", Some(ADMIN_TOKEN), "").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["key_changed"], false);
    assert_eq!(p.send(&fx, &r).await.0, 200, "the same report goes through once approved");

    // The same id with another key (a reflashed device, or an impostor): 409, and the old
    // key keeps working until an admin approves the new one.
    let mut reflashed = Device::with_key("dev-tok", "stable", "1.0.0", "new key after reflash");
    assert_refused(reflashed.enroll(&fx, Some(ENROLL_TOKEN)).await, 409, "key-conflict");
    let (_, dev) = fx.get_json("/api/v1/devices/dev-tok").await;
    assert_eq!(dev["public_key"], a.public_key());
    assert_eq!(dev["pending_key"], reflashed.public_key());
    let r = reflashed.next_report(None);
    assert_refused(reflashed.send(&fx, &r).await, 401, "bad-signature");
    a.report(&fx, None).await;
    // Approving a key other than the pending one is refused.
    let wrong = format!("{{\"public_key\": \"{}\"}}", a.public_key());
    assert_refused(approve(&fx, "dev-tok", Some(ADMIN_TOKEN), &wrong).await, 409, "key-mismatch");
    let right = format!("{{\"public_key\": \"{}\"}}", reflashed.public_key());
    let (s, body) = approve(&fx, "dev-tok", Some(ADMIN_TOKEN), &right).await;
    assert_eq!((s, &body["key_changed"]), (200, &Value::Bool(true)), "{body}");
    // Now the new key reports, starting its sequence again, and the old key is out.
    reflashed.seq = 0;
    reflashed.report(&fx, None).await;
    let r = a.next_report(None);
    assert_refused(a.send(&fx, &r).await, 401, "bad-signature");
    let (_, dev) = fx.get_json("/api/v1/devices/dev-tok").await;
    assert_eq!(dev["public_key"], reflashed.public_key());
    assert_eq!(dev["pending_key"], Value::Null);
    assert_eq!(dev["last_seq"], 1);

    // Malformed and oversized enrollments.
    let junk = b"{\"device_id\": 1}".to_vec();
    assert_refused(a.post_signed(&fx, "/api/v1/enroll", junk).await, 400, "malformed");
    let mut e = a.enrollment(None);
    e.public_key = "zz".into();
    assert_refused(a.post_signed(&fx, "/api/v1/enroll", serde_json::to_vec(&e).unwrap()).await, 400, "bad-key");
    let mut e = a.enrollment(None);
    e.board = "x".repeat(MAX_BODY);
    assert_refused(a.post_signed(&fx, "/api/v1/enroll", serde_json::to_vec(&e).unwrap()).await, 413, "body-too-large");
    assert!(fx.get_text("/metrics").await.contains("edgeimg_enrollments_total{result=\"key-conflict\"} 1"));
    fx.stop().await;

    // A server without an admin token has no write API, and one with --auto-approve needs
    // no token.
    let mut c = fx.config();
    c.admin_token = None;
    c.enroll_token = None;
    c.auto_approve = true;
    fx.start(c).await;
    assert_refused(approve(&fx, "dev-pending", Some(ADMIN_TOKEN), "").await, 403, "admin-disabled");
    let lab = Device::new("dev-lab", "stable", "1.0.0");
    let (s, body) = lab.enroll(&fx, None).await;
    assert_eq!((s, &body["status"]), (201, &Value::from("approved")), "{body}");
    assert_refused(lab.enroll(&fx, Some("any")).await, 401, "bad-token");
    // The fleet survived the restart.
    let (_, dev) = fx.get_json("/api/v1/devices/dev-tok").await;
    assert_eq!(dev["last_seq"], 1);
    fx.stop().await;
}
