//! What `gardenctl create --image` shows while gardend resolves (and maybe pulls) the image.
//!
//! Garden's Create is one request with one answer: the wire protocol has no progress channel,
//! and inventing one would break compatibility with other Garden servers. So people get a
//! spinner with the elapsed time on a terminal (plain lines on stderr otherwise, every
//! [`STILL_EVERY`]), then a one-line summary; the layer-by-layer progress is in gardend's
//! log ("pulling layer", "pull progress", "layer unpacked").

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::format;

/// How often a non-terminal stderr hears that the create is still going.
const STILL_EVERY: Duration = Duration::from_secs(10);

/// The create in flight, as shown on stderr.
pub enum CreateProgress {
    /// stderr is a terminal: an indicatif spinner.
    Spinner(ProgressBar, Instant),
    /// A log or a pipe: a line at the start, every [`STILL_EVERY`], and at the end.
    Lines {
        image: String,
        started: Instant,
        ticker: tokio::task::JoinHandle<()>,
    },
    /// No image to pull, or machine-readable output: nothing.
    Quiet,
}

fn line(text: std::fmt::Arguments<'_>) {
    // A closed stderr must not make a create fail.
    let _ = writeln!(std::io::stderr(), "{text}");
}

impl CreateProgress {
    /// Start showing the create of a container from `image` (none: stay quiet).
    pub fn start(image: Option<&str>, json: bool) -> CreateProgress {
        let Some(image) = image.filter(|i| !i.is_empty() && !json) else {
            return CreateProgress::Quiet;
        };
        let started = Instant::now();
        if crate::term::stderr_is_tty() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("static template"),
            );
            bar.set_message(format!("creating from {image} (pulling what is missing)"));
            bar.enable_steady_tick(Duration::from_millis(100));
            return CreateProgress::Spinner(bar, started);
        }
        line(format_args!("creating from {image}"));
        let name = image.to_string();
        let ticker = tokio::spawn(async move {
            let mut every =
                tokio::time::interval_at(tokio::time::Instant::now() + STILL_EVERY, STILL_EVERY);
            loop {
                every.tick().await;
                line(format_args!(
                    "still creating from {name} ({})",
                    format::duration(Duration::from_secs(started.elapsed().as_secs()))
                ));
            }
        });
        CreateProgress::Lines {
            image: image.to_string(),
            started,
            ticker,
        }
    }

    /// The create is over: `Some(handle)` on success. A failure is reported by the caller.
    pub fn finish(self, handle: Option<&str>) {
        match self {
            CreateProgress::Quiet => {}
            CreateProgress::Spinner(bar, started) => {
                bar.finish_and_clear();
                if let Some(h) = handle {
                    line(format_args!("created {h} in {}", took(started)));
                }
            }
            CreateProgress::Lines {
                image,
                started,
                ticker,
            } => {
                ticker.abort();
                if let Some(h) = handle {
                    line(format_args!(
                        "created {h} from {image} in {}",
                        took(started)
                    ));
                }
            }
        }
    }
}

/// Elapsed time to the millisecond below a second, else to the tenth.
fn took(started: Instant) -> String {
    let d = started.elapsed();
    if d < Duration::from_secs(1) {
        format::duration(Duration::from_millis(d.as_millis() as u64))
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
