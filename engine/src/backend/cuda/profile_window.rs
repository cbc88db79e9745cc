//! A profiler window over decode steps or over prefill steps, for Nsight
//! Compute and Nsight Systems: with `DYNO_PROFILE_DECODE_STEPS=SKIP:COUNT`
//! the backend calls `cuProfilerStart` before decode steps SKIP …
//! SKIP+COUNT−1 (counted from 0 over the process's pure decode steps,
//! warm-up requests included) and `cuProfilerStop` once each has synced, so
//! that `ncu --profile-from-start off` profiles exactly those steps: no
//! model load, graph capture, prefill or warm-up
//! (`engine/scripts/gpu_profile.sh`). `DYNO_PROFILE_PREFILL_STEPS=SKIP:COUNT`
//! counts the other steps instead — those with a prefill chunk (or drafts
//! to verify), decode tokens beside them included — so that a prefill
//! step's kernels can be profiled the same way. Without a profiler attached
//! both calls do nothing; without either variable the window is empty and
//! no call is made; with both the backend refuses to start.

use super::super::BackendError;

/// The environment variable that opens a window over decode steps.
pub const PROFILE_DECODE_STEPS_ENV: &str = "DYNO_PROFILE_DECODE_STEPS";
/// The environment variable that opens a window over prefill steps.
pub const PROFILE_PREFILL_STEPS_ENV: &str = "DYNO_PROFILE_PREFILL_STEPS";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct StepProfileWindow {
    /// The window counts prefill steps (every step that is not a pure
    /// decode step) rather than decode steps.
    prefill: bool,
    /// First counted step profiled (0-based).
    first: u64,
    /// One past the last counted step profiled (`first` when disabled).
    end: u64,
    /// Counted steps begun so far.
    counted: u64,
    /// The profiler was started for the running step.
    active: bool,
}

impl StepProfileWindow {
    /// The window `DYNO_PROFILE_DECODE_STEPS` or `DYNO_PROFILE_PREFILL_STEPS`
    /// names, or an empty one.
    pub fn from_env() -> Result<Self, BackendError> {
        Self::from_lookup(|name| std::env::var(name))
    }

    fn from_lookup(
        var: impl Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<Self, BackendError> {
        let read = |name: &str| match var(name) {
            Ok(spec) => Ok(Some(spec)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(BackendError::Cuda(format!("{name} is not valid UTF-8")))
            }
        };
        let (name, spec, prefill) = match (
            read(PROFILE_DECODE_STEPS_ENV)?,
            read(PROFILE_PREFILL_STEPS_ENV)?,
        ) {
            (None, None) => return Ok(Self::default()),
            (Some(spec), None) => (PROFILE_DECODE_STEPS_ENV, spec, false),
            (None, Some(spec)) => (PROFILE_PREFILL_STEPS_ENV, spec, true),
            (Some(_), Some(_)) => {
                return Err(BackendError::Cuda(format!(
                    "{PROFILE_DECODE_STEPS_ENV} and {PROFILE_PREFILL_STEPS_ENV} are both set: \
                     a profiled run counts one kind of step; unset one of them"
                )))
            }
        };
        let window =
            Self::parse(&spec).map_err(|m| BackendError::Cuda(format!("{name}={spec:?}: {m}")))?;
        Ok(Self { prefill, ..window })
    }

    /// Parses `SKIP:COUNT` (COUNT ≥ 1), a window over decode steps.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (skip, count) = spec
            .split_once(':')
            .ok_or("expected SKIP:COUNT, e.g. 16:4 (skip 16 steps, profile 4)")?;
        let skip: u64 = skip
            .trim()
            .parse()
            .map_err(|_| format!("SKIP {skip:?} is not a whole number"))?;
        let count: u64 = count
            .trim()
            .parse()
            .map_err(|_| format!("COUNT {count:?} is not a whole number"))?;
        if count == 0 {
            return Err("COUNT must be at least 1".into());
        }
        let end = skip
            .checked_add(count)
            .ok_or("SKIP + COUNT overflows a 64-bit count")?;
        Ok(Self {
            prefill: false,
            first: skip,
            end,
            counted: 0,
            active: false,
        })
    }

