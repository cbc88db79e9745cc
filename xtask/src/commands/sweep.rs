//! `cargo xtask sweep`: flags in, a sweep run (or a dry run, one point, or
//! reports only) and an exit code out: 0 every point done, 1 a point failed
//! (recorded), 2 the sweep itself could not run.

use std::path::Path;

use anyhow::{bail, Context};

use crate::bench::{BenchContext, EngineChoice, HttpFlags};
use crate::cli::{DeviceArg, SweepArgs};
use crate::launcher::gpu_breakdown;
use crate::sweep::target::SweepTarget;
use crate::sweep::{report, RetryPolicy, Sweep, SweepFile};

/// Runs `cargo xtask sweep`.
pub fn run_cli(args: &SweepArgs, root: &Path) -> anyhow::Result<i32> {
    let results = args
        .engine
        .results
        .clone()
        .unwrap_or_else(|| root.join("results"));
    let policy = RetryPolicy::from_flags(&args.retry, &args.skip_failure_reasons)?;
    // Parse the file before anything slow.
    let file = SweepFile::load(&args.file)?;
    super::sweep_launch::check_args(args, &file)?;
    if let Some(url) = &args.target {
        if args.launch.is_slurm() {
            bail!(
                "--target with --launcher slurm: the jobs would all drive one server from \
                 several nodes; run the sweep here (--launcher local)"
            );
        }
        crate::sweep::target::check(&file, url, args.launch_cmd.as_deref())?;
    }
    let choice = EngineChoice {
        results: Some(results.clone()),
        ..EngineChoice::from_args(&args.engine, Vec::new())
    };
    // Lookups need the device (the ledger is per device) but not the engine
    // unless the device must be detected.
    // SLURM submissions, --status and --cancel run no engine here.
    let lookup_only = args.dry_run || args.report_only || args.launch.looks_up_only();
    let (ctx, device) = if lookup_only {
        let device = match (args.engine.device, file.device) {
            (DeviceArg::Cpu, _) => "cpu".to_string(),
            (DeviceArg::Cuda, _) => "cuda".to_string(),
            (DeviceArg::Auto, Some(workloads::SuiteDevice::Cuda)) => "cuda".to_string(),
            (DeviceArg::Auto, Some(workloads::SuiteDevice::Cpu)) => "cpu".to_string(),
            (DeviceArg::Auto, None) if args.engine.engine_bin.is_some() => {
                BenchContext::prepare(root, &choice)?.device.to_string()
            }
            (DeviceArg::Auto, None) => "cpu".to_string(),
        };
        (None, device)
    } else {
        let ctx = BenchContext::prepare(root, &choice)?;
        let device = ctx.device.to_string();
        (Some(ctx), device)
    };
    let mut sweep = Sweep::open(&args.file, &results, &device, args.trials, policy)?;
    if let Some(url) = &args.target {
        // An HTTP sweep's points are the server's: a ledger of their own.
        let label = crate::sweep::target::ledger_label(url, args.launch_cmd.as_deref())?;
        sweep.ledger = crate::sweep::Ledger::open(&results, &sweep.file.name, &label);
        let flags = HttpFlags::from_args(&args.http, args.engine.timeout_s, None);
        sweep.http = Some(SweepTarget::new(
            url,
            args.launch_cmd.as_deref(),
            flags,
            root,
        ));
    }
    for name in &args.experiments {
        if sweep.file.experiment(name).is_none() {
            bail!(
                "--experiment {name}: no such experiment in {}; experiments: {}",
                args.file.display(),
                sweep
                    .file
                    .experiments
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        sweep.only.insert(name.clone());
    }

    // --status, --cancel, --launcher slurm (docs/CLUSTER.md).
    if let Some(code) = super::sweep_launch::dispatch(args, root, &results, &sweep)? {
        return Ok(code);
    }
    // Several GPUs: the points run side by side, one per GPU (not against
    // one --target server).
    if let (Some(ctx), None) = (&ctx, &args.target) {
        if let Some(runner) = super::sweep_launch::local_runner(args, root, &results, ctx, &sweep)?
        {
            sweep.parallel = Some(Box::new(runner));
        }
    }
    if args.dry_run {
        let (listed, outcome) = sweep.listing()?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&listed)?);
        } else {
            report::print_dry_run(&sweep, &listed, &outcome, args.engine.timeout_s);
        }
        return Ok(0);
    }
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| sweep.ledger.dir().join("report"));
    if let Some(prefix) = &args.point {
        let ctx = ctx.context("no engine")?;
        let record = sweep.run_point(&ctx, prefix)?;
        return Ok(if record.is_done() { 0 } else { 1 });
    }
    let outcome = match &ctx {
        Some(ctx) if !args.report_only => {
            if let Some(http) = sweep.http.as_mut() {
                http.start_shared()?;
            }
            let outcome = sweep.run(ctx);
            if let Some(http) = sweep.http.as_mut() {
                http.stop_shared();
            }
            outcome?
        }
        _ => sweep.outcome()?,
    };
    let mut written = report::write_all(&outcome, &sweep.store, &out_dir)?;
    report::print_summary(&outcome);
    // Which GPU ran which points (printed when there were several).
    let gpus = gpu_breakdown::rows(&outcome, &sweep.store)?;
    gpu_breakdown::print(&gpus);
    let gpus_csv = out_dir.join("gpus.csv");
    workloads::jsonl::write_bytes_atomic(&gpus_csv, gpu_breakdown::csv(&gpus).as_bytes())
        .with_context(|| format!("writing {}", gpus_csv.display()))?;
    written.push("gpus.csv".into());
    println!("\nreports in {}: {}", out_dir.display(), written.join(", "));
    let failed = outcome.points.iter().any(|p| !p.record.is_done());
    Ok(i32::from(failed))
}
