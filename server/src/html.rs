//! Small helpers for server-rendered HTML: escaping (every string a device or the
//! repository provides goes through `esc`), times and sizes for people.

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A span of seconds as "45s", "12m", "3h 5m", "4d 2h".
pub fn span(secs: i64) -> String {
    let s = secs.abs();
    let t = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    };
    if secs < 0 {
        format!("-{t}")
    } else {
        t
    }
}

/// "5m ago" / "never".
pub fn ago(now: i64, t: Option<i64>) -> String {
    match t {
        None => "never".into(),
        Some(t) if t > now => "just now".into(),
        Some(t) => format!("{} ago", span(now - t)),
    }
}

/// Unix seconds as `2026-03-01 12:00 UTC`.
pub fn utc(t: i64) -> String {
    jiff::Timestamp::from_second(t).map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default()
}

/// Bytes as "1.5 GiB".
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc(r#"<script>alert("x&y")</script>'"#),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;"
        );
        assert_eq!(esc("plain-1.0"), "plain-1.0");
    }

    #[test]
    fn people_formats() {
        assert_eq!(span(5), "5s");
        assert_eq!(span(125), "2m");
        assert_eq!(span(3 * 3600 + 300), "3h 5m");
        assert_eq!(span(2 * 86_400 + 7200), "2d 2h");
        assert_eq!(span(-90), "-1m");
        assert_eq!(ago(100, Some(40)), "1m ago");
        assert_eq!(ago(100, None), "never");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
    }
}
