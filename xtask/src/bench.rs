//! `cargo xtask bench`: the flow. Select workloads, build the engine (or
//! take a prebuilt one), pick the device and model, capture the fingerprint
//! once, run every workload as repeated trials (one fresh engine process
//! each), store raw records as each trial finishes and the run at the end,
//! then report and compare against the baseline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use workloads::suite::SuiteDevice;
use workloads::{BenchSummary, RequestRecord, StepLogEntry, WorkloadSpec};

use crate::cli::{BenchArgs, DeviceArg, EngineArgs, HttpArgs};
use crate::engine_info;
use crate::fingerprint::{self, BuildInfo};
use crate::gpu_monitor::GpuMonitor;
use crate::http::client::Target;
use crate::http::server::{Server, ServerFail};
use crate::metrics;
use crate::model;
use crate::preflight;
use crate::progress::Progress;
use crate::report;
use crate::run_record::{
    names, FailureClass, Fingerprint, GpuFingerprint, HostFingerprint, RunRecord,
    SourceFingerprint, TargetFingerprint, TrialStatus, TrialSummary, WorkloadRun,
    RUN_SCHEMA_VERSION,
};
use crate::store::{Store, StoreError};
use crate::trial::{self, EngineBench, ProcessOutcome, TrialFiles};
use crate::warnings::{self, Warning};
use crate::workload_plan::{self, PlannedWorkload};
use workloads::EngineInfo;

pub const DEFAULT_TRIALS_GPU: u32 = 5;
pub const DEFAULT_TRIALS_CPU: u32 = 3;

pub fn run(args: &BenchArgs, root: &Path) -> anyhow::Result<i32> {
    let catalogue_dir = args
        .catalogue
        .clone()
        .unwrap_or_else(|| root.join("workloads"));
    let catalogue = workload_plan::load(&catalogue_dir)?;
    // The store first: a run that cannot be stored is not worth measuring.
    let results = args
        .engine
        .results
        .clone()
        .unwrap_or_else(|| root.join("results"));
    Store::open(&results)
        .and_then(|s| s.preflight(crate::store::lock_timeout()))
        .with_context(|| {
            format!(
                "the store {} cannot take a run, so nothing was measured",
                results.display()
            )
        })?;
    // Unknown names and bad specs fail now, not after a long build.
    if args.suite.is_some() || !args.workloads.is_empty() {
        let selection =
            workload_plan::select(&catalogue, args.suite.as_deref(), &args.workloads, "")?;
        preflight::check_thresholds(&catalogue, &selection.specs)?;
    }

    // The base of an A/B is built first: a base that does not build fails
    // before anything else runs.
    let ab_plan = crate::ab::AbPlan::from_args(args, root)?;
    let ctx = BenchContext::prepare(
        root,
        // Only `--serve` needs the HTTP server compiled in.
        &EngineChoice::from_args(
            &args.engine,
            if args.serve {
                vec!["serve"]
            } else {
                Vec::new()
            },
        ),
    )?;
    let device = ctx.device;
    let cuda = ctx.is_cuda();

    let default_suite = if cuda { "pr" } else { "smoke" };
    let selection = workload_plan::select(
        &catalogue,
        args.suite.as_deref(),
        &args.workloads,
        default_suite,
    )?;
    preflight::check_thresholds(&catalogue, &selection.specs)?;
    preflight::check_engine_overrides(
        &ctx.engine,
        &catalogue,
        &selection.specs,
        &work_root(root).join(preflight::scratch_name()),
    )?;
    let sized_for_cuda = selection.suite_device.map(|d| d == SuiteDevice::Cuda);
    if sized_for_cuda.is_some_and(|c| c != cuda) {
        warnings::emit(&Warning::SuiteSizedForOtherDevice {
            suite: selection.suite.clone().unwrap_or_else(|| "?".into()),
            sized_for: if cuda { "cpu" } else { "cuda" }.into(),
            running_on: device.to_string(),
        });
    }
    let trials = args
        .trials
        .or(selection.suite_trials)
        .unwrap_or(ctx.default_trials());
    // From here on Ctrl-C stops the run cleanly: the trial in progress is
    // stopped, the finished ones are stored.
    trial::catch_interrupts();
    // A server started once for the whole run (`--target` + `--launch`),
    // stopped whatever happens below.
    let mut http = http_setup(args, root)?;
    let result = run_models(
        args,
        root,
        &ctx,
        http.as_ref(),
        ModelsSetup {
            catalogue: &catalogue,
            selection: &selection,
            trials,
            ab_plan: ab_plan.as_ref(),
        },
    );
    stop_launched(&mut http);
    let (outcomes, code) = result?;

    if let Some(path) = &args.json {
        let runs: Vec<&RunRecord> = outcomes.iter().map(|o| &o.run).collect();
        match runs.as_slice() {
            [one] => report::write_json(path, one)?,
            many => report::write_json(path, &many)?,
        }
    }
    if let Some(dir) = &args.export_vllm {
        for outcome in &outcomes {
            export_vllm(dir, outcome)?;
        }
    }
    Ok(code)
}

/// What `run_models` needs of the selection.
struct ModelsSetup<'a> {
    catalogue: &'a workloads::Catalogue,
    selection: &'a workload_plan::Selection,
    trials: u32,
    ab_plan: Option<&'a crate::ab::AbPlan>,
}

