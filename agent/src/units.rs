//! Units people type and read: durations and sizes on the command line,
//! nanoseconds in tables. Shared by every command (no command owns them).

use std::time::Duration;

/// A duration of more than zero, e.g. 500ms, 1s, 2m.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 1s, 2m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A duration that may be zero ("0s": none).
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 0s, 30s, 2m)"))
}

/// A query window: any duration, and `0s` for everything the collector keeps.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 30s, 5m, or 0s for everything kept)"))
}

/// A reporting interval: at least 10 ms.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    Ok(d)
}

/// A size with an optional unit: 4096, 500K, 64M, 2G.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1),
        Some((i, _)) => {
            let mult = match s[i..].to_ascii_uppercase().as_str() {
                "K" | "KB" | "KIB" => 1 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                other => return Err(format!("unknown size unit {other:?}: use K, M or G, e.g. 500M")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size, e.g. 500M or 2G"))?;
    n.checked_mul(mult).filter(|n| *n > 0).ok_or_else(|| format!("{s:?}: out of range"))
}

/// Nanoseconds for people: 850ns, 1.2us, 45us, 3.1ms, 1.25s.
pub fn duration(ns: u64) -> String {
    let f = ns as f64;
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=9_949 => format!("{:.1}us", f / 1e3),
        9_950..=999_499 => format!("{:.0}us", f / 1e3),
        999_500..=9_949_999 => format!("{:.1}ms", f / 1e6),
        9_950_000..=999_499_999 => format!("{:.0}ms", f / 1e6),
        _ => format!("{:.2}s", f / 1e9),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("500M"), Ok(500 << 20));
        assert_eq!(super::parse_size("2G"), Ok(2 << 30));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert!(super::parse_size("5X").unwrap_err().contains("unit"));
        assert!(super::parse_size("0").is_err());
    }
}
