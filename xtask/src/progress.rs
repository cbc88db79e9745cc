//! Live progress while trials run: a bar on a terminal, plain lines
//! otherwise (CI logs), so a long run never looks hung.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// `total` trials in all. The bar draws on stderr and hides itself when
    /// stderr is not a terminal.
    pub fn new(total: u64) -> Progress {
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trials  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    pub fn start_trial(&self, workload: &str, index: u32, trials: u32) {
        self.bar
            .set_message(format!("{workload}: trial {}/{trials}", index + 1));
    }

    /// One line per finished trial, on the terminal above the bar or
    /// straight to stderr when the bar is hidden.
    pub fn finish_trial(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
        self.bar.inc(1);
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}