/// One run per model; returns the runs and the exit code so far.
fn run_models(
    args: &BenchArgs,
    root: &Path,
    ctx: &BenchContext,
    http: Option<&HttpSetup>,
    setup: ModelsSetup<'_>,
) -> anyhow::Result<(Vec<BenchOutcome>, i32)> {
    // One run per model: a run has one fingerprint, and the model is in it.
    let (catalogue, selection, trials) = (setup.catalogue, setup.selection, setup.trials);
    let (store, results) = (&ctx.store, &ctx.results);
    let mut outcomes = Vec::new();
    let mut code = 0;
    for (model_name, specs) in selection.by_model(args.model.as_deref()) {
        let PreparedRun {
            mut runner,
            mut header,
            planned,
        } = ctx.prepare_run(
            &model_name,
            &specs,
            &RunOptions {
                trials,
                suite: selection.suite.clone(),
                keep_records: args.export_vllm.is_some(),
            },
        )?;
        // Over HTTP: the trials drive the server, and the run's fingerprint
        // names it.
        runner.http = http.map(|h| &h.driver);
        name_the_target(&mut header, http);
        if let Some(plan) = setup.ab_plan {
            let ab = crate::ab::run_session(plan, &runner, header, &planned, store)?;
            code = code.max(ab.code);
            outcomes.push(BenchOutcome {
                run_id: ab.b_id,
                run: ab.b_run,
                kept_records: Vec::new(),
                work_dir: runner.work_dir.clone(),
            });
            continue;
        }
        let progress = Progress::trials(u64::from(trials) * planned.len() as u64);
        let outcome = runner.run_all(header, &planned, store, &progress);
        progress.done();
        let outcome = outcome?;
        report::print_summary(&outcome.run, &outcome.run_id);
        println!(
            "\nstored run {} in {} (engine logs in {})",
            outcome.run_id,
            results.display(),
            runner.work_dir.display()
        );
        code = code.max(exit_code(&outcome.run));
        let recorded = crate::sweep::record_suite_points(
            catalogue,
            selection.suite.as_deref(),
            &outcome.run_id,
            &outcome.run,
            trials,
            results,
        )?;
        if recorded > 0 {
            println!(
                "recorded {recorded} sweep points in {} (cargo xtask sweep FILE --report-only reports them)",
                results.join("sweeps").display()
            );
        }
        // The verdict against the committed baseline of this run's
        // fingerprint class; None when there is none.
        if let Some(verdict) =
            crate::compare::against_baseline(&outcome.run_id, &outcome.run, root)?
        {
            code = code.max(verdict);
        }
        outcomes.push(outcome);
    }
    Ok((outcomes, code))
}

/// Which engine binary runs where: the flags `bench` and `sweep` share.
#[derive(Debug, Clone)]
pub struct EngineChoice {
    /// A prebuilt engine; `None` builds one with cargo.
    pub engine_bin: Option<PathBuf>,
    pub engine_profile: Option<String>,
    pub device: DeviceArg,
    /// The store (default `<root>/results`).
    pub results: Option<PathBuf>,
    pub timeout_s: f64,
    /// Engine cargo features to build with (`serve` for `--serve`).
    pub features: Vec<&'static str>,
}

impl EngineChoice {
    /// The engine the shared flags name, built with `features` when there
    /// is no `--engine-bin`.
    pub fn from_args(args: &EngineArgs, features: Vec<&'static str>) -> Self {
        EngineChoice {
            engine_bin: args.engine_bin.clone(),
            engine_profile: args.engine_profile.clone(),
            device: args.device,
            results: args.results.clone(),
            timeout_s: args.timeout_s,
            features,
        }
    }
}

/// What one stored run is made of besides its workloads.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub trials: u32,
    /// Recorded in the run (`suite` field); a sweep writes `sweep:<name>`.
    pub suite: Option<String>,
    /// Keep each Ok trial's records in memory (for the vLLM export).
    pub keep_records: bool,
}

/// Everything runs share that does not depend on the workloads: the engine
/// binary and its device, the GPU monitor, the fingerprint's source and
/// host parts, and the store. `bench` makes one and runs a suite with it;
/// `sweep` makes one and runs each point as its own run.
pub struct BenchContext {
    pub root: PathBuf,
    pub engine: PathBuf,
    pub info: EngineInfo,
    /// "cpu" or "cuda".
    pub device: &'static str,
    pub monitor: GpuMonitor,
    /// NVML index of the GPU the engine runs on.
    pub gpu_index: usize,
    pub gpus: Vec<GpuFingerprint>,
    pub source: SourceFingerprint,
    pub host: HostFingerprint,
    /// The engine's environment switches this process passes on to every
    /// engine it starts (`fingerprint::inherited_engine_env`).
    pub engine_env: BTreeMap<String, String>,
    pub results: PathBuf,
    pub store: Store,
    pub timeout: Duration,
    /// Resolved models and their hashes, by name (hashing a checkpoint
    /// takes a while; a sweep runs many points on one model).
    models: std::cell::RefCell<BTreeMap<String, ResolvedModel>>,
}

#[derive(Debug, Clone)]
struct ResolvedModel {
    model: model::Model,
    vocab: model::Vocab,
    hash: String,
}

/// A run ready to start: its trial runner, its header (no workloads yet)
/// and its planned workloads.
pub struct PreparedRun<'a> {
    pub runner: TrialRunner<'a>,
    pub header: RunRecord,
    pub planned: Vec<PlannedWorkload>,
}

