//! A profiler window over decode steps, for Nsight Compute and Nsight
//! Systems: with `DYNO_PROFILE_DECODE_STEPS=SKIP:COUNT` the backend calls
//! `cuProfilerStart` before decode steps SKIP … SKIP+COUNT−1 (counted from 0
//! over the process's pure decode steps, warm-up requests included) and
//! `cuProfilerStop` once each has synced, so that
//! `ncu --profile-from-start off` profiles exactly those steps: no model
//! load, graph capture, prefill or warm-up (`engine/scripts/gpu_profile.sh`).
//! Without a profiler attached both calls do nothing; without the variable
//! the window is empty and no call is made.

use super::super::BackendError;

/// The environment variable that opens the window.
pub const PROFILE_DECODE_STEPS_ENV: &str = "DYNO_PROFILE_DECODE_STEPS";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct DecodeProfileWindow {
    /// First decode step profiled (0-based).
    first: u64,
    /// One past the last decode step profiled (`first` when disabled).
    end: u64,
    /// Decode steps begun so far.
    decode_steps: u64,
    /// The profiler was started for the running step.
    active: bool,
}

impl DecodeProfileWindow {
    /// The window `DYNO_PROFILE_DECODE_STEPS` names, or an empty one.
    pub fn from_env() -> Result<Self, BackendError> {
        match std::env::var(PROFILE_DECODE_STEPS_ENV) {
            Ok(spec) => Self::parse(&spec).map_err(|m| {
                BackendError::Cuda(format!("{PROFILE_DECODE_STEPS_ENV}={spec:?}: {m}"))
            }),
            Err(std::env::VarError::NotPresent) => Ok(Self::default()),
            Err(std::env::VarError::NotUnicode(_)) => Err(BackendError::Cuda(format!(
                "{PROFILE_DECODE_STEPS_ENV} is not valid UTF-8"
            ))),
        }
    }

    /// Parses `SKIP:COUNT` (COUNT ≥ 1).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (skip, count) = spec
            .split_once(':')
            .ok_or("expected SKIP:COUNT, e.g. 16:4 (skip 16 decode steps, profile 4)")?;
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
            first: skip,
            end,
            decode_steps: 0,
            active: false,
        })
    }

    /// Whether the step about to run is profiled (and counts it when it is
    /// a decode step).
    fn enter(&mut self, decode: bool) -> bool {
        if !decode {
            return false;
        }
        let index = self.decode_steps;
        self.decode_steps += 1;
        (self.first..self.end).contains(&index)
    }

    /// Before a step's first launch: starts the profiler when this decode
    /// step is in the window.
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
        let w = DecodeProfileWindow::parse("16:4").unwrap();
        assert_eq!((w.first, w.end), (16, 20));
        assert_eq!(DecodeProfileWindow::parse(" 0 : 1 ").unwrap().end, 1);
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
            let e = DecodeProfileWindow::parse(spec).unwrap_err();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn counts_only_decode_steps_and_selects_the_window() {
        let mut w = DecodeProfileWindow::parse("2:3").unwrap();
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
        let mut w = DecodeProfileWindow::default();
        assert!((0..100).all(|_| !w.enter(true)));
    }
}
