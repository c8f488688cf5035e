//! A task's captured output, rebuilt from the executor's log messages for its container.
//!
//! The executor frames process output into lines (split at `\n` and `\r`, empty lines dropped),
//! so stdout and stderr come back as those lines, each ended by `\n`. After a process exits,
//! its run step logs `Exit status N` on stdout under the same source: that line is the last
//! message of its source, so a stdout message that looks like it is held back until another
//! stdout message of the same source arrives (then it was the process's own text) or the
//! capture ends (then it was the exit line, and N is that process's exit status).

use std::collections::{HashMap, VecDeque};

use executor::log::{LogMessage, Stream};

/// The last `max` bytes of a stream.
#[derive(Debug, Clone)]
pub struct Tail {
    bytes: VecDeque<u8>,
    max: usize,
}

impl Tail {
    pub fn new(max: usize) -> Tail {
        Tail {
            bytes: VecDeque::new(),
            max,
        }
    }

    pub fn push_line(&mut self, text: &str) {
        self.bytes.extend(text.as_bytes());
        self.bytes.push_back(b'\n');
        let over = self.bytes.len().saturating_sub(self.max);
        self.bytes.drain(..over);
    }

    /// As text; a multi-byte character cut at the front by the bound shows as U+FFFD.
    pub fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Parse `Exit status N[ ...]`.
fn exit_line(text: &str) -> Option<i64> {
    let rest = text.strip_prefix("Exit status ")?;
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    let n: i64 = rest[..end].parse().ok()?;
    if end == rest.len() || rest[end..].starts_with(" (") {
        Some(n)
    } else {
        None
    }
}

/// stdout and stderr of the sources a task cares about, plus each source's exit status.
#[derive(Debug, Clone)]
pub struct Output {
    sources: Vec<String>,
    pub stdout: Tail,
    pub stderr: Tail,
    /// A stdout line per source that may be its exit line.
    pending: HashMap<String, (String, i64)>,
}

impl Output {
    /// Capture messages of `sources` only (other sources, e.g. the executor's own
    /// "creating container" lines or download progress, are not the task's output).
    pub fn new(sources: &[&str], max_bytes: usize) -> Output {
        Output {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            stdout: Tail::new(max_bytes),
            stderr: Tail::new(max_bytes),
            pending: HashMap::new(),
        }
    }

    pub fn push(&mut self, msg: &LogMessage) {
        if !self.sources.contains(&msg.source_type) {
            return;
        }
        match msg.stream {
            Stream::Err => self.stderr.push_line(&msg.text),
            Stream::Out => {
                if let Some((held, _)) = self.pending.remove(&msg.source_type) {
                    self.stdout.push_line(&held);
                }
                match exit_line(&msg.text) {
                    Some(n) => {
                        self.pending
                            .insert(msg.source_type.clone(), (msg.text.clone(), n));
                    }
                    None => self.stdout.push_line(&msg.text),
                }
            }
        }
    }

    /// The exit status `source`'s process reported, once the capture has ended.
    pub fn exit_status(&self, source: &str) -> Option<i64> {
        self.pending.get(source).map(|(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(source: &str, stream: Stream, text: &str) -> LogMessage {
        LogMessage {
            text: text.into(),
            source_type: source.into(),
            source_id: "g".into(),
            instance_id: "0".into(),
            stream,
            timestamp: 0,
        }
    }

    #[test]
    fn exit_lines_are_held_back_and_parsed() {
        assert_eq!(exit_line("Exit status 0"), Some(0));
        assert_eq!(
            exit_line("Exit status 143 (exceeded 10s graceful shutdown interval)"),
            Some(143)
        );
        assert_eq!(exit_line("Exit status -1"), Some(-1));
        assert_eq!(exit_line("Exit status 3x"), None);
        assert_eq!(exit_line("Exit status "), None);
        assert_eq!(exit_line("exit status 1"), None);

        let mut o = Output::new(&["TASK", "INSTALL"], 1 << 20);
        o.push(&msg("CELL", Stream::Out, "Cell c creating container"));
        o.push(&msg("INSTALL", Stream::Out, "installing"));
        o.push(&msg("INSTALL", Stream::Out, "Exit status 0"));
        o.push(&msg("TASK", Stream::Out, "hello"));
        // The process itself printed something that looks like an exit line.
        o.push(&msg("TASK", Stream::Out, "Exit status 9"));
        o.push(&msg("TASK", Stream::Err, "oops"));
        o.push(&msg("TASK", Stream::Out, "after"));
        o.push(&msg("TASK", Stream::Out, "Exit status 3"));
        assert_eq!(o.stdout.text(), "installing\nhello\nExit status 9\nafter\n");
        assert_eq!(o.stderr.text(), "oops\n");
        assert_eq!(o.exit_status("TASK"), Some(3));
        assert_eq!(o.exit_status("INSTALL"), Some(0));
        assert_eq!(o.exit_status("CELL"), None);
    }

    #[test]
    fn output_keeps_the_last_bytes() {
        let mut t = Tail::new(8);
        t.push_line("abc");
        t.push_line("defgh");
        assert_eq!(t.text(), "c\ndefgh\n");
        t.push_line("0123456789");
        assert_eq!(t.text(), "3456789\n");
    }
}
