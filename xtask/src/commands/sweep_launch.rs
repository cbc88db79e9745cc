//! The launchers inside `cargo xtask sweep` (command glue): `--status`,
//! `--cancel`, `--launcher slurm` (submit), and setting up the local
//! runner that spreads a sweep's points over every GPU of this machine.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};

use crate::bench::BenchContext;
use crate::cli::{DeviceArg, LauncherKind, SweepArgs};
use crate::launcher::gpus_for;
use crate::launcher::local::visible_gpus;
use crate::launcher::parallel::ParallelRunner;
use crate::launcher::slurm::{
    find_on_path, LedgerState, PointJob, PointView, SlurmLauncher, SlurmTools,
};
use crate::launcher::slurm_script::{PointCommand, SlurmOptions};
use crate::sweep::{ListedPoint, PointRecord, PointStatus, Sweep, SweepFile};

/// Checks made before anything slow: a SLURM sweep must say its device
/// (the submit host cannot tell what the nodes have).
pub fn check_args(args: &SweepArgs, file: &SweepFile) -> anyhow::Result<()> {
    let launch = &args.launch;
    if launch.is_slurm() && args.point.is_some() {
        bail!(
            "--point runs one point here (what a SLURM job runs); with --launcher slurm every \
             pending point is submitted"
        );
    }
    if launch.cancel && !launch.is_slurm() {
        bail!("--cancel cancels SLURM jobs: use it with --launcher slurm");
    }
    if launch.is_slurm() && args.engine.device == DeviceArg::Auto && file.device.is_none() {
        bail!(
            "--launcher slurm: say --device cuda or --device cpu (or `device = ...` in {}): \
             the submit host cannot tell what the compute nodes have",
            file.path.display()
        );
    }
    if !launch.is_slurm() {
        let slurm_only = [
            ("--partition", launch.partition.is_some()),
            ("--account", launch.account.is_some()),
            ("--qos", launch.qos.is_some()),
            ("--time", launch.time.is_some()),
            ("--cpus-per-task", launch.cpus_per_task.is_some()),
            ("--mem", launch.mem.is_some()),
            ("--sbatch", !launch.sbatch.is_empty()),
        ];
        if let Some((flag, _)) = slurm_only.iter().find(|(_, set)| *set) {
            bail!("{flag} is a SLURM setting: use it with --launcher slurm");
        }
    }
    Ok(())
}