impl BenchContext {
    /// Builds the engine (or takes the prebuilt one), asks it what it runs
    /// on, picks the device and captures the fingerprint's fixed parts.
    pub fn prepare(root: &Path, choice: &EngineChoice) -> anyhow::Result<BenchContext> {
        let (engine, build) = match &choice.engine_bin {
            Some(bin) => {
                if !bin.is_file() {
                    bail!("--engine-bin {}: no such file", bin.display());
                }
                let build = BuildInfo::prebuilt_as(bin, choice.engine_profile.as_deref());
                (bin.clone(), build)
            }
            None => {
                let built = crate::build::build_engine_with(root, &choice.features)?;
                (built.binary, built.info)
            }
        };
        let info = engine_info::query(&engine)?;
        let device = choose_device(choice.device, &info)?;
        let cuda = device == "cuda";
        let monitor = if cuda {
            GpuMonitor::open()
        } else {
            GpuMonitor::none()
        };
        // The fingerprint and the clock samples are of the GPU the engine
        // runs on, not of every GPU in the host.
        let all_gpus = monitor.devices();
        let uuids: Vec<&str> = all_gpus.iter().map(|g| g.uuid.as_str()).collect();
        let gpu_index = engine_info::nvml_index_in_use(&info, &uuids);
        let mut gpus: Vec<_> = all_gpus.get(gpu_index).cloned().into_iter().collect();
        for g in &mut gpus {
            g.sm_count = info.sm_count(&g.uuid);
        }
        if cuda && gpus.is_empty() {
            warnings::emit(&Warning::NvmlUnavailable {
                reason: monitor
                    .unavailable_reason()
                    .unwrap_or("unknown")
                    .to_string(),
            });
            gpus = info.gpus.iter().map(engine_info::gpu_fingerprint).collect();
        }
        let source = fingerprint::source(root, &engine, &build);
        let host = fingerprint::host();
        let engine_env = fingerprint::inherited_engine_env();
        if !engine_env.is_empty() {
            warnings::emit(&Warning::EngineSwitchesInEnvironment {
                switches: engine_env.clone(),
            });
        }
        let results = choice
            .results
            .clone()
            .unwrap_or_else(|| root.join("results"));
        // Checked again here for `sweep`, which has no earlier check: a run
        // that cannot be stored is not measured.
        let store = Store::open(&results)
            .and_then(|s| s.preflight(crate::store::lock_timeout()).map(|()| s))
            .with_context(|| {
                format!(
                    "the store {} cannot take a run, so nothing was measured",
                    results.display()
                )
            })?;
        Ok(BenchContext {
            root: root.to_path_buf(),
            engine,
            info,
            device,
            monitor,
            gpu_index,
            gpus,
            source,
            host,
            engine_env,
            results,
            store,
            timeout: Duration::from_secs_f64(choice.timeout_s.max(0.001)),
            models: Default::default(),
        })
    }

    pub fn is_cuda(&self) -> bool {
        self.device == "cuda"
    }

    /// Trials when neither the command line nor the suite says.
    pub fn default_trials(&self) -> u32 {
        if self.is_cuda() {
            DEFAULT_TRIALS_GPU
        } else {
            DEFAULT_TRIALS_CPU
        }
    }

    fn resolve_model(&self, name: &str) -> anyhow::Result<ResolvedModel> {
        if let Some(m) = self.models.borrow().get(name) {
            return Ok(m.clone());
        }
        let model = model::resolve(name, &self.engine, &self.root.join(".models"))?;
        let vocab = model::vocab(&model, &self.engine)?;
        let hash = model::content_hash(&model)?;
        let resolved = ResolvedModel { model, vocab, hash };
        self.models
            .borrow_mut()
            .insert(name.to_string(), resolved.clone());
        Ok(resolved)
    }

    /// Resolves the model, plans `specs` for it and makes the trial runner
    /// and the run's header.
    pub fn prepare_run(
        &self,
        model_name: &str,
        specs: &[&WorkloadSpec],
        options: &RunOptions,
    ) -> anyhow::Result<PreparedRun<'_>> {
        let resolved = self.resolve_model(model_name)?;
        let planned = specs
            .iter()
            .map(|s| workload_plan::plan(s, &resolved.vocab))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let fingerprint = Fingerprint {
            source: self.source.clone(),
            host: self.host.clone(),
            gpus: self.gpus.clone(),
            device: self.device.to_string(),
            model: resolved.model.name.clone(),
            model_hash: resolved.hash.clone(),
            target: None,
            engine_env: self.engine_env.clone(),
        };
        let created_at = chrono::Utc::now();
        let runner = TrialRunner {
            engine: self.engine.clone(),
            model_dir: resolved.model.path.clone(),
            device: self.device.to_string(),
            trials: options.trials,
            timeout: self.timeout,
            work_dir: work_root(&self.root).join(format!(
                "{}-{}-{}",
                created_at.format("%Y%m%dT%H%M%S%.3fZ"),
                std::process::id(),
                file_name_safe(model_name)
            )),
            monitor: &self.monitor,
            gpu_index: self.gpu_index as u32,
            keep_records: options.keep_records,
            env: BTreeMap::new(),
            engine_overrides: toml::Table::new(),
            http: None,
        };
        let header = RunRecord {
            schema: RUN_SCHEMA_VERSION,
            created_at: created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            suite: options.suite.clone(),
            fingerprint,
            workloads: Vec::new(),
            interleaved: None,
        };
        Ok(PreparedRun {
            runner,
            header,
            planned,
        })
    }

    /// Runs `specs` (each with its own `[engine]` knobs) on one model as
    /// repeated trials and stores them as one run. A failing trial is part
    /// of the run; an `Err` is a failure of the pipeline itself (the run is
    /// stored with what finished before it, see [`TrialRunner::run_all`]).
    /// With `http`, the trials drive that server over HTTP and the run's
    /// fingerprint names it.
    pub fn run_specs(
        &self,
        model_name: &str,
        specs: &[&WorkloadSpec],
        options: &RunOptions,
        progress: &Progress,
        http: Option<&HttpSetup>,
    ) -> anyhow::Result<BenchOutcome> {
        let mut run = self.prepare_run(model_name, specs, options)?;
        run.runner.http = http.map(|h| &h.driver);
        name_the_target(&mut run.header, http);
        run.runner
            .run_all(run.header, &run.planned, &self.store, progress)
    }
}

