//! The generator: same spec + seed + token space → byte-identical requests,
//! pinned by a golden hash; shared prefixes are shared; arrivals follow the
//! spec; independent parts of a spec draw independently.

use std::path::Path;

use workloads::generate::{requests_bytes, requests_hash};
use workloads::{Request, TokenSpace, WorkloadSpec};

const SPEC: &str = r#"name = "golden"
description = "small spec whose generated file is pinned by hash"
seed = 42
requests = 6
warmup_requests = 2
prompt_len = { lognormal = { mean = 12.0, sigma = 0.5, min = 6, max = 24 } }
output_len = { uniform = { min = 2, max = 9 } }
arrival = { poisson = { rate = 4.0 } }

[prefix]
groups = 2
length = 5

[sampling]
temperature = 0.7
top_k = 20
top_p = 0.9
"#;

fn spec(text: &str) -> WorkloadSpec {
    WorkloadSpec::parse(text, Path::new("golden.toml")).unwrap()
}

fn space() -> TokenSpace {
    TokenSpace {
        vocab_size: 1000,
        excluded: vec![0, 1, 2],
    }
}

fn generate(text: &str) -> Vec<Request> {
    spec(text).generate(&space()).unwrap()
}

/// If this fails, generation changed: every stored workload hash changes
/// with it. Update the hash only on purpose.
#[test]
fn generated_file_matches_the_golden_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.jsonl");
    let hash = spec(SPEC).write_requests(&space(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(blake3::hash(&bytes).to_hex().to_string(), hash);
    assert_eq!(spec(SPEC).resolved_hash(&space()).unwrap(), hash);
    assert_eq!(
        hash,
        "1d74b388e144e542c8a1412d362211088df20d749051d370e5a151120daaa1f2",
        "generation changed; the file is now:\n{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[test]
fn same_spec_gives_byte_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    spec(SPEC).write_requests(&space(), &a).unwrap();
    spec(SPEC).write_requests(&space(), &b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // And what is written reads back unchanged.
    let back: Vec<Request> = workloads::jsonl::read(&a).unwrap();
    assert_eq!(requests_bytes(&back), std::fs::read(&a).unwrap());
}

#[test]
fn seed_and_token_space_change_the_requests() {
    let base = requests_hash(&generate(SPEC));
    assert_ne!(
        base,
        requests_hash(&generate(&SPEC.replace("seed = 42", "seed = 43")))
    );
    let other_space = TokenSpace {
        vocab_size: 1001,
        excluded: vec![0, 1, 2],
    };
    assert_ne!(base, spec(SPEC).resolved_hash(&other_space).unwrap());
}

#[test]
fn shared_prefixes_are_really_shared() {
    let text = SPEC
        .replace("requests = 6", "requests = 40")
        .replace("groups = 2", "groups = 4");
    let reqs = generate(&text);
    let measured: Vec<&Request> = reqs.iter().filter(|r| !r.warmup).collect();
    let prefix = |r: &Request| r.prompt_token_ids[..5].to_vec();
    for (i, r) in measured.iter().enumerate() {
        // Same group (i mod 4): same first 5 tokens.
        assert_eq!(prefix(r), prefix(measured[i % 4]), "request {i}");
    }
    let groups: std::collections::BTreeSet<Vec<u32>> = measured.iter().map(|r| prefix(r)).collect();
    assert_eq!(groups.len(), 4);
    // The rest of each prompt is its own: no two prompts are equal.
    let prompts: std::collections::BTreeSet<&Vec<u32>> =
        measured.iter().map(|r| &r.prompt_token_ids).collect();
    assert_eq!(prompts.len(), measured.len());
    // Warmup requests use prefixes of their own, so they do not warm the
    // prefix cache for the measured ones.
    for w in reqs.iter().filter(|r| r.warmup) {
        assert!(!groups.contains(&prefix(w)));
    }
}

#[test]
fn poisson_arrivals_have_mean_gap_one_over_rate() {
    let text = SPEC
        .replace("requests = 6", "requests = 20000")
        .replace("rate = 4.0", "rate = 50.0");
    let reqs = generate(&text);
    let t: Vec<f64> = reqs
        .iter()
        .filter(|r| !r.warmup)
        .map(|r| r.arrival_s)
        .collect();
    assert_eq!(t[0], 0.0);
    let mean_gap = t[t.len() - 1] / (t.len() - 1) as f64;
    // sd of the mean gap: 0.02 / sqrt(20000) ≈ 0.00014.
    assert!((mean_gap - 0.02).abs() < 0.0006, "mean gap {mean_gap}");
    assert!(reqs.iter().filter(|r| r.warmup).all(|r| r.arrival_s == 0.0));
}

#[test]
fn independent_parts_draw_independently() {
    let base = generate(SPEC);
    let prompts = |rs: &[Request]| {
        rs.iter()
            .map(|r| r.prompt_token_ids.clone())
            .collect::<Vec<_>>()
    };
    // Another arrival rate: same prompts and lengths, other times.
    let faster = generate(&SPEC.replace("rate = 4.0", "rate = 9.0"));
    assert_eq!(prompts(&base), prompts(&faster));
    assert_ne!(base[3].arrival_s, faster[3].arrival_s);
    // More warmup requests: the measured requests are unchanged.
    let more_warmup = generate(&SPEC.replace("warmup_requests = 2", "warmup_requests = 5"));
    let measured = |rs: &[Request]| {
        rs.iter()
            .filter(|r| !r.warmup)
            .map(|r| (r.prompt_token_ids.clone(), r.arrival_s, r.sampling.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(measured(&base), measured(&more_warmup));
}

#[test]
fn sampling_parameters_and_seeds_are_per_request() {
    let reqs = generate(SPEC);
    let seeds: std::collections::BTreeSet<u64> = reqs.iter().map(|r| r.sampling.seed).collect();
    assert_eq!(seeds.len(), reqs.len());
    for r in &reqs {
        assert_eq!(
            (r.sampling.temperature, r.sampling.top_k, r.sampling.top_p),
            (0.7, 20, 0.9)
        );
        assert!((2..=9).contains(&r.sampling.max_tokens));
        assert!(!r.sampling.ignore_eos);
        assert!(r.prompt_token_ids.iter().all(|t| (3..1000).contains(t)));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any valid spec: generation is repeatable, lengths stay in bounds,
    /// excluded ids never appear, and arrivals never go back in time.
    #[test]
    fn any_spec_generates_within_its_bounds(
        seed in 0u64..u64::MAX,
        min in 2u32..64,
        extra in 0u32..64,
        prefix in 1u32..2,
        vocab in 4u32..500,
        rate in 0.1f64..1000.0,
    ) {
        let text = format!(
            "name = \"golden\"\ndescription = \"p\"\nseed = {seed}\nrequests = 12\nwarmup_requests = 2\n\
             prompt_len = {{ uniform = {{ min = {min}, max = {} }} }}\noutput_len = {{ normal = {{ mean = 8.0, std_dev = 4.0, min = 1, max = 12 }} }}\n\
             arrival = {{ gamma = {{ rate = {rate:?}, burstiness = 0.5 }} }}\n[prefix]\ngroups = 3\nlength = {prefix}\n",
            min + extra
        );
        let spec = spec(&text);
        let space = TokenSpace { vocab_size: vocab, excluded: vec![0, vocab - 1] };
        let a = spec.generate(&space).unwrap();
        proptest::prop_assert_eq!(requests_bytes(&a), requests_bytes(&spec.generate(&space).unwrap()));
        for r in &a {
            let len = r.prompt_token_ids.len() as u32;
            proptest::prop_assert!(len >= min && len <= min + extra);
            proptest::prop_assert!((1..=12).contains(&r.sampling.max_tokens));
            proptest::prop_assert!(r.prompt_token_ids.iter().all(|&t| t != 0 && t < vocab - 1));
        }
        proptest::prop_assert!(a.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
    }
}
