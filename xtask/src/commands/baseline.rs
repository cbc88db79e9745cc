//! `cargo xtask baseline promote|ls`.

use std::path::Path;

use anyhow::Context;

use crate::baseline::{baselines_dir, file, promote_keeping};
use crate::cli::BaselineCmd;
use crate::store::Store;
use crate::warnings::{self, Warning};

/// Runs a baseline command. Errors are printed here and give exit code 2.
pub fn run_cli(cmd: BaselineCmd, repo_root: &Path) -> anyhow::Result<i32> {
    let result = match cmd {
        BaselineCmd::Promote { run, results, keep } => {
            let results = results.unwrap_or_else(|| repo_root.join("results"));
            promote_cmd(&run, &results, repo_root, keep)
        }
        BaselineCmd::Ls => ls(repo_root),
    };
    Ok(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    })
}

fn promote_cmd(
    spec: &str,
    results_root: &Path,
    repo_root: &Path,
    keep: usize,
) -> anyhow::Result<()> {
    let store = Store::open(results_root)
        .with_context(|| format!("opening store {}", results_root.display()))?;
    let (id, run) = store.resolve_run(spec)?;
    if run.fingerprint.source.git_dirty {
        warnings::emit(&Warning::DirtyTreePromoted { run: id.clone() });
    }
    let report = promote_keeping(repo_root, &id, &run, keep)?;
    for why in &report.skipped {
        warnings::emit(&Warning::PromotionSkipped { why: why.clone() });
    }
    for p in &report.promoted {
        println!(
            "{} {} ({} ok trials; {} run(s) in its history) -> {}",
            if p.replaced { "updated" } else { "created" },
            p.workload,
            p.ok_trials,
            p.history_runs,
            p.dir.display()
        );
    }
    println!("review with `git diff -- baselines/` and commit");
    Ok(())
}

fn ls(repo_root: &Path) -> anyhow::Result<()> {
    let root = baselines_dir(repo_root);
    let mut dirs: Vec<_> = match std::fs::read_dir(&root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(file::BASELINE_FILE).is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    dirs.sort();
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "class",
        "workload",
        "device",
        "model",
        "trials ok",
        "commit",
        "run made",
    ]);
    for dir in &dirs {
        let class = file::read_class(dir)?;
        let base = file::read_baseline(dir)?;
        let ok = base
            .trials
            .status
            .iter()
            .filter(|s| matches!(s, crate::run_record::TrialStatus::Ok))
            .count();
        table.add_row([
            class.class_hash.clone(),
            class.class.workload.clone(),
            class
                .class
                .gpu_model
                .clone()
                .unwrap_or_else(|| class.class.device.clone()),
            class.model.clone(),
            format!("{ok}/{}", base.trials.index.len()),
            base.commit
                .as_deref()
                .map(|c| c[..c.len().min(12)].to_string())
                .unwrap_or_default(),
            base.run_created_at.clone(),
        ]);
    }
    println!("{table}");
    println!("{} baseline(s) in {}", dirs.len(), root.display());
    Ok(())
}