/// Handles `--status`, `--cancel` and `--launcher slurm`; `None` when the
/// sweep runs here as usual.
pub fn dispatch(
    args: &SweepArgs,
    root: &Path,
    results: &Path,
    sweep: &Sweep,
) -> anyhow::Result<Option<i32>> {
    let launch = &args.launch;
    // --report-only makes the reports from what the jobs recorded, like
    // any sweep.
    if !launch.looks_up_only() || (args.report_only && !launch.status && !launch.cancel) {
        return Ok(None);
    }
    if launch.status && !launch.is_slurm() {
        let (listed, _) = sweep.listing()?;
        let views: Vec<PointView> = listed
            .iter()
            .map(|p| ledger_view(sweep, p))
            .collect::<anyhow::Result<_>>()?;
        print_status(sweep, &listed, &views);
        return Ok(Some(0));
    }
    let slurm = slurm_launcher(args, root, results, sweep, !launch.status && !launch.cancel)?;
    if launch.cancel {
        for tool in [&slurm.tools.squeue, &slurm.tools.scancel] {
            if find_on_path(tool).is_none() {
                bail!(
                    "no `{}` on PATH: --cancel needs SLURM's client commands",
                    tool.display()
                );
            }
        }
        let ids = slurm.cancel()?;
        if ids.is_empty() {
            println!("no queued or running job of sweep {}", sweep.file.name);
        } else {
            println!(
                "cancelled {} job(s) of sweep {}: {}",
                ids.len(),
                sweep.file.name,
                ids.join(" ")
            );
        }
        return Ok(Some(0));
    }
    let (listed, _) = sweep.listing()?;
    let submitting = !launch.status && !args.dry_run;
    if submitting && find_on_path(&slurm.tools.sbatch).is_none() {
        bail!(
            "no `{}` on PATH: --launcher slurm submits with SLURM's client commands \
             (run it on the cluster's login node, or install them); nothing was submitted \
             (points {})",
            slurm.tools.sbatch.display(),
            listed
                .iter()
                .filter(|p| p.will_run)
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let have_squeue = find_on_path(&slurm.tools.squeue).is_some();
    if !have_squeue && (launch.status || submitting) {
        bail!(
            "no `{}` on PATH: --launcher slurm follows its jobs with SLURM's client commands",
            slurm.tools.squeue.display()
        );
    }
    // What SLURM decided (time limit, memory, node failure) goes into the
    // ledger first, so that resume and --retry see it as a failure. (A dry
    // run on a machine without SLURM only prints the scripts.)
    let mut decided = std::collections::BTreeMap::new();
    if have_squeue {
        let jobs = point_jobs(sweep, &slurm, &listed, args)?;
        let (views, failures) = slurm.status(&jobs)?;
        for f in failures {
            // A dry run writes nothing; it only leaves those points out.
            if !args.dry_run {
                record_failure(sweep, &f.point_id, f.class, &f.message)?;
            }
            decided.insert(f.point_id, f.class);
        }
        if launch.status {
            print_status(sweep, &listed, &views);
            return Ok(Some(0));
        }
    }
    let (listed, outcome) = sweep.listing()?;
    let to_submit: Vec<PointJob> = point_jobs(sweep, &slurm, &listed, args)?
        .into_iter()
        .zip(&listed)
        .filter(|(_, p)| p.will_run && selected(sweep, &p.experiment))
        .filter(|(_, p)| {
            decided
                .get(&p.id)
                .is_none_or(|class| sweep.policy.retry.contains(class))
        })
        .map(|(j, _)| j)
        .collect();
    let waiting: Vec<String> = outcome
        .experiments
        .iter()
        .flat_map(|e| e.pending.iter().map(move |p| format!("{}: {p}", e.name)))
        .collect();
    if args.dry_run {
        for job in &to_submit {
            println!(
                "# ---- point {} ({}): {}/job.sh",
                job.point_id,
                job.label,
                slurm.point_dir(&job.point_id).display()
            );
            println!("{}", slurm.script(job));
        }
        println!(
            "{} point(s) would be submitted (points already queued or running are skipped at submission)",
            to_submit.len()
        );
        for w in &waiting {
            println!("later: {w}");
        }
        return Ok(Some(0));
    }
    if to_submit.is_empty() {
        println!(
            "sweep {}: nothing to submit (every known point is done, excluded by its failure class, or queued)",
            sweep.file.name
        );
    }
    let report = slurm.submit(&to_submit)?;
    for (point, id) in &report.submitted {
        println!("submitted point {point} as job {id}");
    }
    for (point, why) in &report.skipped {
        println!("skipped point {point}: {why}");
    }
    for (point, error) in &report.rejected {
        eprintln!("error: point {point}: {error}");
    }
    for w in &waiting {
        println!("later: {w} (re-run this command once the jobs finish)");
    }
    println!(
        "sweep {}: {} submitted, {} already queued or running, {} rejected; \
         `cargo xtask sweep {} --launcher slurm --status` follows them",
        sweep.file.name,
        report.submitted.len(),
        report.skipped.len(),
        report.rejected.len(),
        args.file.display()
    );
    Ok(Some(if report.rejected.is_empty() { 0 } else { 2 }))
}

fn selected(sweep: &Sweep, experiment: &str) -> bool {
    sweep.only.is_empty() || sweep.only.contains(experiment)
}

/// The SLURM launcher of this sweep. `need_binaries`: submitting needs the
/// engine (built here when not given) and the xtask binary.
fn slurm_launcher(
    args: &SweepArgs,
    root: &Path,
    results: &Path,
    sweep: &Sweep,
    need_binaries: bool,
) -> anyhow::Result<SlurmLauncher> {
    let mut options = SlurmOptions::default();
    if let Some(table) = &sweep.file.slurm {
        options = SlurmOptions::from_table(table, &sweep.file.path).map_err(|e| {
            // The field's line, when the file can say it.
            let text = format!("{e:#}");
            match text
                .split("[slurm].")
                .nth(1)
                .and_then(|f| f.split(':').next())
            {
                Some(field) => anyhow::anyhow!(
                    "{}",
                    sweep.file.invalid_field(
                        &format!("slurm.{field}"),
                        text.rsplit(": ").next().unwrap_or(&text).to_string()
                    )
                ),
                None => e,
            }
        })?;
    }
    let flags = args.launch.slurm_flags();
    flags.validate().map_err(|e| anyhow::anyhow!("--{e}"))?;
    let options = options.overlaid(&flags);
    let results =
        std::path::absolute(results).with_context(|| format!("resolving {}", results.display()))?;
    let (engine, xtask) = if need_binaries {
        let engine = match &args.engine.engine_bin {
            Some(bin) if bin.is_file() => bin.clone(),
            Some(bin) => bail!("--engine-bin {}: no such file", bin.display()),
            None => crate::build::build_engine(root)?.binary,
        };
        let xtask = match &args.launch.xtask_bin {
            Some(bin) if bin.is_file() => bin.clone(),
            Some(bin) => bail!("--xtask-bin {}: no such file", bin.display()),
            None => std::env::current_exe().context("finding this xtask binary")?,
        };
        (absolute(&engine)?, absolute(&xtask)?)
    } else {
        (PathBuf::new(), PathBuf::new())
    };
    let command = PointCommand {
        xtask,
        root: absolute(root)?,
        sweep_file: absolute(&sweep.file.path)?,
        args: forwarded_args(args, &results, &engine, &sweep.device, sweep.trials),
    };
    Ok(SlurmLauncher {
        sweep: sweep.file.name.clone(),
        jobs_dir: sweep.ledger.dir().join("jobs"),
        store_root: results,
        options,
        command,
        tools: SlurmTools::default(),
    })
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// The flags a job or a worker passes to `sweep FILE --point ID` so that
/// it measures the point exactly as this sweep would.
fn forwarded_args(
    args: &SweepArgs,
    results: &Path,
    engine: &Path,
    device: &str,
    trials: u32,
) -> Vec<String> {
    let mut out = vec![
        "--results".to_string(),
        results.display().to_string(),
        "--engine-bin".to_string(),
        engine.display().to_string(),
        "--device".to_string(),
        device.to_string(),
        "--trials".to_string(),
        trials.to_string(),
        "--timeout-s".to_string(),
        args.engine.timeout_s.to_string(),
    ];
    if let Some(profile) = &args.engine.engine_profile {
        out.extend(["--engine-profile".to_string(), profile.clone()]);
    }
    if !args.retry.is_empty() {
        out.extend(["--retry".to_string(), args.retry.join(",")]);
    }
    if !args.skip_failure_reasons.is_empty() {
        out.extend([
            "--skip-failure-reasons".to_string(),
            args.skip_failure_reasons.join(","),
        ]);
    }
    out
}

fn point_jobs(
    sweep: &Sweep,
    slurm: &SlurmLauncher,
    listed: &[ListedPoint],
    _args: &SweepArgs,
) -> anyhow::Result<Vec<PointJob>> {
    listed
        .iter()
        .map(|p| {
            let engine = sweep
                .find_point(&p.id)?
                .map(|pt| pt.engine())
                .unwrap_or_default();
            Ok(PointJob {
                point_id: p.id.clone(),
                label: p.label.clone(),
                gpus: gpus_for(&sweep.device, slurm.options.gpus_per_point, &engine),
                ledger: ledger_state(sweep.ledger.get(&p.id)?.as_ref()),
            })
        })
        .collect()
}

fn ledger_state(record: Option<&PointRecord>) -> LedgerState {
    match record {
        None => LedgerState::None,
        Some(r) => match &r.status {
            PointStatus::Done => LedgerState::Done {
                updated_at: r.updated_at.clone(),
            },
            PointStatus::Failed { class, message } => LedgerState::Failed {
                class: *class,
                message: message.clone(),
                updated_at: r.updated_at.clone(),
            },
        },
    }
}

fn ledger_view(sweep: &Sweep, p: &ListedPoint) -> anyhow::Result<PointView> {
    Ok(match sweep.ledger.get(&p.id)? {
        None => PointView::Pending {
            note: String::new(),
        },
        Some(r) => match r.status {
            PointStatus::Done => PointView::Done,
            PointStatus::Failed { class, message } => PointView::Failed {
                class: Some(class),
                cause: message,
                job_id: None,
            },
        },
    })
}

/// Writes a failure SLURM decided into the ledger, like a point's own.
fn record_failure(
    sweep: &Sweep,
    point_id: &str,
    class: crate::run_record::FailureClass,
    message: &str,
) -> anyhow::Result<()> {
    let Some(point) = sweep.find_point(point_id)? else {
        return Ok(());
    };
    let existing = sweep.ledger.get(point_id)?;
    let mut record = PointRecord::new(&point, &sweep.device, sweep.trials);
    record.attempts = existing.map(|r| r.attempts).unwrap_or(0) + 1;
    record.status = PointStatus::Failed {
        class,
        message: message.to_string(),
    };
    record.updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    sweep.ledger.put(&record)?;
    eprintln!(
        "point {point_id} ({}) recorded as failed ({class}): {message}",
        point.label
    );
    Ok(())
}

fn print_status(sweep: &Sweep, listed: &[ListedPoint], views: &[PointView]) {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "point",
            "experiment",
            "label",
            "state",
            "class",
            "job",
            "detail",
        ]);
    // Wrap long causes (engine logs) at a readable width when stdout is not
    // a terminal (CI logs, pipes); a terminal's own width wins.
    if table.width().is_none() {
        table.set_width(160);
    }
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (p, v) in listed.iter().zip(views) {
        let (class, job, detail) = match v {
            PointView::Pending { note } => (String::new(), String::new(), note.clone()),
            PointView::Queued { job_id, reason } => (String::new(), job_id.clone(), reason.clone()),
            PointView::Running { job_id } => (String::new(), job_id.clone(), String::new()),
            PointView::Done => (String::new(), String::new(), String::new()),
            PointView::Failed {
                class,
                cause,
                job_id,
            } => (
                class.map(|c| c.to_string()).unwrap_or_else(|| "job".into()),
                job_id.clone().unwrap_or_default(),
                cause.clone(),
            ),
        };
        let key = if class.is_empty() {
            v.name().to_string()
        } else {
            format!("failed ({class})")
        };
        *counts.entry(key).or_default() += 1;
        table.add_row(vec![
            p.id.clone(),
            p.experiment.clone(),
            p.label.clone(),
            v.name().to_string(),
            class,
            job,
            detail,
        ]);
    }
    println!("{table}");
    println!(
        "sweep {} ({}): {}",
        sweep.file.name,
        sweep.device,
        counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The parallel runner when this machine has more than one visible GPU and
/// the sweep runs on cuda; `None` otherwise (points then run one at a time
/// in this process).
pub fn local_runner(
    args: &SweepArgs,
    root: &Path,
    results: &Path,
    ctx: &BenchContext,
    sweep: &Sweep,
) -> anyhow::Result<Option<ParallelRunner>> {
    if ctx.device != "cuda" || args.launch.launcher != LauncherKind::Local {
        return Ok(None);
    }
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let slots: Vec<String> = visible_gpus(&ctx.monitor.devices(), visible.as_deref())
        .into_iter()
        .map(|g| g.uuid)
        .collect();
    if slots.len() < 2 {
        return Ok(None);
    }
    let xtask = match &args.launch.xtask_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe().context("finding this xtask binary")?,
    };
    Ok(Some(ParallelRunner {
        slots,
        command: PointCommand {
            xtask,
            root: absolute(root)?,
            sweep_file: absolute(&sweep.file.path)?,
            args: forwarded_args(
                args,
                &absolute(results)?,
                &absolute(&ctx.engine)?,
                &sweep.device,
                sweep.trials,
            ),
        },
        gpus_per_point: args.launch.gpus_per_point,
    }))
}
