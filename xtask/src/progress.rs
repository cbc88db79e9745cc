//! Live progress while trials run: a bar on a terminal, plain lines
//! otherwise (CI logs), so a long run never looks hung. `bench` counts
//! trials; `sweep` counts points (done, failed, left, and an ETA) and shows
//! the running trial in the message.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    /// Whether a finished trial advances the bar (trials are the unit).
    counts_trials: bool,
}

impl Progress {
    /// `total` trials in all. The bar draws on stderr and hides itself when
    /// stderr is not a terminal.
    pub fn trials(total: u64) -> Progress {
        Self::with_template(
            total,
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trials  {msg}",
            true,
        )
    }

    /// `total` sweep points; [`Progress::point_finished`] advances it.
    pub fn points(total: u64) -> Progress {
        Self::with_template(
            total,
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} points ({prefix}) ETA {eta}  {msg}",
            false,
        )
    }

    fn with_template(total: u64, template: &str, counts_trials: bool) -> Progress {
        let bar = ProgressBar::new(total);
        let style =
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar, counts_trials }
    }

    pub fn start_trial(&self, workload: &str, index: u32, trials: u32) {
        self.bar
            .set_message(format!("{workload}: trial {}/{trials}", index + 1));
    }

    /// One line per finished trial, on the terminal above the bar or
    /// straight to stderr when the bar is hidden.
    pub fn finish_trial(&self, line: String) {
        self.println(line);
        if self.counts_trials {
            self.bar.inc(1);
        }
    }

    pub fn println(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Sweep counters: shown in the bar, and as a line when it is hidden.
    pub fn set_counts(&self, done: u64, failed: u64, left: u64) {
        self.bar
            .set_prefix(format!("{done} done, {failed} failed, {left} left"));
    }

    /// Grows the total (points made at run time by adaptive profiles).
    pub fn add_points(&self, n: u64) {
        self.bar.inc_length(n);
    }

    pub fn point_finished(&self) {
        self.bar.inc(1);
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}
