//! Property tests that feed the spec parser and the requests file parser
//! damaged and random input: each must answer with a value or an error,
//! never a panic. `DYNO_FUZZ_CASES=1000000 cargo test --release -p workloads
//! --test fuzz` runs a million cases per target (CI runs a few thousand).

use std::path::Path;

use proptest::prelude::*;
use workloads::request::MAX_ARRIVAL_S;
use workloads::{Request, TokenSpace, WorkloadSpec};

fn config() -> ProptestConfig {
    let cases = std::env::var("DYNO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `base` with up to 8 byte edits (replace, insert, delete) at random
/// places, plus the odd characters a hand edit or a broken disk brings.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    let edits = prop::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 0..8);
    edits.prop_map(move |edits| {
        const ODD: &[u8] = b"0123456789.-+eE\"'[]{}=,#\n \t\\_abcnNiI";
        let mut bytes = base.as_bytes().to_vec();
        for (pos, op, b) in edits {
            let b = if b < 128 {
                ODD[b as usize % ODD.len()]
            } else {
                b
            };
            let at = if bytes.is_empty() {
                0
            } else {
                pos % bytes.len()
            };
            match op {
                0 if !bytes.is_empty() => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

const SPEC: &str = r#"name = "f"
description = "fuzzed"
model = "tiny"
seed = 3
requests = 12
warmup_requests = 2
prompt_len = { uniform = { min = 16, max = 48 } }
output_len = { normal = { mean = 8.0, std_dev = 2.0, min = 1, max = 16 } }
arrival = { gamma = { rate = 6.0, burstiness = 0.5 } }
expect_rejections = false

[prefix]
groups = 2
length = 8

[sampling]
temperature = 0.7
top_k = 5
top_p = 0.9
ignore_eos = true

[slo]
ttft_ms = 2000.0
tpot_ms = 200.0

[thresholds]
output_throughput = 0.05

[engine]
max_num_seqs = 8
"#;

fn check_spec(text: &str) {
    let Ok(spec) = WorkloadSpec::parse(text, Path::new("dir/f.toml")) else {
        return;
    };
    // Generating is cheap for small specs: it must hold up too.
    let small = spec.requests + spec.warmup_requests <= 64
        && spec.prompt_len.bounds().is_some_and(|(_, max)| max <= 4096)
        && spec.output_len.bounds().is_some_and(|(_, max)| max <= 4096);
    if small {
        let space = TokenSpace {
            vocab_size: 1000,
            excluded: vec![2],
        };
        if let Ok(requests) = spec.generate(&space) {
            assert_eq!(requests.len() as u32, spec.requests + spec.warmup_requests);
            for r in &requests {
                assert!(r.arrival_s.is_finite() && r.arrival_s <= MAX_ARRIVAL_S);
                assert!(r.sampling.problem().is_none(), "{r:?}");
                assert!(r.prompt_token_ids.iter().all(|&t| t < 1000 && t != 2));
            }
        }
    }
}

const REQUEST: &str = r#"{"id":7,"arrival_s":0.25,"warmup":false,"prompt_token_ids":[1,2,3,4],"sampling":{"temperature":0.5,"top_k":3,"top_p":0.9,"seed":11,"max_tokens":8,"ignore_eos":true,"stop_token_ids":[5]}}"#;

fn check_request(line: &str) {
    if let Ok(r) = serde_json::from_str::<Request>(line) {
        let _ = r.sampling.problem();
        let _ = r.sampling.is_greedy();
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn spec_parser_survives_damaged_specs(text in mutated(SPEC)) {
        check_spec(&text);
    }

    #[test]
    fn spec_parser_survives_random_text(text in "\\PC{0,400}") {
        check_spec(&text);
    }

    #[test]
    fn requests_jsonl_lines_survive_damage(line in mutated(REQUEST)) {
        check_request(&line);
    }
}

#[test]
fn the_fuzzed_inputs_are_valid_before_damage() {
    WorkloadSpec::parse(SPEC, Path::new("dir/f.toml")).unwrap();
    serde_json::from_str::<Request>(REQUEST).unwrap();
}
