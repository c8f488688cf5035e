//! HTTP `Range: bytes=...` for file downloads: one range, as Go's `ServeContent` serves the
//! common case; anything it cannot use is ignored (the whole file is sent), as RFC 9110 allows.

/// What to send for a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// 200, the whole file.
    Full,
    /// 206, bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */<size>`.
    Unsatisfiable,
}

impl ByteRange {
    pub fn parse(header: Option<&str>, size: u64) -> ByteRange {
        let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
            return ByteRange::Full;
        };
        if spec.contains(',') {
            return ByteRange::Full;
        }
        let Some((first, last)) = spec.trim().split_once('-') else {
            return ByteRange::Full;
        };
        let num = |s: &str| -> Option<u64> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match (first.trim().is_empty(), last.trim().is_empty()) {
            // `-N`: the last N bytes.
            (true, false) => match num(last) {
                Some(0) => ByteRange::Unsatisfiable,
                Some(_) if size == 0 => ByteRange::Unsatisfiable,
                Some(n) => ByteRange::Partial {
                    start: size.saturating_sub(n),
                    end: size - 1,
                },
                None => ByteRange::Full,
            },
            // `N-`: from N to the end.
            (false, true) => match num(first) {
                Some(s) if s >= size => ByteRange::Unsatisfiable,
                Some(s) => ByteRange::Partial {
                    start: s,
                    end: size - 1,
                },
                None => ByteRange::Full,
            },
            (false, false) => match (num(first), num(last)) {
                (Some(s), Some(e)) if s <= e => {
                    if s >= size {
                        ByteRange::Unsatisfiable
                    } else {
                        ByteRange::Partial {
                            start: s,
                            end: e.min(size - 1),
                        }
                    }
                }
                _ => ByteRange::Full,
            },
            (true, true) => ByteRange::Full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRange::{self, *};

    fn p(h: &str, size: u64) -> ByteRange {
        ByteRange::parse(Some(h), size)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(ByteRange::parse(None, 10), Full);
        assert_eq!(p("bytes=0-3", 10), Partial { start: 0, end: 3 });
        assert_eq!(p("bytes=2-", 10), Partial { start: 2, end: 9 });
        assert_eq!(p("bytes=-4", 10), Partial { start: 6, end: 9 });
        assert_eq!(p("bytes=-40", 10), Partial { start: 0, end: 9 });
        assert_eq!(p("bytes=5-100", 10), Partial { start: 5, end: 9 });
        assert_eq!(p("bytes= 1 - 2 ", 10), Partial { start: 1, end: 2 });
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(p("bytes=10-", 10), Unsatisfiable);
        assert_eq!(p("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(p("bytes=-0", 10), Unsatisfiable);
        assert_eq!(p("bytes=-5", 0), Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Unsatisfiable);
        // Malformed or unsupported: the whole file.
        assert_eq!(p("bytes=3-1", 10), Full);
        assert_eq!(p("bytes=a-b", 10), Full);
        assert_eq!(p("bytes=-", 10), Full);
        assert_eq!(p("bytes=+1-2", 10), Full);
        assert_eq!(p("bytes=0-1,3-4", 10), Full);
        assert_eq!(p("items=0-1", 10), Full);
        assert_eq!(p("bytes=99999999999999999999999-", 10), Full);
    }
}
