//! The stored latency percentiles agree with numpy's `percentile` (default
//! linear method), which is what `vllm bench serve` reports. The expected
//! values were computed by numpy: `xtask/scripts/percentile_fixtures.py`.

use serde::Deserialize;
use workloads::{FinishReason, RecordStatus, RequestRecord};
use xtask::metrics::{self, Slos};

#[derive(Deserialize)]
struct Fixtures {
    numpy: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    values_s: Vec<f64>,
    percents: Vec<f64>,
    vllm_ms: Vec<f64>,
    mean_ms: f64,
}

fn fixtures() -> Fixtures {
    let text = include_str!("fixtures/percentiles.json");
    serde_json::from_str(text).expect("fixture parses")
}

/// A request that arrives at 0 and gets its first token at `ttft_s`.
fn record(id: u64, ttft_s: f64) -> RequestRecord {
    RequestRecord {
        id,
        status: RecordStatus::Ok,
        arrival_s: 0.0,
        scheduled_s: Some(0.0),
        first_token_s: Some(ttft_s),
        token_times_s: vec![ttft_s],
        finish_s: Some(ttft_s),
        finish_reason: FinishReason::Length,
        prompt_len: 4,
        output_len: 1,
        preemptions: 0,
        num_cached_tokens: None,
        output_hash: format!("h{id}"),
        output_token_ids: vec![],
        client: None,
        spec_decode: None,
    }
}

/// Equal to the last bit, or within 2 ulps (summation order differs for
/// means; percentiles should be exact).
fn same(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 2.0 * f64::EPSILON * a.abs().max(b.abs())
}

#[test]
fn percentile_helper_matches_numpy_bit_for_bit() {
    let f = fixtures();
    assert!(!f.numpy.is_empty());
    for case in &f.cases {
        let got = metrics::percentiles_ms(&case.values_s, &case.percents);
        for ((g, want), p) in got.iter().zip(&case.vllm_ms).zip(&case.percents) {
            assert!(
                same(*g, *want),
                "{}: p{p} = {g:e}, numpy {want:e}",
                case.name
            );
        }
    }
}

#[test]
fn stored_ttft_metrics_are_vllm_percentiles() {
    for case in &fixtures().cases {
        let records: Vec<RequestRecord> = case
            .values_s
            .iter()
            .enumerate()
            .map(|(i, v)| record(i as u64, *v))
            .collect();
        let m = metrics::compute(&records, &[], None, &Slos::default()).unwrap();
        for (p, want) in case.percents.iter().zip(&case.vllm_ms) {
            let key = format!("p{p:.0}_ttft_ms");
            let got = m.values[&key];
            assert!(
                same(got, *want),
                "{}: {key} {got:e} vs numpy {want:e}",
                case.name
            );
        }
        let mean = m.values["mean_ttft_ms"];
        assert!(
            (mean - case.mean_ms).abs() <= 1e-12 * case.mean_ms.abs(),
            "{}: mean {mean} vs {}",
            case.name,
            case.mean_ms
        );
    }
}
