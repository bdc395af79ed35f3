//! How a preload shows its progress: on a terminal, two bars on stderr (images done of the
//! total, bytes received of those known so far) with failures printed above them; anywhere
//! else, and always inside `serve`, plain log lines.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::preload::list::{BadLine, ImageRef};

/// Where progress goes.
#[derive(Debug)]
pub struct Reporter {
    bars: Option<Bars>,
}

#[derive(Debug)]
struct Bars {
    multi: MultiProgress,
    images: ProgressBar,
    bytes: ProgressBar,
}

impl Reporter {
    /// Bars when stderr is a terminal, else log lines.
    pub fn for_stderr(total_images: usize) -> Reporter {
        if std::io::stderr().is_terminal() {
            Reporter::bars(total_images)
        } else {
            Reporter::logs()
        }
    }

    /// Log lines only.
    pub fn logs() -> Reporter {
        Reporter { bars: None }
    }

    fn bars(total_images: usize) -> Reporter {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let images = multi.add(ProgressBar::new(total_images as u64));
        images.set_style(
            ProgressStyle::with_template("{prefix:>7} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        images.set_prefix("images");
        let bytes = multi.add(ProgressBar::new(0));
        bytes.set_style(
            ProgressStyle::with_template(
                "{prefix:>7} [{bar:30.green/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bytes.set_prefix("bytes");
        images.enable_steady_tick(Duration::from_millis(200));
        Reporter {
            bars: Some(Bars {
                multi,
                images,
                bytes,
            }),
        }
    }

    /// A line of the list was refused.
    pub(crate) fn bad_line(&self, path: &Path, bad: &BadLine) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(format!(
                    "failed: {}:{} {:?}: {}",
                    path.display(),
                    bad.line,
                    bad.text,
                    bad.reason
                ));
            }
            None => tracing::warn!(
                list = %path.display(), line = bad.line, text = %bad.text, reason = %bad.reason,
                "preload: invalid reference; skipped"
            ),
        }
    }

    pub(crate) fn image_started(&self, img: &ImageRef) {
        match &self.bars {
            Some(b) => b.images.set_message(img.to_string()),
            None => tracing::info!(image = %img, line = img.line, "preloading"),
        }
    }

    /// More bytes are now known to be needed.
    pub(crate) fn bytes_expected(&self, n: u64) {
        if let Some(b) = &self.bars {
            b.bytes.inc_length(n);
        }
    }

    /// Bytes received (or found cached already).
    pub(crate) fn bytes_done(&self, n: u64) {
        if let Some(b) = &self.bars {
            b.bytes.inc(n);
        }
    }

    pub(crate) fn image_finished(&self, img: &ImageRef, outcome: Result<&str, &str>) {
        match (&self.bars, outcome) {
            (Some(b), Ok(_)) => b.images.inc(1),
            (Some(b), Err(reason)) => {
                b.images.inc(1);
                let _ = b.multi.println(format!(
                    "failed: {} (line {}): {reason}",
                    img.written, img.line
                ));
            }
            (None, Ok(what)) => tracing::info!(image = %img, line = img.line, "preloaded: {what}"),
            (None, Err(reason)) => {
                tracing::warn!(image = %img, line = img.line, %reason, "preload failed")
            }
        }
    }

    /// Removes the bars (the summary follows on its own).
    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bars {
            b.images.finish_and_clear();
            b.bytes.finish_and_clear();
            let _ = b.multi.clear();
        }
    }
}
