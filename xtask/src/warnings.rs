//! Everything the pipeline warns about, as one typed enum (hyperfine's
//! `Warnings` is the model): each says what is wrong and what to do about
//! it, and all go to stderr through `emit`, so stdout stays the report.

use std::fmt;

/// Above this coefficient of variation a metric is flagged as noisy.
pub const HIGH_CV: f64 = 0.05;

#[derive(Debug, Clone, PartialEq)]
pub enum Warning {
    /// Trial-to-trial spread above `HIGH_CV`: `(metric, cv)` pairs.
    NoisyMetrics {
        workload: String,
        metrics: Vec<(String, f64)>,
    },
    TrialFailed {
        workload: String,
        trial: u32,
        reason: String,
    },
    TrialTimedOut {
        workload: String,
        trial: u32,
        after_s: f64,
    },
    /// The first trials failed the same way before writing any record (an
    /// engine that cannot start): the rest of the workload's trials were
    /// not run.
    TrialsSkipped {
        workload: String,
        failed: u32,
        skipped: u32,
        class: String,
    },
    GpuThrottled {
        workload: String,
        trial: u32,
        reasons: Vec<String>,
    },
    OutputsDiffer {
        workload: String,
        distinct: usize,
    },
    SuiteSizedForOtherDevice {
        suite: String,
        sized_for: String,
        running_on: String,
    },
    NvmlUnavailable {
        reason: String,
    },
    DeclaredCommitNotHead {
        declared: String,
        head: String,
    },
    DirtyTreePromoted {
        run: String,
    },
    PromotionSkipped {
        why: String,
    },
    NothingToExport {
        workload: String,
    },
    /// The engine rejected requests in Ok trials of a workload whose spec
    /// does not say `expect_rejections = true`.
    UnexpectedRejections {
        workload: String,
        trials: usize,
        of_trials: usize,
        most: u64,
        requests: Option<u64>,
    },
    /// Baseline history too short to know the run-to-run spread.
    ShortBaselineHistory {
        class: String,
        runs: usize,
        needed: usize,
    },
    /// `history`: runs from a dirty work tree were not used.
    HistoryDirtyRunsLeftOut {
        workload: String,
        class: String,
        runs: usize,
    },
    /// `history`: a series with fewer than 2 runs was not shown.
    HistoryTooShort {
        workload: String,
        class: String,
        metric: String,
        runs: usize,
    },
    /// HTTP: the load generator sent requests later than due.
    GeneratorLate {
        workload: String,
        p99_ms: f64,
        limit_ms: f64,
    },
    /// HTTP: the load generator was busy enough to delay its own reads.
    GeneratorBusy {
        workload: String,
        cpu_percent: f64,
    },
    /// HTTP: the server counted other prompt lengths than were sent.
    PromptLengthDiffers {
        workload: String,
        requests: usize,
        of_requests: usize,
        /// One such request's lengths: intended, counted by the server.
        intended: u32,
        counted: u32,
        /// The prompts went as text built with `--tokenizer`.
        text_prompts: bool,
    },
    /// HTTP: a workload's `[engine]` table cannot reach a `--target`.
    EngineSettingsNotApplied {
        workload: String,
    },
    /// HTTP: a started server ignored SIGTERM and was killed.
    ServerKilled {
        log: String,
    },
    /// HTTP: `--target` carried user:password@, which was dropped.
    CredentialsInUrl {
        env: String,
    },
    /// HTTP: `/health` did not answer 200 before the run.
    TargetUnhealthy {
        url: String,
    },
    /// Engine environment switches (`DYNO_CUDA_*`, ...) are set in this
    /// process's environment, so every engine it starts gets them.
    EngineSwitchesInEnvironment {
        switches: std::collections::BTreeMap<String, String>,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::NoisyMetrics { workload, metrics } => {
                let list: Vec<String> = metrics
                    .iter()
                    .map(|(m, cv)| format!("{m} {:.1}%", cv * 100.0))
                    .collect();
                write!(
                    f,
                    "{workload}: trial-to-trial spread above {:.0}% (CV): {}; a quieter machine or more trials (--trials) would tighten it",
                    HIGH_CV * 100.0,
                    list.join(", ")
                )
            }
            Warning::TrialsSkipped {
                workload,
                failed,
                skipped,
                class,
            } => write!(
                f,
                "{workload}: the first {failed} trials failed the same way ({class}) before serving \
                 a request, so the other {skipped} were not run; fix the cause shown in the first \
                 failure (its engine log is in the store) and run again"
            ),
            Warning::TrialFailed {
                workload,
                trial,
                reason,
            } => write!(
                f,
                "{workload}: trial {} failed: {reason}; its engine log is in the store (`cargo xtask store show`)",
                trial + 1
            ),
            Warning::TrialTimedOut {
                workload,
                trial,
                after_s,
            } => write!(
                f,
                "{workload}: trial {} timed out after {after_s:.1} s and was killed; raise --timeout-s or shrink the workload",
                trial + 1
            ),
            Warning::GpuThrottled {
                workload,
                trial,
                reasons,
            } => write!(
                f,
                "{workload}: trial {}: the GPU was throttled ({}); its numbers may be low: check cooling and power limits, or rerun",
                trial + 1,
                reasons.join(", ")
            ),
            Warning::OutputsDiffer { workload, distinct } => write!(
                f,
                "{workload}: the trials produced {distinct} different outputs (output hashes differ); outputs that depend on batch composition cannot be checked between builds"
            ),
            Warning::SuiteSizedForOtherDevice {
                suite,
                sized_for,
                running_on,
            } => write!(
                f,
                "suite {suite} is sized for {sized_for}, and runs on {running_on} here; pick a suite for this device with --suite"
            ),
            Warning::NvmlUnavailable { reason } => write!(
                f,
                "NVML is not available ({reason}): GPU properties come from the engine, and clocks, temperature and throttling are not recorded; install the NVIDIA driver's libnvidia-ml"
            ),
            Warning::DeclaredCommitNotHead { declared, head } => write!(
                f,
                "DYNO_GIT_COMMIT={declared} is not the repository's HEAD ({head}): recording {declared}; the tree's changes against it cannot be checked"
            ),
            Warning::DirtyTreePromoted { run } => write!(
                f,
                "run {run} was made from a dirty tree; its commit does not describe it: commit, rerun and promote that run instead"
            ),
            Warning::PromotionSkipped { why } => write!(f, "skipped {why}"),
            Warning::NothingToExport { workload } => write!(
                f,
                "no successful trial of {workload} to export; fix the failing trials first"
            ),
            Warning::UnexpectedRejections {
                workload,
                trials,
                of_trials,
                most,
                requests,
            } => write!(
                f,
                "{workload}: requests REJECTED in {trials} of {of_trials} trials (up to {most}{} per trial, e.g. prompts past the model's context): the metrics are of the requests that ran, not of the workload; fix the spec, or set `expect_rejections = true` in it if this is intended",
                requests.map_or(String::new(), |n| format!(" of {n}"))
            ),
            Warning::ShortBaselineHistory {
                class,
                runs,
                needed,
            } => write!(
                f,
                "baseline class {class} holds {runs} run(s): the run-to-run spread needs {needed}, so no metric can be flagged against it; promote more runs (`cargo xtask baseline promote RUN`) or use an interleaved A/B (`cargo xtask bench --against REV`)"
            ),
            Warning::HistoryDirtyRunsLeftOut {
                workload,
                class,
                runs,
            } => write!(
                f,
                "`{workload}` (class {class}): {runs} run(s) from a dirty work tree left out of the history, having no commit to name; --include-dirty uses them"
            ),
            Warning::HistoryTooShort {
                workload,
                class,
                metric,
                runs,
            } => write!(
                f,
                "`{workload}` (class {class}) has {runs} run(s) with {metric}; a history needs at least 2: left out; bench again or import nightly exports (`cargo xtask store import FILE`)"
            ),
            Warning::GeneratorLate {
                workload,
                p99_ms,
                limit_ms,
            } => write!(
                f,
                "{workload}: the load generator sent requests late (p99 {p99_ms:.2} ms after they were due, over {limit_ms:.2} ms): the load is not what the workload says; run the client on another machine, or lower the rate or concurrency"
            ),
            Warning::GeneratorBusy {
                workload,
                cpu_percent,
            } => write!(
                f,
                "{workload}: the load generator used {cpu_percent:.0}% of a core, so its own reads may delay token timestamps; run it on another machine or lower the request rate"
            ),
            Warning::PromptLengthDiffers {
                workload,
                requests,
                of_requests,
                intended,
                counted,
                text_prompts,
            } => write!(
                f,
                "{workload}: for {requests} of {of_requests} requests the server counted a different prompt length than intended (usage.prompt_tokens, e.g. {counted} tokens for {intended}){}: the records use the server's count and keep the intended one (client.intended_prompt_len)",
                if *text_prompts {
                    "; the text prompts were built for --tokenizer's count: is it the server's model's tokenizer?"
                } else {
                    "; e.g. the server adds BOS"
                }
            ),
            Warning::EngineSettingsNotApplied { workload } => write!(
                f,
                "{workload}: its [engine] settings do not reach a --target server; configure the server itself (in --launch)"
            ),
            Warning::ServerKilled { log } => write!(
                f,
                "the server did not exit within 30 s of SIGTERM and was killed; see its log {log}"
            ),
            Warning::CredentialsInUrl { env } => write!(
                f,
                "--target had credentials in its URL; they were dropped (not sent, not stored): put an API key in ${env}"
            ),
            Warning::TargetUnhealthy { url } => write!(
                f,
                "{url}/health did not answer 200; running anyway (use --launch to start the server and wait for it)"
            ),
            Warning::EngineSwitchesInEnvironment { switches } => write!(
                f,
                "engine switches set in this environment: {}; every engine this command starts runs with them, and its runs are judged only against runs made with the same switches (fingerprint field engine_env); unset them to measure the engine's defaults, or use --b-env to measure one against the defaults",
                crate::format::env_assignments(switches)
            ),
        }
    }
}

/// Prints a warning to stderr.
pub fn emit(warning: &Warning) {
    eprintln!("warning: {warning}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_warning_names_a_remedy_or_cause() {
        let w = Warning::NoisyMetrics {
            workload: "w".into(),
            metrics: vec![("output_throughput".into(), 0.184)],
        };
        let text = w.to_string();
        assert!(text.contains("output_throughput 18.4%"), "{text}");
        assert!(text.contains("--trials"), "{text}");
        let w = Warning::EngineSwitchesInEnvironment {
            switches: [("DYNO_CUDA_ATTN_MMA".into(), "0".into())].into(),
        };
        let text = w.to_string();
        assert!(text.contains("DYNO_CUDA_ATTN_MMA=0"), "{text}");
        assert!(text.contains("unset them"), "{text}");
    }
}
