//! `cargo xtask store ...`: look at, check and move what is in the store.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};

use crate::cli::{StoreArgs, StoreCmd};
use crate::run_record::names;
use crate::run_record::{metric_def, RunRecord, TrialStatus, WorkloadRun};
use crate::store::{Store, DEFAULT_GC_GRACE};
use crate::{format, stats};

/// `cargo xtask store ...` in the workspace at `repo_root`.
pub fn run_cli(args: StoreArgs, repo_root: &Path) -> anyhow::Result<i32> {
    let root = args.results.unwrap_or_else(|| repo_root.join("results"));
    run(args.command, &root)
}

/// Runs `cmd` on the store at `root`; returns the process exit code.
pub fn run(cmd: StoreCmd, root: &Path) -> anyhow::Result<i32> {
    let store = Store::open(root).with_context(|| format!("opening store {}", root.display()))?;
    match cmd {
        StoreCmd::Ls => ls(&store),
        StoreCmd::Show { run, json } => show(&store, &run, json),
        StoreCmd::Verify => verify(&store),
        StoreCmd::Fsck { repair } => fsck(&store, repair),
        StoreCmd::Reindex => reindex(&store),
        StoreCmd::Rm { run } => {
            let id = store.remove_run(&run)?;
            println!(
                "removed run {id}; `cargo xtask store gc --results {}` frees the records only it referenced",
                store.root().display()
            );
            Ok(0)
        }
        StoreCmd::Gc {
            dry_run,
            grace_secs,
        } => {
            let grace = grace_secs.map_or(DEFAULT_GC_GRACE, Duration::from_secs);
            gc(&store, dry_run, grace)
        }
        StoreCmd::Export { run, out } => {
            let id = store.export_run(&run, &out)?;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            println!(
                "exported run {id} to {} ({})",
                out.display(),
                human_bytes(size)
            );
            Ok(0)
        }
        StoreCmd::Import { file } => {
            let id = store.import(&file)?;
            println!("imported run {id} from {}", file.display());
            Ok(0)
        }
    }
}

fn ls(store: &Store) -> anyhow::Result<i32> {
    let runs = store.runs()?;
    if runs.is_empty() {
        println!("no runs in {}", store.root().display());
        return Ok(0);
    }
    let mut table = new_table(&[
        "id",
        "date",
        "suite",
        "device",
        "model",
        "workloads",
        "commit",
    ]);
    for run in &runs {
        let commit = match &run.git_commit {
            Some(c) => format!(
                "{}{}",
                short(c, 10),
                if run.git_dirty { "+dirty" } else { "" }
            ),
            None => "-".to_string(),
        };
        table.add_row(vec![
            short(&run.id, 12).to_string(),
            date(&run.created_at),
            run.suite.clone().unwrap_or_else(|| "-".to_string()),
            run.device.clone(),
            run.model.clone(),
            run.workloads.join(", "),
            commit,
        ]);
    }
    println!("{table}");
    Ok(0)
}

