//! `cargo xtask baseline promote|ls`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{baselines_dir, file, promote};
use crate::store::Store;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BaselineCmd {
    /// Make a stored run the committed baseline of each of its workloads'
    /// classes (overwrites baselines/<class>/); review and commit the diff.
    Promote {
        /// Run id, unique id prefix, or "latest".
        #[arg(default_value = "latest")]
        run: String,
        /// The content-addressed store (default: `results/` in the workspace).
        #[arg(long, value_name = "DIR")]
        results: Option<PathBuf>,
    },
    /// List the committed baselines.
    Ls,
}

/// Runs a baseline command. Errors are printed here and give exit code 2.
pub fn run_cli(cmd: BaselineCmd, repo_root: &Path) -> anyhow::Result<i32> {
    let result = match cmd {
        BaselineCmd::Promote { run, results } => {
            let results = results.unwrap_or_else(|| repo_root.join("results"));
            promote_cmd(&run, &results, repo_root)
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

fn promote_cmd(spec: &str, results_root: &Path, repo_root: &Path) -> anyhow::Result<()> {
    let store = Store::open(results_root)
        .with_context(|| format!("opening store {}", results_root.display()))?;
    let (id, run) = store.resolve_run(spec)?;
    if run.fingerprint.source.git_dirty {
        eprintln!("warning: run {id} was made from a dirty tree; its commit does not describe it");
    }
    let report = promote(repo_root, &id, &run)?;
    for why in &report.skipped {
        eprintln!("warning: skipped {why}");
    }
    for p in &report.promoted {
        println!(
            "{} {} ({} ok trials) -> {}",
            if p.replaced { "replaced" } else { "created " },
            p.workload,
            p.ok_trials,
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
