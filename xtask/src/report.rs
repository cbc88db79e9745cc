//! What a run says to people and to other tools: a summary table per
//! workload (mean ± stdev across trials and the coefficient of variation,
//! in the hyperfine/criterion spirit: what was measured, how many trials,
//! how spread), the run record as JSON, and a vLLM `--save-result` export.

use std::path::Path;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde_json::{json, Value};
use workloads::{RecordStatus, RequestRecord};

use crate::format;
use crate::metrics::{self, Latencies};
use crate::run_record::{metric_def, names, RunRecord, TrialStatus, WorkloadRun};
use crate::side::short_id;
use crate::stats::{self, spread};
use crate::warnings::{self, Warning, HIGH_CV};

/// The metrics shown in the terminal, in order.
const SHOWN: &[&str] = &[
    names::OUTPUT_THROUGHPUT,
    names::TOTAL_TOKEN_THROUGHPUT,
    names::REQUEST_THROUGHPUT,
    names::REQUEST_GOODPUT,
    names::MEAN_TTFT_MS,
    names::P99_TTFT_MS,
    names::MEAN_TPOT_MS,
    names::P99_TPOT_MS,
    names::MEAN_ITL_MS,
    names::P99_ITL_MS,
    names::MEAN_E2EL_MS,
    names::P99_E2EL_MS,
    names::MEAN_QUEUE_MS,
    names::PREFIX_CACHE_HIT_RATE,
    names::MEAN_STEP_MS,
    names::MEAN_BATCH_SIZE,
    names::REJECTED_REQUESTS,
    names::DECODE_THROUGHPUT,
    names::SPEC_ACCEPTANCE_RATE,
    names::SPEC_MEAN_ACCEPTED_LENGTH,
    names::PEAK_MEMORY_BYTES,
];

/// A metric's value in every Ok trial.
pub fn trial_values(w: &WorkloadRun, metric: &str) -> Vec<f64> {
    w.trials
        .iter()
        .filter(|t| t.status == TrialStatus::Ok)
        .filter_map(|t| t.metrics.get(metric).copied())
        .collect()
}

/// The table and the warnings for one workload.
pub fn workload_summary(w: &WorkloadRun) -> (Table, Vec<Warning>) {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["metric", "mean", "± stdev", "CV", "unit", "trials"]);
    let mut warnings = Vec::new();
    let mut noisy_metrics = Vec::new();
    for name in SHOWN {
        let Some(s) = spread(&trial_values(w, name)) else {
            continue;
        };
        let unit = metric_def(name).map(|d| d.unit).unwrap_or("");
        let noisy = s.n > 1 && s.cv > HIGH_CV;
        if noisy {
            noisy_metrics.push((name.to_string(), s.cv));
        }
        table.add_row(vec![
            Cell::new(name),
            Cell::new(format::value(s.mean)).set_alignment(CellAlignment::Right),
            Cell::new(format::value(s.stdev)).set_alignment(CellAlignment::Right),
            Cell::new(format!(
                "{}{}",
                format::cv(s.cv),
                if noisy { " !" } else { "" }
            ))
            .set_alignment(CellAlignment::Right),
            Cell::new(unit),
            Cell::new(s.n).set_alignment(CellAlignment::Right),
        ]);
    }
    let workload = w.name.clone();
    if !noisy_metrics.is_empty() {
        warnings.push(Warning::NoisyMetrics {
            workload: workload.clone(),
            metrics: noisy_metrics,
        });
    }
    for t in &w.trials {
        match &t.status {
            TrialStatus::Ok => {}
            TrialStatus::Failed { reason, .. } => warnings.push(Warning::TrialFailed {
                workload: workload.clone(),
                trial: t.index,
                reason: reason.clone(),
            }),
            TrialStatus::TimedOut { after_s } => warnings.push(Warning::TrialTimedOut {
                workload: workload.clone(),
                trial: t.index,
                after_s: *after_s,
            }),
        }
    }
    for t in &w.trials {
        let reasons: Vec<String> = [&t.gpu_before, &t.gpu_after]
            .into_iter()
            .flatten()
            .flat_map(|g| g.throttle_reasons.iter().cloned())
            .filter(|r| r != "gpu_idle")
            .collect();
        if !reasons.is_empty() {
            warnings.push(Warning::GpuThrottled {
                workload: workload.clone(),
                trial: t.index,
                reasons,
            });
        }
    }
    if let Some(warning) = rejection_warning(w) {
        warnings.push(warning);
    }
    let mut hashes: Vec<&str> = w
        .trials
        .iter()
        .filter_map(|t| t.output_hash.as_deref())
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    if hashes.len() > 1 {
        warnings.push(Warning::OutputsDiffer {
            workload,
            distinct: hashes.len(),
        });
    }
    (table, warnings)
}

