//! HTTP client setup for the device (rustls with the ring provider, no system certificates
//! needed for plain-HTTP lab setups, the platform verifier for HTTPS).

use std::time::Duration;

pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = || {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("edgeimg-updater/", env!("CARGO_PKG_VERSION")))
    };
    let store = std::env::var_os("SSL_CERT_FILE").is_some()
        || std::env::var_os("SSL_CERT_DIR").is_some()
        || std::path::Path::new("/etc/ssl/certs").is_dir();
    match if store { builder().build() } else { builder().tls_certs_only([]).build() } {
        Ok(c) => c,
        Err(e) => {
            // No system CA certificates (an image without ca-certificates): plain HTTP and
            // file repositories still work, and TUF verifies every byte either way; HTTPS
            // servers fail with an unknown-issuer error that names the cause.
            tracing::debug!("no TLS trust store ({}): HTTPS servers cannot be verified", chain(&e));
            builder().tls_certs_only([]).build().expect("a client without a trust store needs nothing from the system")
        }
    }
}