fn show(store: &Store, spec: &str, json: bool) -> anyhow::Result<i32> {
    let (id, run) = store.resolve_run(spec)?;
    if json {
        let doc = serde_json::json!({ "id": id, "run": run });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    print_fingerprint(&id, &run);
    for workload in &run.workloads {
        println!();
        print_workload(workload);
    }
    Ok(0)
}

fn print_fingerprint(id: &str, run: &RunRecord) {
    let fp = &run.fingerprint;
    let src = &fp.source;
    println!("run      {id}");
    println!(
        "created  {}  suite {}",
        run.created_at,
        run.suite.as_deref().unwrap_or("-")
    );
    let commit = src.git_commit.as_deref().unwrap_or("(no git)");
    let dirty = match (&src.git_dirty, &src.git_diff_hash) {
        (true, Some(h)) => format!(" dirty, diff {}", short(h, 12)),
        (true, None) => " dirty".to_string(),
        (false, _) => String::new(),
    };
    println!("source   {commit}{dirty}");
    println!(
        "build    {} profile, features [{}], {}, {}",
        src.build_profile,
        src.features.join(", "),
        src.rustc_version,
        src.cargo_version
    );
    println!(
        "engine   binary {}  Cargo.lock {}",
        short(&src.engine_binary_hash, 12),
        src.cargo_lock_hash.as_deref().map_or("-", |h| short(h, 12))
    );
    if !fp.engine_env.is_empty() {
        println!(
            "switches {}",
            crate::format::env_assignments(&fp.engine_env)
        );
    }
    let host = &fp.host;
    println!(
        "host     {}, {} cores, {}, {} {}",
        host.cpu_model,
        host.cores,
        human_bytes(host.memory_bytes),
        host.os,
        host.kernel
    );
    for gpu in &fp.gpus {
        let sms = gpu
            .sm_count
            .map_or("? SMs".to_string(), |n| format!("{n} SMs"));
        let power = gpu
            .power_limit_w
            .map_or("-".to_string(), |w| format!("{w:.0} W"));
        println!(
            "gpu      {} (sm_{}, {sms}, {}), driver {}, CUDA {}, power limit {power}, {}",
            gpu.name,
            gpu.compute_capability,
            human_bytes(gpu.memory_bytes),
            gpu.driver_version,
            gpu.cuda_driver_version,
            gpu.uuid
        );
    }
    println!(
        "device   {}  model {} ({})",
        fp.device,
        fp.model,
        short(&fp.model_hash, 12)
    );
}

/// The metrics `show` puts in its trial table, when the trials carry them.
const SHOWN_METRICS: [&str; 7] = [
    "output_throughput",
    "request_throughput",
    "mean_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
];

fn print_workload(workload: &WorkloadRun) {
    println!(
        "workload {}  ({} trials, workload {})",
        workload.name,
        workload.trials.len(),
        short(&workload.workload_hash, 12)
    );
    let shown: Vec<&str> = SHOWN_METRICS
        .into_iter()
        .filter(|m| workload.trials.iter().any(|t| t.metrics.contains_key(*m)))
        .collect();
    let mut header = vec![
        "trial".to_string(),
        "status".to_string(),
        "wall s".to_string(),
    ];
    header.extend(shown.iter().map(|m| match metric_def(m) {
        Some(def) if !m.ends_with(&format!("_{}", def.unit)) => format!("{m} ({})", def.unit),
        _ => m.to_string(),
    }));
    header.push("output hash".to_string());
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = new_table(&header);
    for trial in &workload.trials {
        let status = match &trial.status {
            TrialStatus::Ok => "ok".to_string(),
            TrialStatus::Failed { reason, .. } => format!("failed: {reason}"),
            TrialStatus::TimedOut { after_s } => format!("timed out after {after_s:.0} s"),
        };
        let mut row = vec![
            Cell::new(trial.index).set_alignment(CellAlignment::Right),
            Cell::new(status),
            Cell::new(format!("{:.2}", trial.wall_s)).set_alignment(CellAlignment::Right),
        ];
        for m in &shown {
            let text = trial
                .metrics
                .get(*m)
                .map_or("-".to_string(), |v| format!("{v:.2}"));
            row.push(Cell::new(text).set_alignment(CellAlignment::Right));
        }
        row.push(Cell::new(
            trial.output_hash.as_deref().map_or("-", |h| short(h, 12)),
        ));
        table.add_row(row);
    }
    println!("{table}");

    let throughputs = crate::report::trial_values(workload, names::OUTPUT_THROUGHPUT);
    if let Some(sp) = stats::spread(&throughputs).filter(|s| s.n > 1) {
        println!(
            "output_throughput over {} ok trials: mean {} tok/s, CV {}",
            sp.n,
            format::value(sp.mean),
            format::cv(sp.cv)
        );
    }
}

fn verify(store: &Store) -> anyhow::Result<i32> {
    let report = store.verify()?;
    for c in &report.corrupt {
        println!(
            "CORRUPT  {} ({}) now hashes to {}",
            c.id,
            c.path.display(),
            c.actual
        );
    }
    for m in &report.missing {
        println!("MISSING  {} referenced by {}", m.id, m.referenced_by);
    }
    for b in &report.broken_runs {
        println!("BROKEN   run {}: {}", b.id, b.reason);
    }
    for s in &report.stray {
        println!("STRAY    {} is not an object", s.display());
    }
    let summary = format!(
        "{} objects, {} runs checked in {}",
        report.objects_checked,
        report.runs_checked,
        store.root().display()
    );
    if report.is_clean() {
        println!("ok: {summary}");
        Ok(0)
    } else {
        let problems = report.corrupt.len()
            + report.missing.len()
            + report.broken_runs.len()
            + report.stray.len();
        println!("FAILED: {problems} problems; {summary}");
        Ok(1)
    }
}

fn reindex(store: &Store) -> anyhow::Result<i32> {
    let report = store.reindex()?;
    if let Some(e) = &report.old_index_error {
        println!("the old index was unreadable ({e}); rebuilt from the objects");
    }
    for id in &report.added {
        println!("added    run {id}");
    }
    for (id, why) in &report.dropped {
        println!("dropped  run {id}: {why}");
    }
    for c in &report.corrupt {
        println!(
            "CORRUPT  {} ({}); `cargo xtask store fsck --repair` moves it aside",
            c.id,
            c.path.display()
        );
    }
    println!(
        "indexed {} runs ({} added, {} dropped) from {} objects in {}",
        report.indexed.len(),
        report.added.len(),
        report.dropped.len(),
        report.objects_checked,
        store.root().display()
    );
    Ok(0)
}

fn fsck(store: &Store, repair: bool) -> anyhow::Result<i32> {
    let report = store.fsck(repair)?;
    let fixed = |done: &str, todo: &str| {
        if report.repaired {
            done.to_string()
        } else {
            todo.to_string()
        }
    };
    if let Some(e) = &report.index_error {
        println!(
            "INDEX    {e} ({})",
            fixed("rebuilt from the objects", "--repair rebuilds it")
        );
    }
    for c in &report.corrupt {
        println!(
            "CORRUPT  {} ({}) now hashes to {} ({})",
            c.id,
            c.path.display(),
            c.actual,
            fixed("moved to quarantine/", "--repair moves it to quarantine/")
        );
    }
    for (id, why) in &report.broken_entries {
        println!(
            "BROKEN   indexed run {id}: {why} ({})",
            fixed("dropped from the index", "--repair drops it from the index")
        );
    }
    for id in &report.unindexed_runs {
        println!(
            "UNLISTED run {id} is not in the index ({})",
            fixed("added", "--repair adds it")
        );
    }
    for m in &report.missing {
        println!(
            "MISSING  {} referenced by {}; its trial summaries stand, `cargo xtask store rm RUN` removes the run",
            m.id, m.referenced_by
        );
    }
    for s in &report.stray {
        println!(
            "STRAY    {} is not an object; move it out of objects/",
            s.display()
        );
    }
    let summary = format!(
        "{} objects checked in {}",
        report.objects_checked,
        store.root().display()
    );
    let left = report.manual()
        + if report.repaired {
            0
        } else {
            report.repairable()
        };
    if left == 0 {
        let done = if report.repaired {
            format!("repaired {} problems; ", report.repairable())
        } else {
            String::new()
        };
        println!("ok: {done}{summary}");
        Ok(0)
    } else {
        let hint = if !report.repaired && report.repairable() > 0 {
            "; `--repair` fixes the repairable ones"
        } else {
            ""
        };
        println!("FAILED: {left} problems{hint}; {summary}");
        Ok(1)
    }
}

fn gc(store: &Store, dry_run: bool, grace: Duration) -> anyhow::Result<i32> {
    let report = store.gc_with_grace(dry_run, grace)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    for id in &report.removed {
        println!("{verb} {id}");
    }
    println!(
        "{verb} {} objects ({}) and {} temporary files; kept {} referenced objects",
        report.removed.len(),
        human_bytes(report.removed_bytes),
        report.removed_tmp_files,
        report.kept
    );
    if !report.spared_recent.is_empty() {
        println!(
            "kept {} unreferenced objects younger than {} s (see --grace-secs)",
            report.spared_recent.len(),
            grace.as_secs()
        );
    }
    Ok(0)
}

fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

fn short(s: &str, n: usize) -> &str {
    s.get(..n).unwrap_or(s)
}

fn date(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
