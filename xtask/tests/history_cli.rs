//! `cargo xtask history` as a user runs it: the xtask binary on a store
//! built in a temporary directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use xtask::fixtures::{cpu_fingerprint, ok_trial, run, workload};
use xtask::run_record::RunRecord;
use xtask::store::Store;

/// A run of two workloads at `commit`, made `day` days into the month:
/// `offline`'s throughput is `throughput` (±0.5% across its three trials).
fn nightly(day: u32, commit: &str, throughput: f64, dirty: bool) -> RunRecord {
    let trials = |base: f64, ttft: f64| {
        (0..3)
            .map(|t| {
                let wiggle = 1.0 + 0.005 * (f64::from(t) - 1.0);
                ok_trial(
                    t,
                    &[
                        ("output_throughput", base * wiggle),
                        ("p50_ttft_ms", ttft * wiggle),
                        ("p50_tpot_ms", 2.0 * wiggle),
                        ("p99_e2el_ms", 300.0 * wiggle),
                        ("mean_queue_ms", 0.0),
                    ],
                    "h",
                )
            })
            .collect::<Vec<_>>()
    };
    let mut fingerprint = cpu_fingerprint();
    fingerprint.source.git_commit = Some(commit.to_string());
    fingerprint.source.git_dirty = dirty;
    let mut r = run(
        fingerprint,
        vec![
            workload("offline", trials(throughput, 50.0)),
            workload("serving", trials(500.0, 20.0 + f64::from(day % 3))),
        ],
    );
    r.created_at = format!("2026-11-{day:02}T03:00:00Z");
    r
}

fn commit(i: usize) -> String {
    format!("{i:02x}").repeat(20)
}

/// Sixteen clean runs: offline's throughput drops 10% from the eleventh on
/// (commit 0a…), with run-to-run noise of about 1%.
fn store_with_a_shift(root: &Path) {
    let store = Store::open(root).unwrap();
    let noise = [
        1.004, 0.991, 1.008, 0.997, 1.0, 0.989, 1.011, 0.995, 1.006, 0.993, 1.002, 0.998, 0.994,
        1.007, 0.996, 1.003,
    ];
    for (i, wiggle) in noise.iter().enumerate() {
        let level = if i >= 10 { 900.0 } else { 1000.0 };
        store
            .add_run(&nightly(i as u32 + 1, &commit(i), level * wiggle, false))
            .unwrap();
    }
}

