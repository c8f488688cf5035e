//! Sizes and durations as people type them, for every command line and config file of the
//! workspace (gardend's flags and INI file, gardenctl's flags): one grammar, one set of errors.
//!
//! - Sizes: a number with an optional binary suffix, case-insensitive: `4096`, `512K`, `64m`,
//!   `1.5G`, `10GiB`, `2TB` (K = 1024, as memory limits are thought of). The result must be a
//!   whole number of bytes.
//! - Durations: Go's `time.ParseDuration` (`1h30m`, `2h45m30.5s`, `500ms`, `1µs`, `.5s`, `+3s`,
//!   `0`) plus days (`2d`); a bare number means seconds. Negative durations are refused, except
//!   `-0`. Capped at Go's maximum, i64 nanoseconds (about 292 years).
//!
//! Errors are one line naming the input, so clap prints them next to the flag.

use std::time::Duration;

/// Bytes from `512M`, `1.5G`, `10GiB`, `4096`...
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = |why: &str| format!("invalid size '{s}': {why}");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err("expected a number such as 64M or 1G"));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(err(&format!("unknown unit '{other}' (use K, M, G or T)"))),
    };
    let multiplier = 1u64 << shift;
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(multiplier).ok_or_else(|| err("too large"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| err(&format!("'{num}' is not a number")))?;
    let bytes = f * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(err("too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(err("not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// A duration from `5m`, `1h30m`, `1.5h`, `500ms`, `2d`, `90` (seconds)...
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = |why: &str| format!("invalid duration '{s}': {why}");
    let t = s.trim();
    if t.is_empty() {
        return Err(err("empty; expected e.g. 30s, 5m or 1h30m"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| err("too large"));
    }
    let t = match t.strip_prefix('-') {
        Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b == b'0') => {
            return Ok(Duration::ZERO)
        }
        Some(_) => return Err(err("negative")),
        None => t.strip_prefix('+').unwrap_or(t),
    };
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    const MAX_NANOS: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => f.split_at(f.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err(&format!("expected a number before '{rest}'")));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "" => return Err(err("missing unit (use ms, s, m, h or d)")),
            other => {
                return Err(err(&format!(
                    "unknown unit '{other}' (use ms, s, m, h or d)"
                )))
            }
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err("too large"))?
        };
        // At most 18 fraction digits; beyond that they are below a nanosecond of a day.
        let frac_digits = &frac_part[..frac_part.len().min(18)];
        let frac: u128 = if frac_digits.is_empty() {
            0
        } else {
            frac_digits.parse().map_err(|_| err("bad fraction"))?
        };
        let scale = 10u128.pow(frac_digits.len() as u32);
        total = whole
            .checked_mul(unit_nanos)
            .and_then(|w| w.checked_add(frac * unit_nanos / scale))
            .and_then(|part| total.checked_add(part))
            .filter(|t| *t <= MAX_NANOS)
            .ok_or_else(|| err("too large"))?;
        rest = after;
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("2TB"), Ok(2 << 40));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("10b"), Ok(10));
        assert!(parse_size("").unwrap_err().contains("expected a number"));
        assert!(parse_size("G").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("12X").unwrap_err().contains("unknown unit 'x'"));
        assert!(parse_size("1.2.3M").is_err());
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("0.3b").unwrap_err().contains("whole number"));
    }

    #[test]
    fn go_durations_and_days() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(
            ok("2h45m30.5s"),
            Duration::from_millis((2 * 3600 + 45 * 60 + 30) * 1000 + 500)
        );
        assert_eq!(ok("2d"), Duration::from_secs(172_800));
        assert_eq!(ok("1us"), Duration::from_micros(1));
        assert_eq!(ok("1µs"), Duration::from_micros(1));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("+3s"), Duration::from_secs(3));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("90"), Duration::from_secs(90));
        assert_eq!(ok(" 10 "), Duration::from_secs(10));
        assert_eq!(ok("2562047h"), Duration::from_secs(2_562_047 * 3600));
    }

    #[test]
    fn bad_durations() {
        for (input, why) in [
            ("", "empty"),
            ("-", "negative"),
            ("-5s", "negative"),
            ("5x", "unknown unit 'x'"),
            ("1h5", "missing unit"),
            ("1h30", "missing unit"),
            ("s", "expected a number"),
            ("m", "expected a number"),
            (".s", "expected a number"),
            ("3000000h", "too large"),
            ("999999999999d", "too large"),
            ("1.2.3s", "missing unit"),
        ] {
            let e = parse_duration(input).unwrap_err();
            assert!(e.contains(why), "{input:?}: {e}");
        }
    }
}