/// Over HTTP the run's fingerprint names the server. One the pipeline did
/// not start itself (`--target`, with or without `--launch`) is described
/// by its own answers and launch command, not by the engine switches of
/// this environment, which reach it only when it happens to be this
/// engine started by `--launch`.
fn name_the_target(header: &mut RunRecord, http: Option<&HttpSetup>) {
    header.fingerprint.target = http.map(|h| h.fingerprint.clone());
    if http.is_some_and(|h| h.driver.fixed.is_some()) {
        header.fingerprint.engine_env.clear();
    }
}

/// 0 when every trial succeeded, 1 when any failed or timed out or had
/// requests rejected that its spec does not expect (after everything was
/// stored and reported).
pub(crate) fn exit_code(run: &RunRecord) -> i32 {
    let all_ok = run
        .workloads
        .iter()
        .flat_map(|w| &w.trials)
        .all(|t| t.status == TrialStatus::Ok);
    let rejections = run
        .workloads
        .iter()
        .any(|w| !report::unexpected_rejections(w).is_empty());
    if all_ok && !rejections {
        0
    } else {
        1
    }
}

fn choose_device(arg: DeviceArg, info: &EngineInfo) -> anyhow::Result<&'static str> {
    Ok(match arg {
        DeviceArg::Cpu => "cpu",
        DeviceArg::Auto if info.has_gpu() => "cuda",
        DeviceArg::Auto => "cpu",
        DeviceArg::Cuda if info.has_gpu() => "cuda",
        DeviceArg::Cuda => bail!(
            "--device cuda, but `engine info` reports no GPU{}",
            info.gpu_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    })
}

/// `name` with every character that is not alphanumeric, `-` or `.`
/// replaced by `_` (model names may be paths).
pub(crate) fn file_name_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Trial files live beside the build outputs (git-ignored), not in the
/// store: the store keeps the records, these keep the engine's logs.
pub(crate) fn work_root(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("xtask-bench")
}

fn export_vllm(dir: &Path, outcome: &BenchOutcome) -> anyhow::Result<()> {
    for (w, kept) in outcome.run.workloads.iter().zip(&outcome.kept_records) {
        let Some(trial) = report::median_trial(w) else {
            warnings::emit(&Warning::NothingToExport {
                workload: w.name.clone(),
            });
            continue;
        };
        let Some((_, records)) = kept.iter().find(|(i, _)| *i == trial) else {
            continue;
        };
        let value = report::vllm_result(&outcome.run, w, trial, records)?;
        report::write_json(&dir.join(format!("{}.json", w.name)), &value)?;
    }
    Ok(())
}

/// What a finished run left behind.
pub struct BenchOutcome {
    pub run_id: String,
    pub run: RunRecord,
    /// Per workload, the records of each Ok trial (trial index, records),
    /// for the vLLM export; empty unless `keep_records`.
    pub kept_records: Vec<Vec<(u32, Vec<RequestRecord>)>>,
    /// Where the trials' engine logs are.
    pub work_dir: PathBuf,
}

/// Runs trials: everything they share.
#[derive(Clone)]
pub struct TrialRunner<'a> {
    pub engine: PathBuf,
    pub model_dir: PathBuf,
    /// "cpu" or "cuda".
    pub device: String,
    pub trials: u32,
    pub timeout: Duration,
    /// Each workload gets `<work_dir>/<workload>/`, each trial a folder in it.
    pub work_dir: PathBuf,
    pub monitor: &'a GpuMonitor,
    /// NVML index of the GPU sampled before and after each trial.
    pub gpu_index: u32,
    /// Keep each Ok trial's records in memory (for the vLLM export).
    pub keep_records: bool,
    /// Environment variables for every engine process (an A/B side's).
    pub env: BTreeMap<String, String>,
    /// Engine config keys set on top of each workload's `[engine]` table
    /// (an A/B side's `--a-set`/`--b-set`).
    pub engine_overrides: toml::Table,
    /// Drive a server over HTTP instead of running `engine bench`.
    pub http: Option<&'a HttpDriver>,
}

/// Trials of a workload that must fail the same way before serving a
/// request for the rest to be skipped.
const STARTUP_FAILURES_TO_STOP: u32 = 2;