fn xtask(args: &[&str], summary: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("GITHUB_STEP_SUMMARY", summary)
        .output()
        .unwrap()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.display().to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn finds_the_commit_where_throughput_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    store_with_a_shift(&results);
    let before = snapshot(&results);
    let summary = dir.path().join("summary.md");
    let svg = dir.path().join("plots");
    let out = xtask(
        &[
            "history",
            "--results",
            results.to_str().unwrap(),
            "--json",
            "--svg",
            svg.to_str().unwrap(),
        ],
        &summary,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let h: Value = serde_json::from_slice(&out.stdout).unwrap();
    let series = h["series"].as_array().unwrap();
    // Both workloads of the newest run, four headline metrics each.
    assert_eq!(series.len(), 8);
    let offline = series
        .iter()
        .find(|s| s["workload"] == "offline" && s["metric"] == "output_throughput")
        .unwrap();
    assert_eq!(offline["points"].as_array().unwrap().len(), 16);
    let cps = offline["change_points"].as_array().unwrap();
    assert_eq!(cps.len(), 1, "{cps:?}");
    let cp = &cps[0];
    assert_eq!(cp["index"], 10);
    assert_eq!(cp["commit"], commit(10));
    assert_eq!(cp["previous_commit"], commit(9));
    assert_eq!(cp["direction"], "regression");
    let change = cp["shift"]["relative_change"].as_f64().unwrap();
    assert!((change + 0.10).abs() < 0.01, "{change}");
    let ci = cp["shift"]["ci95"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(lo < change && change < hi && hi < 0.0, "[{lo}, {hi}]");
    assert!(cp["p_value"].as_f64().unwrap() <= 0.01);
    // Nothing else moved.
    let others: usize = series
        .iter()
        .map(|s| s["change_points"].as_array().unwrap().len())
        .sum();
    assert_eq!(others, 1);

    let plots: Vec<_> = std::fs::read_dir(&svg).unwrap().collect();
    assert_eq!(plots.len(), 8);
    let plot = std::fs::read_to_string(svg.join(format!(
        "offline-{}-output_throughput.svg",
        offline["class_hash"].as_str().unwrap()
    )))
    .unwrap();
    assert!(plot.starts_with("<svg"), "{}", &plot[..100]);
    assert!(
        plot.contains("0a0a0a0a0a"),
        "the change point's commit labels the plot"
    );

    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains("### dyno history: change points"), "{md}");
    assert!(
        md.contains("1 change point(s), 1 of them regressions"),
        "{md}"
    );
    assert!(md.contains("`0a0a0a0a0a`"), "{md}");

    assert_eq!(snapshot(&results), before, "history changed the store");
}

#[test]
fn table_for_one_class_and_metric() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    store_with_a_shift(&results);
    let summary = dir.path().join("summary.md");
    let json = xtask(
        &[
            "history",
            "--results",
            results.to_str().unwrap(),
            "--json",
            "--no-step-summary",
        ],
        &summary,
    );
    let h: Value = serde_json::from_slice(&json.stdout).unwrap();
    let class = h["series"][0]["class_hash"].as_str().unwrap().to_string();
    let out = xtask(
        &[
            "history",
            "--results",
            results.to_str().unwrap(),
            "--class",
            &class[..8],
            "--metric",
            "output_throughput",
            "--metric",
            "mean_queue_ms",
            "--no-step-summary",
        ],
        &summary,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("`offline`"), "{text}");
    assert!(!text.contains("`serving`"), "{text}");
    assert!(text.contains("16 runs"), "{text}");
    assert!(text.contains("regression"), "{text}");
    assert!(text.contains("-9.9%"), "{text}");
    assert!(!summary.exists(), "--no-step-summary wrote the summary");
}

