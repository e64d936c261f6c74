//! The TUF repository as static files: `/tuf/metadata/{file}` and `/tuf/targets/{file}`.
//!
//! Single byte ranges (206, 416), strong entity tags and `If-None-Match` (304), `If-Range`,
//! `Cache-Control` (metadata: revalidate every time; hash-prefixed targets: immutable).
//! Small files are read in one go; large ones (release images) are streamed.

pub mod range;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::app::App;
use range::{hash_prefix, if_range_holds, none_match, parse_range, valid_file_name, RangeRequest};

/// Files up to this size are read whole into memory (all metadata, small targets).
const READ_WHOLE: u64 = 1 << 20;
/// Read buffer when streaming a large file.
const STREAM_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Metadata,
    Targets,
}

impl Area {
    pub fn name(self) -> &'static str {
        match self {
            Area::Metadata => "metadata",
            Area::Targets => "targets",
        }
    }
}

pub async fn metadata(State(app): State<Arc<App>>, Path(file): Path<String>, m: Method, h: HeaderMap) -> Response {
    serve(&app, Area::Metadata, &file, &m, &h).await
}

pub async fn targets(State(app): State<Arc<App>>, Path(file): Path<String>, m: Method, h: HeaderMap) -> Response {
    serve(&app, Area::Targets, &file, &m, &h).await
}

enum Content {
    Whole(Bytes),
    File(std::fs::File),
}

struct Opened {
    content: Content,
    len: u64,
    etag: String,
    last_modified: Option<String>,
}

fn open(path: PathBuf, hash: Option<String>) -> std::io::Result<Option<Opened>> {
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    if !m.is_file() {
        return Ok(None);
    }
    let len = m.len();
    let etag = match hash {
        Some(h) => format!("\"{h}\""),
        // Files are only ever replaced by rename: inode, size and mtime name the content.
        None => format!("\"{:x}-{:x}-{:x}{:09x}\"", m.ino(), len, m.mtime(), m.mtime_nsec()),
    };
    let last_modified = jiff::Timestamp::from_second(m.mtime())
        .ok()
        .and_then(|t| jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&t).ok());
    let content = if len <= READ_WHOLE {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf)?;
        Content::Whole(Bytes::from(buf))
    } else {
        Content::File(f)
    };
    // A file replaced between stat and read: use what was read.
    let len = match &content {
        Content::Whole(b) => b.len() as u64,
        Content::File(_) => len,
    };
    Ok(Some(Opened { content, len, etag, last_modified }))
}

fn plain(status: StatusCode, msg: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{msg}\n")).into_response()
}

async fn serve(app: &App, area: Area, file: &str, method: &Method, h: &HeaderMap) -> Response {
    let resp = serve_inner(app, area, file, method, h).await;
    app.metrics.tuf_request(area.name(), resp.status().as_u16());
    resp
}

async fn serve_inner(app: &App, area: Area, file: &str, method: &Method, h: &HeaderMap) -> Response {
    if !valid_file_name(file) {
        return plain(StatusCode::BAD_REQUEST, "not a repository file name");
    }
    let dir = match area {
        Area::Metadata => app.repo.metadata_dir(),
        Area::Targets => app.repo.targets_dir(),
    };
    let hash = match area {
        Area::Targets => hash_prefix(file).map(String::from),
        Area::Metadata => None,
    };
    let immutable = hash.is_some();
    let path = dir.join(file);
    let opened = match tokio::task::spawn_blocking(move || open(path, hash)).await {
        Ok(Ok(Some(o))) => o,
        Ok(Ok(None)) => return plain(StatusCode::NOT_FOUND, "no such file in the repository"),
        Ok(Err(e)) => {
            tracing::warn!("reading {}/{file}: {e}", area.name());
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file");
        }
        Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file"),
    };

    let mut headers = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    headers.insert(header::ETAG, hv(&opened.etag));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable { "public, max-age=31536000, immutable" } else { "no-cache" }),
    );
    if let Some(lm) = &opened.last_modified {
        headers.insert(header::LAST_MODIFIED, hv(lm));
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if let Some(inm) = h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if none_match(inm, &opened.etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
    }
    let content_type = if file.ends_with(".json") { "application/json" } else { "application/octet-stream" };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));

    let len = opened.len;
    let range = match h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => RangeRequest::Full,
        Some(r) => {
            let if_range = h.get(header::IF_RANGE).and_then(|v| v.to_str().ok());
            match if_range {
                Some(ir) if !if_range_holds(ir, &opened.etag, opened.last_modified.as_deref()) => RangeRequest::Full,
                _ => parse_range(r, len),
            }
        }
    };
    let (status, start, count) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial { start, end } => {
            headers.insert(header::CONTENT_RANGE, hv(&format!("bytes {start}-{end}/{len}")));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            headers.insert(header::CONTENT_RANGE, hv(&format!("bytes */{len}")));
            headers.remove(header::CONTENT_TYPE);
            return (StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response();
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if method == Method::HEAD {
        return (status, headers).into_response();
    }
    let body = match opened.content {
        Content::Whole(b) => Body::from(b.slice(start as usize..(start + count) as usize)),
        Content::File(mut f) => {
            if start > 0 {
                let seeked = tokio::task::spawn_blocking(move || f.seek(SeekFrom::Start(start)).map(|_| f)).await;
                f = match seeked {
                    Ok(Ok(f)) => f,
                    _ => return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file"),
                };
            }
            let reader = tokio::fs::File::from_std(f).take(count);
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader, STREAM_CHUNK))
        }
    };
    (status, headers, body).into_response()
}