/// Whether the workload's spec says some requests are meant to be rejected
/// (`expect_rejections = true`).
pub fn expects_rejections(w: &WorkloadRun) -> bool {
    w.spec.get("expect_rejections") == Some(&serde_json::Value::Bool(true))
}

/// The Ok trials of `w` in which the engine rejected requests although the
/// spec does not expect it: their throughput is that of the requests that
/// ran, not of the workload.
pub fn unexpected_rejections(w: &WorkloadRun) -> Vec<(u32, f64)> {
    if expects_rejections(w) {
        return Vec::new();
    }
    w.trials
        .iter()
        .filter(|t| t.status == TrialStatus::Ok)
        .filter_map(|t| {
            let n = t.metrics.get(names::REJECTED_REQUESTS).copied()?;
            (n > 0.0).then_some((t.index, n))
        })
        .collect()
}

fn rejection_warning(w: &WorkloadRun) -> Option<Warning> {
    let flagged = unexpected_rejections(w);
    let most = flagged.iter().map(|(_, n)| *n).fold(0.0, f64::max);
    (!flagged.is_empty()).then(|| Warning::UnexpectedRejections {
        workload: w.name.clone(),
        trials: flagged.len(),
        of_trials: w.trials.len(),
        most: most as u64,
        requests: w.spec.get("requests").and_then(|v| v.as_u64()),
    })
}

/// Prints every workload's summary to stdout.
pub fn print_summary(run: &RunRecord, run_id: &str) {
    let f = &run.fingerprint;
    let target = match f.gpus.first() {
        Some(g) => format!("{} ({})", g.name, f.device),
        None => format!("{} ({})", f.host.cpu_model, f.device),
    };
    println!();
    println!(
        "run {run_id}  model {}  on {target}  commit {}{}",
        f.model,
        f.source
            .git_commit
            .as_deref()
            .map(short_id)
            .unwrap_or("none"),
        if f.source.git_dirty { " (dirty)" } else { "" }
    );
    if !f.engine_env.is_empty() {
        println!(
            "engine switches: {}",
            format::env_assignments(&f.engine_env)
        );
    }
    for w in &run.workloads {
        let ok = w
            .trials
            .iter()
            .filter(|t| t.status == TrialStatus::Ok)
            .count();
        println!();
        println!(
            "workload {}: {ok} of {} trials ok, each a fresh engine process; mean ± stdev across trials",
            w.name,
            w.trials.len()
        );
        let (table, warnings) = workload_summary(w);
        if ok > 0 {
            println!("{table}");
        } else {
            println!("no successful trial: nothing was measured");
        }
        if f.device == "cuda" {
            if let Some(d) =
                spread(&trial_values(w, names::OUTPUT_THROUGHPUT)).map(|s| derived(s.mean))
            {
                println!(
                    "derived (1 GPU): {:.0} output tok/s per GPU, {:.2} GPU-days per 1B output tokens, {:.1} GPUs for 1B tokens/hour",
                    d.output_tps_per_gpu, d.gpu_days_to_process_1b_tokens, d.gpus_for_1b_tokens_per_hour
                );
            }
        }
        for warning in &warnings {
            warnings::emit(warning);
        }
    }
}

/// Capacity-planning numbers from output throughput (the engine runs on
/// one GPU), as in seed 004's sweep tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Derived {
    pub output_tps_per_gpu: f64,
    pub gpu_days_to_process_1b_tokens: f64,
    pub gpus_for_1b_tokens_per_hour: f64,
}