#[test]
fn the_default_covers_every_model_of_the_newest_bench() {
    // A suite over two models stores one run per model, both at one commit.
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let store = Store::open(&results).unwrap();
    for day in 1..=3u32 {
        let c = commit(day as usize);
        let mut a = nightly(day, &c, 1000.0 + f64::from(day), false);
        a.workloads.truncate(1);
        let mut b = nightly(day, &c, 500.0 + f64::from(day), false);
        b.fingerprint.model = "other".into();
        b.fingerprint.model_hash = "m2".into();
        b.workloads.truncate(1);
        b.workloads[0].name = "other-offline".into();
        b.created_at = format!("2026-11-{day:02}T04:00:00Z");
        store.add_run(&a).unwrap();
        store.add_run(&b).unwrap();
    }
    let summary = dir.path().join("summary.md");
    let out = xtask(
        &[
            "history",
            "--results",
            results.to_str().unwrap(),
            "--json",
            "--no-step-summary",
        ],
        &summary,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let h: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut workloads: Vec<&str> = h["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["workload"].as_str().unwrap())
        .collect();
    workloads.dedup();
    assert_eq!(workloads, vec!["offline", "other-offline"]);
    let series = &h["series"][0];
    assert_eq!(series["points"].as_array().unwrap().len(), 3);
    assert!(series["not_searched"]
        .as_str()
        .unwrap()
        .contains("needs at least 10"));
}

/// A git repository with three commits made on days 1, 2 and 3; their ids.
fn repo_with_three_commits(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let git = |args: &[&str], unix_time: i64| xtask::fixtures::git(dir, args, unix_time);
    git(&["init", "-q"], 0);
    (1..=3i64)
        .map(|day| {
            let when = 1_795_000_000 + day * 86_400;
            git(
                &["commit", "-q", "--allow-empty", "-m", &format!("day {day}")],
                when,
            );
            git(&["rev-parse", "HEAD"], when)
        })
        .collect()
}

#[test]
fn runs_can_be_ordered_by_commit_time() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let commits = repo_with_three_commits(&repo);
    let results = dir.path().join("results");
    let store = Store::open(&results).unwrap();
    // The newest commit was benched first, the oldest last.
    for (day, c) in [(1u32, &commits[2]), (2, &commits[1]), (3, &commits[0])] {
        store.add_run(&nightly(day, c, 1000.0, false)).unwrap();
    }
    let summary = dir.path().join("summary.md");
    let order = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "history",
            "--results",
            results.to_str().unwrap(),
            "--json",
            "--no-step-summary",
            "--workload",
            "offline",
        ];
        args.extend(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(&args)
            .env("DYNO_ROOT", &repo)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let h: Value = serde_json::from_slice(&out.stdout).unwrap();
        h["series"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["commit"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        order(&[]),
        vec![commits[2].clone(), commits[1].clone(), commits[0].clone()]
    );
    assert_eq!(order(&["--order", "commit"]), commits);

    // A commit the repository does not have.
    store
        .add_run(&nightly(4, &commit(9), 1000.0, false))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "history",
            "--results",
            results.to_str().unwrap(),
            "--order",
            "commit",
        ])
        .env("DYNO_ROOT", &repo)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not in the repository"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dirty_runs_are_left_out_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let store = Store::open(&results).unwrap();
    store
        .add_run(&nightly(1, &commit(1), 1000.0, false))
        .unwrap();
    store
        .add_run(&nightly(2, &commit(1), 1001.0, true))
        .unwrap();
    let summary = dir.path().join("summary.md");
    let args = [
        "history",
        "--results",
        results.to_str().unwrap(),
        "--workload",
        "offline",
    ];
    let out = xtask(&args, &summary);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--include-dirty"), "{}", stderr(&out));
    let with_dirty: Vec<&str> = args.iter().copied().chain(["--include-dirty"]).collect();
    let out = xtask(&with_dirty, &summary);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("+dirty"));
}

#[test]
fn bad_input_exits_2_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.md");

    // No store at all: not created.
    let missing = dir.path().join("nothing-here");
    let out = xtask(
        &["history", "--results", missing.to_str().unwrap()],
        &summary,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no runs in"), "{}", stderr(&out));
    assert!(!missing.exists());

    // A history of one point.
    let one = dir.path().join("one");
    Store::open(&one)
        .unwrap()
        .add_run(&nightly(1, &commit(1), 1000.0, false))
        .unwrap();
    let before = snapshot(&one);
    let out = xtask(&["history", "--results", one.to_str().unwrap()], &summary);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has 1 run(s) with output_throughput; a history needs at least 2"),
        "{}",
        stderr(&out)
    );

    let results = dir.path().join("results");
    store_with_a_shift(&results);
    let before_results = snapshot(&results);
    let r = results.to_str().unwrap();
    for (args, message) in [
        (
            vec!["--metric", "tokens_per_joule"],
            "unknown metric 'tokens_per_joule'",
        ),
        (
            vec!["--class", "ffffffff"],
            "no stored run has class 'ffffffff'",
        ),
        (
            vec!["--workload", "chat"],
            "workload 'chat' is not in the newest bench",
        ),
        (
            vec!["--alpha", "1.5"],
            "--alpha 1.5 must lie strictly between 0 and 1",
        ),
        (vec!["--min-segment", "1"], "--min-segment 1 is too small"),
        (
            vec!["--permutations", "10"],
            "can never give a p-value at or below",
        ),
        // goodput is a known metric these runs never measured.
        (
            vec!["--metric", "request_goodput"],
            "has 0 run(s) with request_goodput",
        ),
    ] {
        let mut full = vec!["history", "--results", r, "--no-step-summary"];
        full.extend(args.iter().copied());
        let out = xtask(&full, &summary);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(snapshot(&one), before);
    assert_eq!(snapshot(&results), before_results);
    assert!(!summary.exists(), "a failed history wrote a job summary");
}