impl TrialRunner<'_> {
    /// Runs every workload's trials into `run` and stores it. Raw records
    /// are stored as each trial finishes; if the pipeline itself fails
    /// midway (not a trial: those are recorded), the run is stored with the
    /// trials finished so far before the error is returned.
    pub fn run_all(
        &self,
        mut run: RunRecord,
        planned: &[PlannedWorkload],
        store: &Store,
        progress: &Progress,
    ) -> anyhow::Result<BenchOutcome> {
        let mut kept_records = Vec::new();
        for w in planned {
            let mut kept = Vec::new();
            let result = self.run_workload(w, store, progress, &mut run, &mut kept);
            kept_records.push(kept);
            if let Err(err) = result {
                return Err(store_partial(store, &run, err));
            }
        }
        let run_id = self.store_run(&run, store)?;
        Ok(BenchOutcome {
            run_id,
            run,
            kept_records,
            work_dir: self.work_dir.clone(),
        })
    }

    /// Stores the finished run. If that fails, the measurement is not lost:
    /// the summary is printed, and the error says where the run is kept and
    /// the one command that lists it in the store.
    fn store_run(&self, run: &RunRecord, store: &Store) -> anyhow::Result<String> {
        let err = match store.add_run(run) {
            Ok(id) => return Ok(id),
            Err(e) => e,
        };
        if let StoreError::NotIndexed { id, .. } = &err {
            report::print_summary(run, id);
            return Err(anyhow::Error::new(err).context("the run was measured and stored"));
        }
        let saved = self.work_dir.join("run-export.json");
        match store.export_unstored(run, &saved) {
            Ok(id) => {
                report::print_summary(run, &id);
                Err(anyhow::anyhow!(
                    "storing the run failed: {err}; the measured run is kept in {}: once the \
                     store is fixed, `cargo xtask store import {} --results {}` adds it",
                    saved.display(),
                    saved.display(),
                    store.root().display()
                ))
            }
            Err(export_err) => {
                let plain = self.work_dir.join("run.json");
                let kept = report::write_json(&plain, run)
                    .map(|()| format!("the run record is kept in {}", plain.display()))
                    .unwrap_or_else(|e| format!("and it could not be saved either: {e:#}"));
                Err(anyhow::anyhow!(
                    "storing the run failed: {err}; exporting it failed too ({export_err}); {kept}"
                ))
            }
        }
    }

    fn run_workload(
        &self,
        w: &PlannedWorkload,
        store: &Store,
        progress: &Progress,
        run: &mut RunRecord,
        kept: &mut Vec<(u32, Vec<RequestRecord>)>,
    ) -> anyhow::Result<()> {
        let bench = self.prepare(w, run)?;
        // Failure classes of the trials that failed before writing a record.
        let mut startup_failures: Vec<Option<FailureClass>> = Vec::new();
        for index in 0..self.trials {
            // Two trials that failed the same way before serving anything
            // (a kernel that does not compile, a config the engine rejects)
            // say the rest would too: stop instead of repeating the error.
            if index == STARTUP_FAILURES_TO_STOP
                && startup_failures.len() == STARTUP_FAILURES_TO_STOP as usize
                && startup_failures.windows(2).all(|p| p[0] == p[1])
            {
                warnings::emit(&Warning::TrialsSkipped {
                    workload: w.name.clone(),
                    failed: index,
                    skipped: self.trials - index,
                    class: startup_failures[0].map_or("failed".to_string(), |c| c.to_string()),
                });
                break;
            }
            if trial::interrupted() {
                bail!(
                    "interrupted (Ctrl-C) before trial {} of workload `{}`",
                    index + 1,
                    w.name
                );
            }
            progress.start_trial(&w.name, index, self.trials);
            let (summary, records) = self.trial(w, &bench, index, store)?;
            progress.finish_trial(trial_line(&w.name, &summary, self.trials));
            if let TrialStatus::Failed { class, .. } = &summary.status {
                if summary.records_object.is_none() {
                    startup_failures.push(*class);
                }
            }
            if let Some(records) = records.filter(|_| self.keep_records) {
                kept.push((index, records));
            }
            if let Some(last) = run.workloads.last_mut() {
                last.trials.push(summary);
            }
        }
        Ok(())
    }

    /// Writes the workload's requests and engine config under the work
    /// folder, adds the workload (no trials yet) to `run`, and returns the
    /// engine invocation its trials share.
    pub(crate) fn prepare(
        &self,
        w: &PlannedWorkload,
        run: &mut RunRecord,
    ) -> anyhow::Result<EngineBench> {
        let dir = self.work_dir.join(&w.name);
        let requests = dir.join("requests.jsonl");
        workloads::jsonl::write_atomic(&requests, &w.requests)?;
        let mut engine_config = w.engine_overrides.clone();
        for (key, value) in &self.engine_overrides {
            engine_config.insert(key.clone(), value.clone());
        }
        let config = if engine_config.is_empty() {
            None
        } else {
            let path = dir.join("engine.toml");
            workloads::jsonl::write_bytes_atomic(
                &path,
                toml::to_string(&engine_config)?.as_bytes(),
            )
            .with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        };
        engine_config.insert("device".into(), toml::Value::String(self.device.clone()));
        let external = self.http.is_some_and(|h| h.fixed.is_some());
        if external && !w.engine_overrides.is_empty() {
            warnings::emit(&Warning::EngineSettingsNotApplied {
                workload: w.name.clone(),
            });
        }
        run.workloads.push(WorkloadRun {
            name: w.name.clone(),
            workload_hash: w.requests_hash.clone(),
            spec: w.spec_json.clone(),
            // An external server's settings are its own (in its launch
            // command, in the fingerprint), not the workload's.
            engine_config: if external {
                serde_json::json!({})
            } else {
                serde_json::to_value(&engine_config)?
            },
            trials: Vec::new(),
        });
        Ok(EngineBench {
            engine: self.engine.clone(),
            model: self.model_dir.clone(),
            requests,
            config,
            device: self.device.clone(),
            max_concurrency: w.max_concurrency,
            env: self.env.clone(),
        })
    }

    /// Trial `index` of a prepared workload, in its own folder.
    pub(crate) fn trial(
        &self,
        w: &PlannedWorkload,
        bench: &EngineBench,
        index: u32,
        store: &Store,
    ) -> anyhow::Result<(TrialSummary, Option<Vec<RequestRecord>>)> {
        let files = TrialFiles::in_dir(&self.work_dir.join(&w.name).join(format!("trial-{index}")));
        match self.http {
            Some(http) => self.run_http_trial(http, w, bench, &files, index, store),
            None => self.run_trial(w, bench, &files, index, store),
        }
    }

    /// One trial over HTTP: against the fixed target, or against a fresh
    /// `engine serve` (`--serve`). A server that does not come up is the
    /// trial's `server-fail`; an `Err` is the pipeline's own failure.
    fn run_http_trial(
        &self,
        http: &HttpDriver,
        w: &PlannedWorkload,
        bench: &EngineBench,
        files: &TrialFiles,
        index: u32,
        store: &Store,
    ) -> anyhow::Result<(TrialSummary, Option<Vec<RequestRecord>>)> {
        let _ = std::fs::remove_dir_all(&files.dir);
        std::fs::create_dir_all(&files.dir)
            .with_context(|| format!("creating {}", files.dir.display()))?;
        // Text prompts first: a prompt that cannot be built stops the run
        // before a server starts.
        let text_prompts = match &http.tokenizer {
            Some(path) => Some(std::sync::Arc::new(
                crate::http::text_prompt::build_prompts(path, &w.requests)
                    .with_context(|| format!("text prompts of workload `{}`", w.name))?,
            )),
            None => None,
        };
        let gpu_before = self.monitor.sample(self.gpu_index);
        let started = std::time::Instant::now();
        let mut summary = TrialSummary {
            index,
            status: TrialStatus::Ok,
            metrics: Default::default(),
            output_hash: None,
            records_object: None,
            step_log_object: None,
            gpu_before,
            gpu_after: None,
            wall_s: 0.0,
            block: None,
        };
        let (target, server) = match &http.fixed {
            Some(t) => (t.clone(), None),
            None => match http.start_engine_serve(bench, files, self.timeout) {
                Ok(pair) => pair,
                Err(fail) => {
                    summary.status = TrialStatus::Failed {
                        reason: fail.to_string(),
                        class: Some(FailureClass::ServerFail),
                    };
                    summary.wall_s = started.elapsed().as_secs_f64();
                    return Ok((summary, None));
                }
            },
        };
        let mut target = target;
        target.text_prompts = text_prompts;
        let trial = crate::http::driver::run(&target, &w.requests, w.max_concurrency);
        if let Some(server) = server {
            if !server.stop(Duration::from_secs(30)) {
                warnings::emit(&Warning::ServerKilled {
                    log: files.log.display().to_string(),
                });
            }
        }
        summary.gpu_after = self.monitor.sample(self.gpu_index);
        summary.wall_s = started.elapsed().as_secs_f64();
        workloads::jsonl::write_atomic(&files.records, &trial.records)?;
        let steps: Vec<StepLogEntry> = Vec::new();
        summary.records_object = Some(store.put(&trial.records).context("storing records")?);
        summary.step_log_object = Some(store.put(&steps).context("storing the step log")?);
        match metrics::compute(&trial.records, &steps, None, &w.slos) {
            Ok(m) => {
                summary.metrics = m.values;
                for (name, value) in crate::http::generator_metrics(&trial) {
                    summary.metrics.insert(name.to_string(), value);
                }
                let p50_e2el = summary.metrics.get(names::P50_E2EL_MS).copied();
                for warning in crate::http::generator_warnings(&w.name, &trial, p50_e2el) {
                    warnings::emit(&warning);
                }
                if index == 0 {
                    eprintln!(
                        "{}: {}",
                        w.name,
                        crate::http::itl_basis_summary(&trial.records)
                    );
                }
                summary.output_hash = Some(m.output_hash);
                Ok((summary, Some(trial.records)))
            }
            Err(e) => {
                let first_error = trial.records.iter().find_map(|r| match &r.status {
                    workloads::RecordStatus::Rejected { reason } => Some(reason.clone()),
                    _ => None,
                });
                summary.status = TrialStatus::Failed {
                    reason: match first_error {
                        Some(reason) => format!("{e}; first error: {reason}"),
                        None => e.to_string(),
                    },
                    class: Some(FailureClass::ServerFail),
                };
                Ok((summary, None))
            }
        }
    }

    /// One trial. A failing engine is a recorded outcome; an `Err` here
    /// means the pipeline itself failed (e.g. the store cannot be written).
    pub(crate) fn run_trial(
        &self,
        w: &PlannedWorkload,
        bench: &EngineBench,
        files: &TrialFiles,
        index: u32,
        store: &Store,
    ) -> anyhow::Result<(TrialSummary, Option<Vec<RequestRecord>>)> {
        // Leftovers of an earlier run in the same folder must not pass for
        // this trial's output.
        let _ = std::fs::remove_dir_all(&files.dir);
        let gpu_before = self.monitor.sample(self.gpu_index);
        let outcome = trial::run_engine(bench, files, self.timeout);
        let gpu_after = self.monitor.sample(self.gpu_index);
        let mut summary = TrialSummary {
            index,
            status: TrialStatus::Ok,
            metrics: Default::default(),
            output_hash: None,
            records_object: None,
            step_log_object: None,
            gpu_before,
            gpu_after,
            wall_s: 0.0,
            block: None,
        };
        match outcome {
            ProcessOutcome::Interrupted => bail!(
                "interrupted (Ctrl-C): trial {} of workload `{}` was stopped and not recorded",
                index + 1,
                w.name
            ),
            ProcessOutcome::TimedOut { after_s } => {
                summary.status = TrialStatus::TimedOut { after_s };
                summary.wall_s = after_s;
                Ok((summary, None))
            }
            ProcessOutcome::Failed {
                reason,
                class,
                wall_s,
            } => {
                summary.status = TrialStatus::failed(reason, class);
                summary.wall_s = wall_s;
                Ok((summary, None))
            }
            ProcessOutcome::Exited { wall_s } => {
                summary.wall_s = wall_s;
                let (records, steps) = match read_outputs(files) {
                    Ok(outputs) => outputs,
                    Err(reason) => {
                        summary.status = TrialStatus::failed(reason, FailureClass::Crash);
                        return Ok((summary, None));
                    }
                };
                summary.records_object = Some(store.put(&records).context("storing records")?);
                summary.step_log_object = Some(store.put(&steps).context("storing the step log")?);
                match metrics::compute(&records, &steps, peak_memory(files), &w.slos) {
                    Ok(m) if m.failed > 0 => {
                        summary.status = TrialStatus::failed(
                            format!(
                                "{} of {} requests stopped with status nonfinite_logits (the \
                                 model produced NaN or infinite logits); {}",
                                m.failed,
                                records.len(),
                                files.records.display()
                            ),
                            FailureClass::Crash,
                        );
                        Ok((summary, None))
                    }
                    Ok(m) => {
                        summary.metrics = m.values;
                        summary.output_hash = Some(m.output_hash);
                        Ok((summary, Some(records)))
                    }
                    Err(e) => {
                        summary.status = TrialStatus::failed(
                            format!("{}: {e}", files.records.display()),
                            FailureClass::Crash,
                        );
                        Ok((summary, None))
                    }
                }
            }
        }
    }
}

