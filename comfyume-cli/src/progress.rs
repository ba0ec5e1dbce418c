//! Showing a job's progress as it happens: a live bar on a terminal, one line per change otherwise.
//!
//! Only what the server reports is shown: the queue position while the job waits, "waiting for a GPU to
//! start" when the provider says so, the node that runs and its progress value/max. Nothing is guessed or
//! animated beyond a spinner that shows the command is alive.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use comfyume_core::EventKind;
use indicatif::{ProgressBar, ProgressStyle};

use comfyume_cli::client::JobView;
use comfyume_cli::client::types::{Estimate, PositionEntry};

/// Where progress goes.
enum Mode {
    /// A live bar on standard error (a terminal).
    Bar(ProgressBar),
    /// One line per change on standard error (a pipe, a log, a test).
    Lines,
    /// Nothing (`--quiet`).
    Quiet,
}

/// The progress display of one job.
pub struct Progress {
    mode: Mode,
    /// Node id → class, when the workflow is known (submit), for "node 4 (ColorTransfer)".
    classes: HashMap<String, String>,
    /// The node running now.
    node: Option<String>,
    /// The last line printed in line mode, so repeats are dropped.
    last: String,
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {elapsed:>4} {msg} [{bar:28.cyan/blue}] {pos}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress {
    /// A display on standard error: a bar on a terminal, lines otherwise, nothing when `quiet`.
    pub fn new(quiet: bool, classes: HashMap<String, String>) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner().with_style(spinner_style());
            bar.enable_steady_tick(Duration::from_millis(120));
            Mode::Bar(bar)
        } else {
            Mode::Lines
        };
        Self {
            mode,
            classes,
            node: None,
            last: String::new(),
        }
    }

    /// Shows a status line.
    fn status(&mut self, text: String) {
        match &self.mode {
            Mode::Bar(bar) => {
                bar.set_style(spinner_style());
                bar.set_message(text);
            }
            Mode::Lines => self.line(text),
            Mode::Quiet => {}
        }
    }

    /// A message about the connection itself (lost, back), not the job: shown unless quiet.
    pub fn notice(&mut self, text: String) {
        self.line(text);
    }

    /// Prints a line that stays (above the bar on a terminal).
    fn line(&mut self, text: String) {
        match &self.mode {
            Mode::Bar(bar) => bar.println(text),
            Mode::Lines if text != self.last => {
                eprintln!("{text}");
                self.last = text;
            }
            _ => {}
        }
    }

    fn node_label(&self, node: &str) -> String {
        match self.classes.get(node) {
            Some(class) => format!("node {node} ({class})"),
            None => format!("node {node}"),
        }
    }

    /// The state a job is in when watching starts.
    pub fn job(&mut self, job: &JobView) {
        match job.state.as_str() {
            // Without a position the job may be on its way to a provider this instant; the stream's
            // position messages say whether it is really held back.
            "queued" => self.waiting(job.position, job.position.and(job.estimated_start.as_ref())),
            "leased" => self.status(format!(
                "dispatched to {}",
                job.provider.as_deref().unwrap_or("a provider")
            )),
            "running" => self.status("running".into()),
            _ => {}
        }
    }

    /// A new queue position for the job.
    pub fn position(&mut self, entry: &PositionEntry) {
        self.waiting(entry.position, Some(&entry.estimated_start));
    }

    fn waiting(&mut self, position: Option<usize>, estimate: Option<&Estimate>) {
        let text = match (position, estimate) {
            (_, Some(Estimate::Held { reason })) => format!("queued, held: {reason}"),
            // No position and no hold: it is being dispatched right now.
            (None, _) => "queued".to_string(),
            (Some(p), Some(Estimate::Estimated { wait_ms })) if *wait_ms >= 1000 => format!(
                "queued: position {} (starts in about {})",
                p + 1,
                human_duration(*wait_ms)
            ),
            (Some(p), _) => format!("queued: position {}", p + 1),
        };
        self.status(text);
    }

    /// A job event.
    pub fn event(&mut self, kind: &EventKind) {
        match kind {
            EventKind::Queued { reason: Some(reason) } => self.status(format!("queued again: {reason}")),
            // The first `queued` repeats what the submit answer showed.
            EventKind::Queued { reason: None } => {}
            EventKind::Dispatched { provider, attempt } if *attempt > 1 => {
                self.status(format!("dispatched to {provider} (attempt {attempt})"))
            }
            EventKind::Dispatched { provider, .. } => self.status(format!("dispatched to {provider}")),
            // The provider's message already says what it waits for ("waiting for a GPU to start").
            EventKind::Waiting { message } => self.status(message.clone()),
            EventKind::Started => self.status("running".into()),
            EventKind::Executing { node } => {
                self.node = Some(node.clone());
                let label = self.node_label(node);
                self.status(label);
            }
            EventKind::Cached { nodes } if !nodes.is_empty() => {
                let n = nodes.len();
                self.line(format!("{n} node{} cached", if n == 1 { "" } else { "s" }));
            }
            EventKind::Progress { node, value, max } => {
                let label = node
                    .as_deref()
                    .or(self.node.as_deref())
                    .map_or_else(|| "running".to_string(), |n| self.node_label(n));
                match &self.mode {
                    Mode::Bar(bar) => {
                        bar.set_style(bar_style());
                        bar.set_length(*max);
                        bar.set_position(*value);
                        bar.set_message(label);
                    }
                    Mode::Lines => self.line(format!("{label}: {value}/{max}")),
                    Mode::Quiet => {}
                }
            }
            EventKind::Output { output } => {
                let path = if output.subfolder.is_empty() {
                    output.filename.clone()
                } else {
                    format!("{}/{}", output.subfolder, output.filename)
                };
                self.line(format!("stored {path}"));
            }
            EventKind::Retrying {
                attempt,
                delay_ms,
                failure,
            } => self.line(format!(
                "attempt {attempt} failed ({failure}); trying again in {}",
                human_duration(*delay_ms)
            )),
            _ => {}
        }
    }

    /// Removes the bar (before the result is printed).
    pub fn finish(&mut self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

/// `850 ms`, `3 s`, `2 min 5 s`.
pub fn human_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1e3),
        10_000..120_000 => format!("{} s", ms / 1000),
        _ => format!("{} min {} s", ms / 60_000, (ms / 1000) % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(1_300), "1.3 s");
        assert_eq!(human_duration(42_000), "42 s");
        assert_eq!(human_duration(125_000), "2 min 5 s");
    }
}
