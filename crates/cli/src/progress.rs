//! The progress of `drover run`: on a terminal, an `indicatif` bar with the
//! count, the failures, the rate and the time left, redrawn in place (each
//! failure printed above it); otherwise one plain line per ended job.

use std::io::Write;
use std::time::Duration;

use drover_engine::Outcome;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::{describe, short};

/// Live progress of a run's jobs.
pub(crate) struct Progress<'a> {
    /// The bar, on a terminal.
    bar: Option<ProgressBar>,
    failed: usize,
    run_id: &'a str,
}

impl<'a> Progress<'a> {
    pub(crate) fn new(total: usize, terminal: bool, run_id: &'a str) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{bar:30} {pos}/{len} done, {msg} ({rate}, {eta} left)")
                .expect("the template is valid")
                .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", state.per_sec());
                });
            bar.set_style(style.progress_chars("=> "));
            bar.set_message("0 failed");
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Progress { bar, failed: 0, run_id }
    }

    pub(crate) fn ended(&mut self, id: &str, outcome: &Outcome) {
        let ok = outcome.succeeded();
        if !ok {
            self.failed += 1;
        }
        match &self.bar {
            Some(bar) => {
                if !ok {
                    bar.println(format!("failed  {} ({})", short(id, self.run_id), describe(outcome)));
                }
                bar.set_message(format!("{} failed", self.failed));
                bar.inc(1);
                if bar.length().is_some_and(|len| bar.position() >= len) {
                    bar.finish();
                    let _ = writeln!(std::io::stderr());
                }
            }
            None => {
                let word = if ok { "ok     " } else { "failed " };
                let _ = writeln!(std::io::stderr().lock(), "{word} {} ({})", short(id, self.run_id), describe(outcome));
            }
        }
    }
}

impl Drop for Progress<'_> {
    /// An interrupted run leaves its bar as it was, and what follows on a
    /// line of its own.
    fn drop(&mut self) {
        if let Some(bar) = &self.bar
            && !bar.is_finished()
        {
            bar.abandon();
            let _ = writeln!(std::io::stderr());
        }
    }
}