/// How trials reach the server under test.
pub struct HttpDriver {
    /// `--target`: one server for the whole run. `None` for `--serve`.
    pub fixed: Option<crate::http::client::Target>,
    pub api_key_env: String,
    pub served_model: Option<String>,
    pub stream: bool,
    pub launch_timeout: Duration,
    /// Text prompts built with this tokenizer; token ids when `None`.
    pub tokenizer: Option<PathBuf>,
}

/// What `engine serve` prints before its address.
const SERVE_MARKER: &str = "engine serve: listening on ";

impl HttpDriver {
    /// Starts `engine serve` on a free port with the trial's engine
    /// settings (and environment), and waits until it is healthy.
    fn start_engine_serve(
        &self,
        bench: &EngineBench,
        files: &TrialFiles,
        request_timeout: Duration,
    ) -> Result<(Target, Option<Server>), ServerFail> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--model".into(),
            bench.model.display().to_string(),
            "--device".into(),
            bench.device.clone(),
            "--port".into(),
            "0".into(),
        ];
        if let Some(config) = &bench.config {
            args.push("--config".into());
            args.push(config.display().to_string());
        }
        let mut server = Server::start(&bench.engine, &args, &bench.env, &files.log)?;
        let fail = |e: anyhow::Error| ServerFail(format!("{e:#}"));
        let ready = (|| {
            let url = server.wait_for_address(SERVE_MARKER, self.launch_timeout)?;
            let mut target =
                Target::new(&url, &self.api_key_env, self.stream, request_timeout).map_err(fail)?;
            server.wait_healthy(&target, self.launch_timeout)?;
            target
                .describe(self.served_model.as_deref())
                .map_err(fail)?;
            Ok(target)
        })();
        match ready {
            Ok(target) => Ok((target, Some(server))),
            Err(e) => {
                server.stop(Duration::from_secs(5));
                Err(e)
            }
        }
    }
}

