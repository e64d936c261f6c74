//! Pure HTTP pieces of static file serving: byte ranges (RFC 9110 §14), entity tags and
//! conditional requests (§13). No I/O, unit-tested.

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, or one we ignore (several ranges, another unit, bad syntax): send it all.
    Full,
    /// Bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416: no byte of the range exists.
    Unsatisfiable,
}

/// Parse a single `bytes=` range. Several ranges are answered with the whole file, which
/// RFC 9110 allows (a server may ignore `Range`) and every downloader handles.
pub fn parse_range(header: &str, len: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return RangeRequest::Full };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.split_once('-') else { return RangeRequest::Full };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match num(b) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial { start: len.saturating_sub(n), end: len - 1 },
        },
        // bytes=a-
        (false, true) => match num(a) {
            None => RangeRequest::Full,
            Some(s) if s >= len => RangeRequest::Unsatisfiable,
            Some(s) => RangeRequest::Partial { start: s, end: len - 1 },
        },
        // bytes=a-b
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= len {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Partial { start: s, end: e.min(len - 1) }
                }
            }
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

/// The entity tags listed in an `If-None-Match` / `If-Match` header (`*` is kept as is).
fn tags(header: &str) -> impl Iterator<Item = &str> {
    header.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// `If-None-Match` uses the weak comparison: true means "not modified" (304).
pub fn none_match(header: &str, etag: &str) -> bool {
    tags(header).any(|t| t == "*" || opaque(t) == opaque(etag))
}

/// `If-Range` uses the strong comparison (or an exact HTTP date): true means the range
/// may be served; otherwise the whole file is sent.
pub fn if_range_holds(header: &str, etag: &str, last_modified: Option<&str>) -> bool {
    let h = header.trim();
    if h.starts_with('"') {
        return h == etag && !etag.starts_with("W/");
    }
    if h.starts_with("W/") {
        return false;
    }
    last_modified.is_some_and(|lm| lm == h)
}

/// A file name that may be served from one directory: one path component, not hidden (no
/// `.lock`, temp files or `..`), no separators or control characters.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// `<64 hex>.<name>`: a consistent-snapshot target, immutable; its hash is its tag.
pub fn hash_prefix(name: &str) -> Option<&str> {
    let (h, rest) = name.split_at_checked(64)?;
    (rest.starts_with('.') && rest.len() > 1 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-200", 100), Partial { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=10-", 100), Partial { start: 10, end: 99 });
        assert_eq!(parse_range("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-500", 100), Partial { start: 0, end: 99 });
        assert_eq!(parse_range("bytes=99-99", 100), Partial { start: 99, end: 99 });
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Unsatisfiable);
        // Ignored: whole file.
        assert_eq!(parse_range("bytes=9-0", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
        assert_eq!(parse_range("bytes=-", 100), Full);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), Full);
    }

    #[test]
    fn conditionals() {
        let tag = "\"abc\"";
        assert!(none_match("\"abc\"", tag));
        assert!(none_match("\"x\", W/\"abc\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("\"abd\"", tag));
        assert!(if_range_holds("\"abc\"", tag, None));
        assert!(!if_range_holds("W/\"abc\"", tag, None));
        assert!(!if_range_holds("\"old\"", tag, None));
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(if_range_holds(lm, tag, Some(lm)));
        assert!(!if_range_holds("Mon, 07 Nov 1994 08:49:37 GMT", tag, Some(lm)));
    }

    #[test]
    fn names() {
        assert!(valid_file_name("timestamp.json"));
        assert!(valid_file_name("edge~qemu-x86_64~1.0.0+b1~root.img"));
        for bad in ["", ".", "..", ".lock", "../x", "a/b", "a\\b", "a\0b", ".timestamp.json.tmp"] {
            assert!(!valid_file_name(bad), "{bad:?}");
        }
        let h = "a".repeat(64);
        assert_eq!(hash_prefix(&format!("{h}.x")), Some(h.as_str()));
        assert_eq!(hash_prefix(&format!("{h}x")), None);
        assert_eq!(hash_prefix(&format!("{}.x", "A".repeat(64))), None);
        assert_eq!(hash_prefix("1.root.json"), None);
    }
}