pub fn derived(output_tps: f64) -> Derived {
    const GPUS: f64 = 1.0;
    let per_gpu = output_tps / GPUS;
    Derived {
        output_tps_per_gpu: per_gpu,
        gpu_days_to_process_1b_tokens: 1e9 / per_gpu / 86_400.0,
        gpus_for_1b_tokens_per_hour: 1e9 / 3_600.0 / per_gpu,
    }
}

/// Writes `value` (a run record, or a list of them) as pretty JSON.
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    workloads::jsonl::write_bytes_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The Ok trial whose output throughput is the median of the workload's
/// trials: the one exported as "the" benchmark result.
pub fn median_trial(w: &WorkloadRun) -> Option<u32> {
    let mut ok: Vec<(f64, u32)> = w
        .trials
        .iter()
        .filter(|t| t.status == TrialStatus::Ok)
        .filter_map(|t| {
            t.metrics
                .get(names::OUTPUT_THROUGHPUT)
                .map(|v| (*v, t.index))
        })
        .collect();
    ok.sort_by(|a, b| a.0.total_cmp(&b.0));
    ok.get(ok.len().saturating_sub(1) / 2).map(|(_, i)| *i)
}

/// One trial as vLLM's `benchmark_serving.py --save-result` would have
/// written it, so dashboards that read those files read ours. Times in the
/// per-request lists are seconds, summaries milliseconds, as in vLLM.
pub fn vllm_result(
    run: &RunRecord,
    w: &WorkloadRun,
    trial: u32,
    records: &[RequestRecord],
) -> anyhow::Result<Value> {
    let t = w
        .trials
        .iter()
        .find(|t| t.index == trial)
        .context("no such trial")?;
    let mut sorted: Vec<&RequestRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.id);
    let completed: Vec<&RequestRecord> = sorted
        .iter()
        .copied()
        .filter(|r| r.status == RecordStatus::Ok)
        .collect();
    let lat: Latencies = metrics::latencies(&completed)?;
    let m = |k: &str| t.metrics.get(k).copied();
    // Per-request lists cover every request, as in vLLM: a rejected one has
    // TTFT 0 and no gaps (`completed` keeps the id order of `sorted`).
    let (mut ttfts, mut itls) = (Vec::new(), Vec::new());
    let mut next = 0;
    for r in &sorted {
        if r.status == RecordStatus::Ok {
            ttfts.push(lat.ttft_s[next]);
            itls.push(lat.itl_s[next].clone());
            next += 1;
        } else {
            ttfts.push(0.0);
            itls.push(Vec::new());
        }
    }
    let mut out = json!({
        "date": run.created_at,
        "backend": format!("dyno-{}", run.fingerprint.device),
        "model_id": run.fingerprint.model,
        "tokenizer_id": run.fingerprint.model,
        "num_prompts": records.len(),
        "max_concurrency": w.spec.get("arrival").and_then(|a| a.get("concurrency")).cloned(),
        "duration": m("duration_s"),
        "completed": completed.len(),
        "failed": records.len() - completed.len(),
        "total_input_tokens": completed.iter().map(|r| u64::from(r.prompt_len)).sum::<u64>(),
        "total_output_tokens": completed.iter().map(|r| u64::from(r.output_len)).sum::<u64>(),
        "request_throughput": m("request_throughput"),
        "request_goodput": m("request_goodput"),
        "output_throughput": m("output_throughput"),
        "total_token_throughput": m("total_token_throughput"),
        "input_lens": sorted.iter().map(|r| r.prompt_len).collect::<Vec<_>>(),
        "output_lens": sorted.iter().map(|r| r.output_len).collect::<Vec<_>>(),
        "ttfts": ttfts,
        "itls": itls,
        "errors": sorted.iter().map(|r| match &r.status {
            RecordStatus::Ok => String::new(),
            RecordStatus::Rejected { reason } => reason.clone(),
            RecordStatus::NonfiniteLogits => "nonfinite_logits".to_string(),
        }).collect::<Vec<_>>(),
        "output_tps_per_gpu": m("output_throughput").map(|v| derived(v).output_tps_per_gpu),
        "gpu_days_to_process_1b_tokens": m("output_throughput").map(|v| derived(v).gpu_days_to_process_1b_tokens),
        "gpus_for_1b_tokens_per_hour": m("output_throughput").map(|v| derived(v).gpus_for_1b_tokens_per_hour),
        "dyno_workload": w.name,
        "dyno_trial": trial,
        "dyno_trials": w.trials.len(),
    });
    let itl: Vec<f64> = lat.itl_s.iter().flatten().copied().collect();
    for (base, samples) in [
        ("ttft", &lat.ttft_s),
        ("tpot", &lat.tpot_s),
        ("itl", &itl),
        ("e2el", &lat.e2el_s),
    ] {
        let ms: Vec<f64> = samples.iter().map(|s| s * 1e3).collect();
        let median = stats::median(samples) * 1e3;
        let fields = [
            (format!("mean_{base}_ms"), spread(&ms).map(|s| s.mean)),
            (format!("median_{base}_ms"), Some(median)),
            (format!("std_{base}_ms"), Some(stats::population_stdev(&ms))),
            (format!("p90_{base}_ms"), m(&format!("p90_{base}_ms"))),
            (format!("p95_{base}_ms"), m(&format!("p95_{base}_ms"))),
            (format!("p99_{base}_ms"), m(&format!("p99_{base}_ms"))),
        ];
        for (k, v) in fields {
            out[k] = json!(v.filter(|_| !samples.is_empty()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_record::TrialSummary;

    fn trial(index: u32, tps: f64, hash: &str) -> TrialSummary {
        TrialSummary {
            index,
            status: TrialStatus::Ok,
            metrics: [("output_throughput".to_string(), tps)].into(),
            output_hash: Some(hash.into()),
            records_object: None,
            step_log_object: None,
            gpu_before: None,
            gpu_after: None,
            wall_s: 1.0,
            block: None,
        }
    }

    fn workload(trials: Vec<TrialSummary>) -> WorkloadRun {
        WorkloadRun {
            name: "w".into(),
            workload_hash: "h".into(),
            spec: Value::Null,
            engine_config: Value::Null,
            trials,
        }
    }

    #[test]
    fn steady_trials_give_no_warning() {
        let w = workload(vec![trial(0, 100.0, "a"), trial(1, 101.0, "a")]);
        let (table, warnings) = workload_summary(&w);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(table.to_string().contains("output_throughput"));
    }

    #[test]
    fn noise_failures_throttling_and_output_changes_are_warned() {
        let mut failed = trial(2, 0.0, "a");
        failed.status = TrialStatus::Failed {
            reason: "boom".into(),
            class: None,
        };
        failed.metrics.clear();
        failed.output_hash = None;
        let mut throttled = trial(1, 130.0, "b");
        throttled.gpu_after = Some(crate::run_record::GpuSample {
            sm_clock_mhz: Some(1000),
            mem_clock_mhz: None,
            temperature_c: Some(90),
            power_w: None,
            throttle_reasons: vec!["gpu_idle".into(), "hw_thermal_slowdown".into()],
        });
        let w = workload(vec![trial(0, 100.0, "a"), throttled, failed]);
        let (_, warnings) = workload_summary(&w);
        let all: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(all.contains("output_throughput 18.4%"), "{all}");
        assert!(all.contains("trial 3 failed: boom"), "{all}");
        assert!(
            all.contains("hw_thermal_slowdown") && !all.contains("gpu_idle"),
            "{all}"
        );
        assert!(all.contains("2 different outputs"), "{all}");
        assert_eq!(median_trial(&w), Some(0));
    }

    #[test]
    fn derived_capacity_numbers() {
        // 10,000 tok/s: 1e9 / 1e4 = 1e5 s = 1.157 GPU-days; 1e9 tokens an
        // hour is 277,778 tok/s = 27.8 GPUs.
        let d = derived(10_000.0);
        assert_eq!(d.output_tps_per_gpu, 10_000.0);
        assert!((d.gpu_days_to_process_1b_tokens - 100_000.0 / 86_400.0).abs() < 1e-9);
        assert!((d.gpus_for_1b_tokens_per_hour - 27.777_777_777_777_78).abs() < 1e-9);
    }
}