/// The HTTP side of a run, if any: its driver, the target's fingerprint,
/// and the server `--launch` started.
pub struct HttpSetup {
    pub driver: HttpDriver,
    pub fingerprint: TargetFingerprint,
    launched: Option<Server>,
}

impl HttpSetup {
    /// Stops the server `--launch` started, if any (SIGTERM, then SIGKILL
    /// after 30 s, with a warning).
    pub fn stop(&mut self) {
        if let Some(server) = self.launched.take() {
            let log = server.log.display().to_string();
            if !server.stop(Duration::from_secs(30)) {
                warnings::emit(&Warning::ServerKilled { log });
            }
        }
    }
}

/// The HTTP flags `bench` and `sweep` share, for [`connect`].
#[derive(Debug, Clone)]
pub struct HttpFlags {
    pub api_key_env: String,
    pub served_model: Option<String>,
    pub stream: bool,
    /// How long a started server may take to answer `/health`.
    pub launch_timeout: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// Text prompts built with this tokenizer (`--prompt-format text`);
    /// token ids when `None`.
    pub tokenizer: Option<PathBuf>,
}

impl HttpFlags {
    /// The shared HTTP flags; a request may take as long as a trial
    /// (`--timeout-s`).
    pub fn from_args(args: &HttpArgs, timeout_s: f64, tokenizer: Option<PathBuf>) -> Self {
        HttpFlags {
            api_key_env: args.api_key_env.clone(),
            served_model: args.served_model.clone(),
            stream: !args.no_stream,
            launch_timeout: Duration::from_secs_f64(args.launch_timeout_s.max(0.001)),
            request_timeout: Duration::from_secs_f64(timeout_s.max(0.001)),
            tokenizer,
        }
    }

    fn driver(&self) -> HttpDriver {
        HttpDriver {
            fixed: None,
            api_key_env: self.api_key_env.clone(),
            served_model: self.served_model.clone(),
            stream: self.stream,
            launch_timeout: self.launch_timeout,
            tokenizer: self.tokenizer.clone(),
        }
    }
}

fn http_setup(args: &BenchArgs, root: &Path) -> anyhow::Result<Option<HttpSetup>> {
    let tokenizer = text_prompt_tokenizer(args)?;
    if !args.over_http() {
        return Ok(None);
    }
    let flags = HttpFlags::from_args(&args.http, args.engine.timeout_s, tokenizer);
    let Some(url) = &args.target else {
        // --serve: a fresh engine serve per trial.
        let fingerprint = TargetFingerprint {
            url: "engine serve on 127.0.0.1 (a fresh server per trial)".into(),
            model: args.http.served_model.clone().unwrap_or_default(),
            models: serde_json::Value::Null,
            server_header: None,
            server_kind: "dyno".into(),
            stream: flags.stream,
            launch: Some("engine serve --port 0 (per trial)".into()),
            text_prompts: None,
        };
        let mut setup = HttpSetup {
            driver: flags.driver(),
            fingerprint,
            launched: None,
        };
        setup.fingerprint.text_prompts = flags.tokenizer.as_deref().map(tokenizer_label);
        return Ok(Some(setup));
    };
    connect(url, args.launch.as_deref(), &flags, root).map(Some)
}