    /// Whether the step about to run is profiled (and counts it when it is
    /// of the window's kind).
    fn enter(&mut self, decode: bool) -> bool {
        if decode == self.prefill {
            return false;
        }
        let index = self.counted;
        self.counted += 1;
        (self.first..self.end).contains(&index)
    }

    /// Before a step's first launch: starts the profiler when this step is
    /// in the window.
    pub fn step_begins(&mut self, decode: bool) -> Result<(), BackendError> {
        if self.enter(decode) {
            cudarc::driver::profiler_start()
                .map_err(|e| BackendError::Cuda(format!("cuProfilerStart: {e}")))?;
            self.active = true;
        }
        Ok(())
    }

    /// After the step has synced: stops the profiler if it was started.
    pub fn step_ends(&mut self) -> Result<(), BackendError> {
        if std::mem::take(&mut self.active) {
            cudarc::driver::profiler_stop()
                .map_err(|e| BackendError::Cuda(format!("cuProfilerStop: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_skip_and_count() {
        let w = StepProfileWindow::parse("16:4").unwrap();
        assert_eq!((w.first, w.end, w.prefill), (16, 20, false));
        assert_eq!(StepProfileWindow::parse(" 0 : 1 ").unwrap().end, 1);
    }

    #[test]
    fn rejects_bad_specs_saying_why() {
        for (spec, why) in [
            ("16", "expected SKIP:COUNT"),
            ("a:4", "SKIP \"a\""),
            ("16:-1", "COUNT \"-1\""),
            ("16:0", "at least 1"),
            ("18446744073709551615:2", "overflows"),
        ] {
            let e = StepProfileWindow::parse(spec).unwrap_err();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn counts_only_decode_steps_and_selects_the_window() {
        let mut w = StepProfileWindow::parse("2:3").unwrap();
        // A prefill, then decode steps 0..6 with a mixed step among them.
        let steps = [false, true, true, true, false, true, true, true];
        let picked: Vec<bool> = steps.iter().map(|&d| w.enter(d)).collect();
        assert_eq!(
            picked,
            [false, false, false, true, false, true, true, false]
        );
    }

    #[test]
    fn an_empty_window_selects_nothing() {
        let mut w = StepProfileWindow::default();
        assert!((0..100).all(|_| !w.enter(true)));
    }

    fn window(vars: &[(&str, &str)]) -> Result<StepProfileWindow, BackendError> {
        StepProfileWindow::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
                .ok_or(std::env::VarError::NotPresent)
        })
    }

    #[test]
    fn a_prefill_window_counts_the_steps_that_are_not_pure_decode() {
        let mut w = window(&[(PROFILE_PREFILL_STEPS_ENV, "1:2")]).unwrap();
        // Prefill steps 0, 1, 2 among decode steps: 1 and 2 are picked.
        let steps = [false, true, false, true, true, false, false];
        let picked: Vec<bool> = steps.iter().map(|&d| w.enter(d)).collect();
        assert_eq!(picked, [false, false, true, false, false, true, false]);
        assert_eq!(window(&[]).unwrap(), StepProfileWindow::default());
    }

    #[test]
    fn both_windows_at_once_or_a_bad_spec_are_refused_by_name() {
        let e = window(&[
            (PROFILE_DECODE_STEPS_ENV, "1:1"),
            (PROFILE_PREFILL_STEPS_ENV, "1:1"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("both set"), "{e}");
        let e = window(&[(PROFILE_PREFILL_STEPS_ENV, "x:1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("DYNO_PROFILE_PREFILL_STEPS=\"x:1\""), "{e}");
    }
}
