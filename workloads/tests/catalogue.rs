//! The shipped catalogue: every spec parses, validates and generates; the
//! suites name known workloads; unknown names list the known ones.

use workloads::{Catalogue, CatalogueError, SuiteDevice, TokenSpace};

fn catalogue() -> Catalogue {
    Catalogue::load(&Catalogue::builtin_dir()).unwrap_or_else(|e| panic!("{e}"))
}

/// Qwen-sized vocabulary with a few special ids excluded.
fn space() -> TokenSpace {
    TokenSpace {
        vocab_size: 151_936,
        excluded: vec![151_643, 151_644, 151_645],
    }
}

#[test]
fn every_spec_generates_what_it_asks_for() {
    let cat = catalogue();
    let space = space();
    let mut count = 0;
    for spec in cat.workloads() {
        count += 1;
        assert!(spec.model.is_some(), "{} names no model preset", spec.name);
        let reqs = spec.generate(&space).unwrap();
        let n = (spec.requests + spec.warmup_requests) as usize;
        assert_eq!(reqs.len(), n, "{}", spec.name);
        let (min_p, max_p) = spec.prompt_len.bounds().unwrap();
        let (min_o, max_o) = spec.output_len.bounds().unwrap();
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(r.id, i as u64);
            assert_eq!(r.warmup, i < spec.warmup_requests as usize);
            let len = r.prompt_token_ids.len() as u32;
            assert!(
                (min_p..=max_p).contains(&len),
                "{}: prompt {len}",
                spec.name
            );
            let out = r.sampling.max_tokens;
            assert!(
                (min_o..=max_o).contains(&out),
                "{}: output {out}",
                spec.name
            );
            assert!(r
                .prompt_token_ids
                .iter()
                .all(|t| *t < space.vocab_size && !space.excluded.contains(t)));
            assert_eq!(r.sampling.ignore_eos, spec.sampling.ignore_eos);
        }
        let measured = &reqs[spec.warmup_requests as usize..];
        assert!(measured
            .windows(2)
            .all(|w| w[0].arrival_s <= w[1].arrival_s));
        if spec.max_concurrency().is_some() {
            assert!(measured.iter().all(|r| r.arrival_s == 0.0));
        }
    }
    assert!(count >= 10, "only {count} specs");
}

#[test]
fn suites_have_the_promised_shape() {
    let cat = catalogue();
    let smoke = cat.suite_workloads("smoke").unwrap();
    assert_eq!(cat.suite("smoke").unwrap().device, Some(SuiteDevice::Cpu));
    assert!(smoke.iter().all(|w| w.model.as_deref() == Some("tiny")));
    // Kept small so 3 trials of the whole suite fit in well under 3 minutes
    // on 2 CPU cores (the tiny preset ran at ~1,000-1,400 output tok/s there).
    let tokens: u32 = smoke
        .iter()
        .map(|w| {
            (w.requests + w.warmup_requests)
                * (w.prompt_len.bounds().unwrap().1 + w.output_len.bounds().unwrap().1)
        })
        .sum();
    assert!(
        tokens <= 25_000,
        "smoke suite processes up to {tokens} tokens per trial set"
    );
    let kinds: Vec<_> = smoke
        .iter()
        .map(|w| (w.max_concurrency().is_some(), &w.arrival))
        .collect();
    assert!(kinds.iter().any(|(closed, _)| *closed));
    assert!(kinds
        .iter()
        .any(|(_, a)| matches!(a, workloads::Arrival::Poisson { .. })));

    let pr = cat.suite_workloads("pr").unwrap();
    assert!(pr
        .iter()
        .all(|w| w.model.as_deref() == Some("smollm2-135m")));
    assert!(pr.iter().any(|w| w.slo.is_some()));
    assert!(pr.iter().any(|w| w.max_concurrency() == Some(1)));

    let nightly = cat.suite_workloads("nightly").unwrap();
    for model in ["qwen3-0.6b", "qwen2.5-0.5b"] {
        assert!(nightly.iter().any(|w| w.model.as_deref() == Some(model)
            && w.requests == 1000
            && w.prompt_len.bounds() == Some((256, 256))
            && w.output_len.bounds() == Some((1024, 1024))
            && w.sampling.ignore_eos));
    }
    let mut sweep: Vec<u32> = nightly
        .iter()
        .filter(|w| w.model.as_deref() == Some("qwen3-0.6b"))
        .filter_map(|w| w.max_concurrency())
        .collect();
    sweep.sort_unstable();
    assert_eq!(sweep, [1, 8, 32, 128]);
    assert!(nightly.iter().any(|w| w.prefix.is_some()));
    assert!(nightly
        .iter()
        .any(|w| matches!(w.arrival, workloads::Arrival::Gamma { .. })));
}

#[test]
fn unknown_names_list_the_known_ones() {
    let cat = catalogue();
    let e = cat.workload("no-such-workload").unwrap_err();
    assert!(matches!(e, CatalogueError::UnknownWorkload { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("no-such-workload")
            && msg.contains("smoke-offline")
            && msg.contains("pr-smollm2-serving"),
        "{msg}"
    );
    let msg = cat.suite("weekly").unwrap_err().to_string();
    assert!(
        msg.contains("weekly") && msg.contains("nightly, pr, smoke"),
        "{msg}"
    );
}

#[test]
fn a_broken_catalogue_names_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("specs")).unwrap();
    let spec = "name = \"a\"\ndescription = \"d\"\nseed = 1\nrequests = 2\nwarmup_requests = 0\nprompt_len = { fixed = 4 }\noutput_len = { fixed = 2 }\narrival = \"offline\"\n";
    std::fs::write(dir.path().join("specs/a.toml"), spec).unwrap();
    std::fs::write(
        dir.path().join("specs/b.toml"),
        spec.replace("\"a\"", "\"b\"")
            .replace("seed = 1", "seed = -1"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("suites.toml"),
        "[s]\ndescription = \"d\"\nworkloads = [\"a\"]\n",
    )
    .unwrap();
    let e = Catalogue::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("b.toml:3: field `seed`"), "{e}");

    std::fs::remove_file(dir.path().join("specs/b.toml")).unwrap();
    let cat = Catalogue::load(dir.path()).unwrap();
    assert_eq!(cat.suite_workloads("s").unwrap()[0].name, "a");

    std::fs::write(
        dir.path().join("suites.toml"),
        "[s]\ndescription = \"d\"\nworkloads = [\"a\", \"z\"]\n",
    )
    .unwrap();
    let e = Catalogue::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("suites.toml:3: field `s.workloads[1]`: unknown workload `z`; known: a"),
        "{e}"
    );
}