/// How the fingerprint names text prompts' tokenizer: its file name and
/// the start of its blake3.
fn tokenizer_label(path: &Path) -> String {
    let file = crate::http::text_prompt::tokenizer_file(path).unwrap_or_else(|_| path.into());
    let hash = std::fs::read(&file)
        .map(|b| blake3::hash(&b).to_hex()[..16].to_string())
        .unwrap_or_else(|_| "unreadable".into());
    format!(
        "{} (blake3 {hash})",
        file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into()
        )
    )
}

/// `--prompt-format text`'s tokenizer, checked (and loaded once, so a bad
/// file fails before anything runs).
fn text_prompt_tokenizer(args: &BenchArgs) -> anyhow::Result<Option<PathBuf>> {
    use crate::cli::PromptFormat;
    use crate::http::text_prompt::{build_prompts, TextPromptError};
    match (args.prompt_format, &args.tokenizer) {
        (PromptFormat::Ids, None) => Ok(None),
        (PromptFormat::Ids, Some(_)) => {
            bail!("--tokenizer is for text prompts: add --prompt-format text")
        }
        (PromptFormat::Text, _) if !args.over_http() => {
            bail!("--prompt-format text is for HTTP runs (--target or --serve)")
        }
        (PromptFormat::Text, None) => Err(TextPromptError::NoTokenizer.into()),
        (PromptFormat::Text, Some(path)) => {
            build_prompts(path, &[])?;
            Ok(Some(path.clone()))
        }
    }
}

/// The server at `url`: started with the shell command `launch` (and
/// waited for on `/health`; a server that does not come up is a
/// [`ServerFail`] in the error's chain), else checked for health; then
/// described (`/v1/models`, headers) for the fingerprint.
pub fn connect(
    url: &str,
    launch: Option<&str>,
    flags: &HttpFlags,
    root: &Path,
) -> anyhow::Result<HttpSetup> {
    let mut driver = flags.driver();
    let (mut target, had_credentials) =
        Target::new_checked(url, &flags.api_key_env, flags.stream, flags.request_timeout)?;
    if had_credentials {
        warnings::emit(&Warning::CredentialsInUrl {
            env: flags.api_key_env.clone(),
        });
    }
    let mut launched = None;
    if let Some(cmd) = launch {
        let log = work_root(root).join(format!(
            "launch-{}-{}.log",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f"),
            std::process::id()
        ));
        eprintln!("starting the server under test (log {})", log.display());
        let mut server = Server::start_shell(cmd, &log)?;
        if let Err(fail) = server.wait_healthy(&target, flags.launch_timeout) {
            server.stop(Duration::from_secs(10));
            return Err(fail.into());
        }
        launched = Some(server);
    } else if !target.healthy() {
        warnings::emit(&Warning::TargetUnhealthy {
            url: target.base.clone(),
        });
    }
    let mut fingerprint = match target.describe(flags.served_model.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            if let Some(server) = launched {
                server.stop(Duration::from_secs(10));
            }
            return Err(e);
        }
    };
    fingerprint.launch = launch.map(crate::http::server::redact);
    fingerprint.text_prompts = flags.tokenizer.as_deref().map(tokenizer_label);
    driver.fixed = Some(target);
    Ok(HttpSetup {
        driver,
        fingerprint,
        launched,
    })
}

fn stop_launched(http: &mut Option<HttpSetup>) {
    if let Some(h) = http.as_mut() {
        h.stop();
    }
}

/// The engine's records and step log; a missing or malformed file is the
/// trial's failure reason.
fn read_outputs(files: &TrialFiles) -> Result<(Vec<RequestRecord>, Vec<StepLogEntry>), String> {
    let records =
        workloads::jsonl::read::<RequestRecord>(&files.records).map_err(|e| e.to_string())?;
    let steps = if files.step_log.exists() {
        workloads::jsonl::read::<StepLogEntry>(&files.step_log).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    Ok((records, steps))
}

/// Peak memory from the engine's summary (device peak on a GPU, resident
/// set on a CPU). A missing or unreadable summary leaves it unreported
/// rather than failing a trial whose records are fine.
fn peak_memory(files: &TrialFiles) -> Option<u64> {
    let text = std::fs::read_to_string(&files.summary).ok()?;
    let summary: BenchSummary = serde_json::from_str(&text).ok()?;
    summary.peak_memory_bytes
}

pub(crate) fn trial_line(workload: &str, t: &TrialSummary, trials: u32) -> String {
    let n = t.index + 1;
    match &t.status {
        TrialStatus::Ok => format!(
            "{workload} trial {n}/{trials}: {:.1} output tok/s, mean TTFT {:.1} ms ({:.1} s){}",
            t.metrics
                .get("output_throughput")
                .copied()
                .unwrap_or(f64::NAN),
            t.metrics.get("mean_ttft_ms").copied().unwrap_or(f64::NAN),
            t.wall_s,
            match t.metrics.get("rejected_requests").copied() {
                Some(n) if n > 0.0 => format!("; {n:.0} requests REJECTED"),
                _ => String::new(),
            }
        ),
        TrialStatus::Failed { reason, .. } => {
            format!("{workload} trial {n}/{trials}: FAILED: {reason}")
        }
        TrialStatus::TimedOut { after_s } => {
            format!("{workload} trial {n}/{trials}: TIMED OUT after {after_s:.1} s")
        }
    }
}

/// Stores what finished before a pipeline error, then returns the error
/// with the partial run's id (or why it could not be stored) attached.
pub(crate) fn store_partial(store: &Store, run: &RunRecord, err: anyhow::Error) -> anyhow::Error {
    let finished = run.workloads.iter().map(|w| w.trials.len()).sum::<usize>();
    if finished == 0 {
        return err;
    }
    match store.add_run(run) {
        Ok(id) => err.context(format!(
            "the run stopped early; its {finished} finished trials are stored as run {id}"
        )),
        Err(e) => err.context(format!(
            "the run stopped early and its {finished} finished trials could not be stored: {e}"
        )),
    }
}
