//! Directory listings in the DEA directory server's text format (spec §9), and the parser
//! for the raw listing a container's helper script prints.

/// One directory entry. Symbolic links are reported as themselves (lstat), as Go's
/// `ReadDir` does: a link never reveals anything about its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub dir: bool,
    pub size: u64,
}

/// `123B`, `1.5K`, `2.0M`, `1.1G`, `1.0T`: powers of 1024, one decimal above bytes.
pub fn human_size(n: u64) -> String {
    const UNITS: [(u32, char); 4] = [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')];
    for (shift, unit) in UNITS {
        if n >= 1u64 << shift {
            return format!("{:.1}{unit}", n as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{n}B")
}

/// One line per entry, sorted by name: the name (directories with a trailing `/`)
/// left-aligned in 35 columns, then the size right-aligned in 10 (`-` for directories).
pub fn format(entries: &mut [Entry]) -> String {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    for e in entries.iter() {
        let (name, size) = if e.dir {
            (format!("{}/", e.name), "-".to_string())
        } else {
            (e.name.clone(), human_size(e.size))
        };
        out.push_str(&format!("{name:<35}{size:>10}\n"));
    }
    out
}

/// Parse the output of `stat -c '%F|%s|%n'` run on every entry of `dir` (the realpath the
/// script printed). A name may contain newlines, but never `/`: a line is a new record only
/// if it reads `<type>|<digits>|<dir>/<name without '/'>`, otherwise it continues the
/// previous name. `truncated` drops the last record, which may have been cut.
pub fn parse_stat_lines(out: &[u8], dir: &str, truncated: bool) -> Vec<Entry> {
    let prefix = if dir.ends_with('/') {
        dir.to_string()
    } else {
        format!("{dir}/")
    };
    let mut entries: Vec<Entry> = Vec::new();
    let text = String::from_utf8_lossy(out);
    let mut lines: Vec<&str> = text.split('\n').collect();
    // The final newline leaves an empty tail that is not a name continuation.
    if lines.last() == Some(&"") {
        lines.pop();
    }
    for line in lines {
        match parse_record(line, &prefix) {
            Some(e) => entries.push(e),
            None => {
                if let Some(last) = entries.last_mut() {
                    last.name.push('\n');
                    last.name.push_str(line);
                }
            }
        }
    }
    if truncated {
        entries.pop();
    }
    entries
}

fn parse_record(line: &str, prefix: &str) -> Option<Entry> {
    let (kind, rest) = line.split_once('|')?;
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase() || b == b' ') {
        return None;
    }
    let (size, path) = rest.split_once('|')?;
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let name = path.strip_prefix(prefix)?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    Some(Entry {
        name: name.to_string(),
        dir: kind == "directory",
        size: size.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_humanised_like_the_go_directory_server() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(123), "123B");
        assert_eq!(human_size(1023), "1023B");
        assert_eq!(human_size(1024), "1.0K");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(2 * 1024 * 1024), "2.0M");
        assert_eq!(human_size(1181116006), "1.1G");
        assert_eq!(human_size(1u64 << 40), "1.0T");
    }

    #[test]
    fn listing_pads_names_and_right_aligns_sizes() {
        let mut entries = vec![
            Entry {
                name: "logs".into(),
                dir: true,
                size: 4096,
            },
            Entry {
                name: "app.rb".into(),
                dir: false,
                size: 1536,
            },
        ];
        let text = format(&mut entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!("app.rb{}{}", " ".repeat(29), "      1.5K")
        );
        assert_eq!(lines[1], format!("logs/{}{}", " ".repeat(30), "         -"));
        assert!(lines.iter().all(|l| l.len() == 45));
        // A name longer than the column pushes the size right but keeps it.
        let mut long = vec![Entry {
            name: "x".repeat(40),
            dir: false,
            size: 7,
        }];
        assert_eq!(format(&mut long), format!("{}        7B\n", "x".repeat(40)));
    }

    #[test]
    fn stat_output_with_hostile_names_parses_unambiguously() {
        let out = b"regular file|12|/home/vcap/a.txt\n\
directory|4096|/home/vcap/logs\n\
symbolic link|4|/home/vcap/evil\n\
regular empty file|0|/home/vcap/two\n\
regular file|5|/home/vcap/lines\n\
directory|1|/home/vcap/forged\n\
garbage line without bars\n";
        let e = parse_stat_lines(out, "/home/vcap", false);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a.txt",
                "logs",
                "evil",
                // "two\nregular file|5|/home/vcap/lines" cannot be one name ('/' is
                // impossible in a name), so it is two records.
                "two",
                "lines",
                "forged\ngarbage line without bars"
            ]
        );
        assert!(e[1].dir && !e[2].dir && e[2].size == 4);
        // Entries from elsewhere are not records of this directory.
        let other = parse_stat_lines(b"regular file|1|/etc/passwd\n", "/home/vcap", false);
        assert!(other.is_empty());
        // A truncated listing loses its possibly cut last record.
        let cut = parse_stat_lines(
            b"regular file|1|/home/vcap/a\nregular file|2|/home/vcap/b",
            "/home/vcap",
            true,
        );
        assert_eq!(cut.len(), 1);
        // The root as the directory.
        let root = parse_stat_lines(b"directory|1|/etc\n", "/", false);
        assert_eq!(root[0].name, "etc");
    }
}
