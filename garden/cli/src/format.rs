//! Human-readable output: byte sizes, durations and aligned tables.

use std::time::Duration;

/// `1536` -> `1.5 KiB`; exact byte counts below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A limit where 0 means none.
pub fn limit_bytes(n: u64) -> String {
    if n == 0 {
        "unlimited".into()
    } else {
        bytes(n)
    }
}

/// `5400s` -> `1h30m`, `1.5s` -> `1.5s`, `250ms` -> `250ms`.
pub fn duration(d: Duration) -> String {
    let total = d.as_secs();
    if total == 0 {
        let ms = d.as_millis();
        return if ms > 0 {
            format!("{ms}ms")
        } else {
            format!("{}ns", d.as_nanos())
        };
    }
    let (days, h, m, s) = (
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    let mut out = String::new();
    for (v, unit) in [(days, "d"), (h, "h"), (m, "m")] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    let ms = d.subsec_millis();
    if total < 60 && ms > 0 {
        let frac = format!("{ms:03}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    } else if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Nanoseconds of CPU time as seconds with millisecond precision.
pub fn cpu_seconds(nanos: u64) -> String {
    format!("{:.3}s", nanos as f64 / 1e9)
}

/// Columns padded to the widest cell, two spaces apart; the last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(header: I) -> Table {
        Table {
            rows: vec![header.into_iter().map(Into::into).collect()],
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(200 << 30), "200 GiB");
        assert_eq!(limit_bytes(0), "unlimited");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(2 * 86_400 + 5)), "2d5s");
        assert_eq!(duration(Duration::ZERO), "0ns");
    }

    #[test]
    fn table_alignment() {
        let mut t = Table::new(["HANDLE", "STATE", "IP"]);
        t.row(["a-long-handle", "active", "10.254.0.2"]);
        t.row(["b", "stopped", ""]);
        assert_eq!(t.render(), "HANDLE         STATE    IP\na-long-handle  active   10.254.0.2\nb              stopped\n");
    }

    #[test]
    fn aligned_fields() {
        assert_eq!(
            fields(&[("state", "active".into()), ("ip", "1".into())]),
            "state: active\nip:    1\n"
        );
    }
}
