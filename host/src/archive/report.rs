//! How an import or export shows its progress: on a terminal, one bar per archive on
//! stderr (bytes read or written of the total) in the style of `load`'s bars; anywhere
//! else, log lines at the start and end only.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One archive's progress.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
}

impl Progress {
    /// A bar of `total` bytes (0: not known yet) labelled `label` when stderr is a
    /// terminal, else nothing.
    pub fn for_stderr(label: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                (total > 0).then_some(total),
                ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>7} [{bar:30.green/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(label.to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            tracing::info!(archive = label, bytes = total, "started");
        }
        Progress {
            bar,
            label: label.to_owned(),
        }
    }

    /// Sets the bar's prefix (`import`, `export`).
    pub fn prefix(self, prefix: &'static str) -> Progress {
        if let Some(b) = &self.bar {
            b.set_prefix(prefix);
        }
        self
    }

    /// Bytes done, as a callback for [`super::read`].
    pub fn counter(&self) -> Arc<dyn Fn(u64) + Send + Sync> {
        let bar = self.bar.clone();
        Arc::new(move |n| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        })
    }

    /// More bytes are now known to be needed.
    pub fn grow(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_length(b.length().unwrap_or(0) + n);
        }
    }

    /// Removes the bar (the summary follows on its own).
    pub fn finish(&self, ok: bool) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => tracing::info!(archive = %self.label, ok, "finished"),
        }
    }
}
