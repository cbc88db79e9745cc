//! `cargo xtask sweep FILE`: every point of a sweep file (see
//! `workloads::sweep` for the file) as an ordinary stored run, resumable.
//!
//! The walk is the same whether it runs points or only looks them up: for
//! each tier in order, for each experiment of the tier, the points of its
//! profile (grid or batch points from the file; `load` and `capacity`
//! points from earlier measurements), each point either found in the ledger
//! (done, or failed with a class that is not retried) or run now. A dry run,
//! `--report-only` and `--point` look up; a sweep runs. Because point ids
//! are hashes of what defines a point and adaptive profiles are
//! deterministic given the measurements, a resumed sweep walks the same
//! points and skips the finished ones.
//!
//! The API others build on (launchers decide *where* a point runs):
//! [`Sweep::open`], [`Sweep::listing`] (the known points and their state),
//! `cargo xtask sweep FILE --point ID` (run one), and `--report-only`.

pub mod bsat;
pub mod capacity;
pub mod ledger;
pub mod report;
pub mod results;
pub mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use workloads::sweep::{Experiment, Load, Profile, SearchAxis};

pub use ledger::{Ledger, PointRecord, PointStatus};
pub use results::PointResult;
pub use workloads::sweep::{Objective, Point, SweepFile};

use crate::bench::{BenchContext, RunOptions, DEFAULT_TRIALS_CPU, DEFAULT_TRIALS_GPU};
use crate::progress::Progress;
use crate::run_record::{FailureClass, TrialStatus};
use crate::store::{Store, StoreError};
use crate::workload_plan::DEFAULT_MODEL;

/// Which failed points run again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryPolicy {
    pub retry: BTreeSet<FailureClass>,
}

impl RetryPolicy {
    /// `--retry CLASSES` (or `all`), or seed 004's `--skip-failure-reasons
    /// CLASSES` (or `none`): retry every class not listed. Neither: retry
    /// nothing (a failure is a result).
    pub fn from_flags(retry: &[String], skip: &[String]) -> anyhow::Result<RetryPolicy> {
        let parse = |names: &[String], flag: &str| -> anyhow::Result<BTreeSet<FailureClass>> {
            let mut out = BTreeSet::new();
            for n in names.iter().filter(|n| !n.trim().is_empty()) {
                match n.trim().to_ascii_lowercase().as_str() {
                    "all" => out.extend(FailureClass::ALL),
                    "none" => {}
                    _ => {
                        out.insert(FailureClass::parse(n).with_context(|| {
                            format!(
                                "{flag}: unknown failure class `{n}`; classes: {}, or all/none",
                                FailureClass::ALL.map(|c| c.name()).join(", ")
                            )
                        })?);
                    }
                }
            }
            Ok(out)
        };
        if !skip.is_empty() {
            let skipped = parse(skip, "--skip-failure-reasons")?;
            let retry = FailureClass::ALL
                .into_iter()
                .filter(|c| !skipped.contains(c))
                .collect();
            return Ok(RetryPolicy { retry });
        }
        Ok(RetryPolicy {
            retry: parse(retry, "--retry")?,
        })
    }

    /// Whether a point with this ledger entry runs.
    pub fn should_run(&self, existing: Option<&PointRecord>) -> bool {
        match existing.map(|r| &r.status) {
            None => true,
            Some(PointStatus::Done) => false,
            Some(PointStatus::Failed { class, .. }) => self.retry.contains(class),
        }
    }
}

/// A point's state for listings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListedPoint {
    pub id: String,
    pub experiment: String,
    pub tier: u32,
    pub label: String,
    pub model: Option<String>,
    /// "done", "failed:<class>", or "pending".
    pub state: String,
    /// Whether a sweep run now would run it.
    pub will_run: bool,
}

/// What one experiment came to.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentOutcome {
    pub name: String,
    pub tier: u32,
    pub profile: Profile,
    /// Tiers above 0: the objective and the point whose knobs were the base.
    pub base: Option<(String, String)>,
    /// Every point visited, in order.
    pub point_ids: Vec<String>,
    /// Why the experiment is not complete, when it is not.
    pub pending: Vec<String>,
    /// Batch profile: the B_sat fit, or why there is none.
    pub bsat: Option<Result<bsat::BsatFit, String>>,
    /// Capacity profile: one search per combination of the axes.
    pub capacity: Vec<capacity::Capacity>,
}

/// Everything a sweep knows: the points with their numbers and the
/// experiments' analyses. Reports are made from this.
#[derive(Debug, Clone)]
pub struct SweepOutcome {
    pub file: SweepFile,
    pub device: String,
    pub trials: u32,
    pub points: Vec<PointResult>,
    pub experiments: Vec<ExperimentOutcome>,
}

impl SweepOutcome {
    pub fn point(&self, id: &str) -> Option<&PointResult> {
        self.points.iter().find(|p| p.record.point_id == id)
    }
}

enum Mode<'a> {
    /// Look points up in the ledger only.
    Lookup,
    /// Run points the policy allows (of the selected experiments).
    Run {
        ctx: &'a BenchContext,
        progress: &'a Progress,
    },
}

/// A sweep file bound to a store, a device and a trial count.
pub struct Sweep {
    pub file: SweepFile,
    pub ledger: Ledger,
    pub store: Store,
    pub device: String,
    pub trials: u32,
    pub policy: RetryPolicy,
    /// Run only these experiments (empty: all).
    pub only: BTreeSet<String>,
    /// Runs several points at once (the local launcher on a machine with
    /// several GPUs, `crate::launcher`); `None`: one at a time in process.
    pub parallel: Option<Box<dyn PointRunner>>,
    /// `--target`: every point's trials go to this server over HTTP.
    pub http: Option<target::SweepTarget>,
}

/// Runs a batch of points side by side, each recording itself in the
/// ledger; returns the ids it ran. The walk then only looks them up.
pub trait PointRunner {
    fn run(
        &self,
        sweep: &Sweep,
        ctx: &BenchContext,
        points: &[Point],
        progress: &Progress,
    ) -> anyhow::Result<BTreeSet<String>>;
}

/// Counts of what a run did, for the progress bar and the exit code.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ran_ok: u64,
    ran_failed: u64,
    to_run: u64,
}

struct Walk<'a, 'b> {
    sweep: &'a Sweep,
    mode: Mode<'b>,
    results: Vec<PointResult>,
    seen: BTreeSet<String>,
    listed: Vec<ListedPoint>,
    counts: Counts,
    /// Every point met, by id (to run one by id).
    found_points: BTreeMap<String, Point>,
    /// Points the parallel runner ran in this walk (looked up only).
    launched: BTreeSet<String>,
}

impl Sweep {
    /// Loads the file and checks what only the pipeline knows (metric names
    /// of objectives), with file:line errors.
    pub fn open(
        file: &Path,
        store_root: &Path,
        device: &str,
        trials: Option<u32>,
        policy: RetryPolicy,
    ) -> anyhow::Result<Sweep> {
        let mut file = SweepFile::load(file)?;
        for (name, o) in &file.objectives {
            let at = format!("objective.{name}");
            let fields = std::iter::once((
                format!("{at}.{}", if o.maximize { "maximize" } else { "minimize" }),
                &o.metric,
            ))
            .chain(
                o.subject_to
                    .keys()
                    .map(|m| (format!("{at}.subject_to.{m}"), m)),
            );
            for (field, metric) in fields {
                if !results::is_known_metric(metric) {
                    bail!(
                        "{}",
                        file.invalid_field(
                            &field,
                            format!(
                                "unknown metric `{metric}`; e.g. output_tps_per_gpu, output_throughput, p99_ttft_ms, p99_tpot_ms, request_goodput (see docs/SWEEPS.md)"
                            )
                        )
                    );
                }
            }
        }
        let default_trials = if device == "cuda" {
            DEFAULT_TRIALS_GPU
        } else {
            DEFAULT_TRIALS_CPU
        };
        let trials = trials.or(file.trials).unwrap_or(default_trials);
        // The trial count is part of every point's id.
        file.trials = Some(trials);
        Ok(Sweep {
            ledger: Ledger::open(store_root, &file.name, device),
            store: Store::open(store_root)?,
            device: device.to_string(),
            trials,
            policy,
            only: BTreeSet::new(),
            parallel: None,
            http: None,
            file,
        })
    }

    fn selected(&self, experiment: &str) -> bool {
        self.only.is_empty() || self.only.contains(experiment)
    }

    /// The points known now (from the file and the ledger) with their state.
    pub fn listing(&self) -> anyhow::Result<(Vec<ListedPoint>, SweepOutcome)> {
        let mut walk = Walk::new(self, Mode::Lookup);
        let experiments = walk.walk()?;
        let listed = std::mem::take(&mut walk.listed);
        Ok((listed, walk.finish(experiments)))
    }

    /// Everything recorded, analysed, running nothing.
    pub fn outcome(&self) -> anyhow::Result<SweepOutcome> {
        Ok(self.listing()?.1)
    }

    /// Runs every point the policy allows, then returns the outcome.
    pub fn run(&self, ctx: &BenchContext) -> anyhow::Result<SweepOutcome> {
        let (listed, _) = self.listing()?;
        let to_run = listed
            .iter()
            .filter(|p| p.will_run && self.selected(&p.experiment))
            .count() as u64;
        let progress = Progress::points(to_run);
        let mut walk = Walk::new(
            self,
            Mode::Run {
                ctx,
                progress: &progress,
            },
        );
        walk.counts.to_run = to_run;
        walk.update_counts(&progress);
        let experiments = walk.walk();
        progress.done();
        let experiments = experiments?;
        Ok(walk.finish(experiments))
    }

    /// Runs the one point whose id starts with `prefix` (resume rules apply).
    pub fn run_point(&self, ctx: &BenchContext, prefix: &str) -> anyhow::Result<PointRecord> {
        let (listed, _) = self.listing()?;
        let matches: Vec<&ListedPoint> =
            listed.iter().filter(|p| p.id.starts_with(prefix)).collect();
        let listed_point = match matches.as_slice() {
            [one] => *one,
            [] => bail!(
                "no point `{prefix}` in {} (known now: {}; tiers above 0 and load/capacity points appear once what they depend on is measured)",
                self.file.path.display(),
                listed.len()
            ),
            many => bail!(
                "`{prefix}` matches {} points: {}",
                many.len(),
                many.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        };
        let point = self
            .find_point(&listed_point.id)?
            .with_context(|| format!("point {} is no longer derivable", listed_point.id))?;
        let existing = self.ledger.get(&point.id)?;
        if !self.policy.should_run(existing.as_ref()) {
            let record = existing.context("a point that is not run has a ledger entry")?;
            eprintln!(
                "point {} ({}) is already {}: not run again{}",
                point.id,
                point.label,
                state_of(Some(&record)),
                if record.is_done() {
                    ""
                } else {
                    " (--retry CLASS runs it again)"
                }
            );
            return Ok(record);
        }
        let progress = Progress::points(1);
        let record = execute(ctx, self, &point, existing.as_ref(), &progress)?;
        progress.done();
        Ok(record)
    }

    /// The point with this id among the points known now.
    pub fn find_point(&self, id: &str) -> anyhow::Result<Option<Point>> {
        let mut walk = Walk::new(self, Mode::Lookup);
        walk.walk()?;
        Ok(walk.found_points.remove(id))
    }
}

fn state_of(record: Option<&PointRecord>) -> String {
    match record.map(|r| &r.status) {
        None => "pending".into(),
        Some(PointStatus::Done) => "done".into(),
        Some(PointStatus::Failed { class, .. }) => format!("failed:{class}"),
    }
}

/// Runs one point as one stored run and records it in the ledger. A point
/// that fails is recorded with its class; only a failure of the store
/// itself is an error.
fn execute(
    ctx: &BenchContext,
    sweep: &Sweep,
    point: &Point,
    existing: Option<&PointRecord>,
    progress: &Progress,
) -> anyhow::Result<PointRecord> {
    let model = point
        .spec
        .model
        .clone()
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());
    let started = Instant::now();
    let options = RunOptions {
        trials: sweep.trials,
        suite: Some(format!("sweep:{}", sweep.file.name)),
        keep_records: false,
    };
    let outcome = match &sweep.http {
        None => ctx.run_specs(&model, &[&point.spec], &options, progress, None),
        Some(http) => http.with_server(point, |server| {
            ctx.run_specs(&model, &[&point.spec], &options, progress, Some(server))
        }),
    };
    let mut record = PointRecord::new(point, &sweep.device, sweep.trials);
    record.attempts = existing.map(|r| r.attempts).unwrap_or(0) + 1;
    record.wall_s = started.elapsed().as_secs_f64();
    record.updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match outcome {
        Ok(o) => {
            record.run_id = Some(o.run_id.clone());
            let failed = o
                .run
                .workloads
                .iter()
                .flat_map(|w| &w.trials)
                .find(|t| t.status != TrialStatus::Ok);
            if let Some(t) = failed {
                let message = match &t.status {
                    TrialStatus::Failed { reason, .. } => reason.clone(),
                    TrialStatus::TimedOut { after_s } => {
                        format!("trial {} timed out after {after_s:.1} s", t.index + 1)
                    }
                    TrialStatus::Ok => String::new(),
                };
                record.status = PointStatus::Failed {
                    class: t.status.failure_class().unwrap_or(FailureClass::Crash),
                    message,
                };
            }
        }
        Err(e) if e.chain().any(|c| c.downcast_ref::<StoreError>().is_some()) => return Err(e),
        Err(e) => {
            // A server `--launch` started for the point that never came up.
            let server_fail = e.chain().any(|c| {
                c.downcast_ref::<crate::http::server::ServerFail>()
                    .is_some()
            });
            record.status = PointStatus::Failed {
                class: if server_fail {
                    FailureClass::ServerFail
                } else {
                    FailureClass::Crash
                },
                message: format!("the point could not run: {e:#}"),
            };
        }
    }
    sweep.ledger.put(&record)?;
    let line = match &record.status {
        PointStatus::Done => format!(
            "point {} {} done ({:.1} s, run {})",
            record.point_id,
            record.label,
            record.wall_s,
            record
                .run_id
                .as_deref()
                .map(crate::side::short_id)
                .unwrap_or("-")
        ),
        PointStatus::Failed { class, message } => format!(
            "point {} {} FAILED ({class}): {message}",
            record.point_id, record.label
        ),
    };
    progress.println(line);
    Ok(record)
}

impl<'a, 'b> Walk<'a, 'b> {
    fn new(sweep: &'a Sweep, mode: Mode<'b>) -> Self {
        Walk {
            sweep,
            mode,
            results: Vec::new(),
            seen: BTreeSet::new(),
            listed: Vec::new(),
            counts: Counts::default(),
            found_points: BTreeMap::new(),
            launched: BTreeSet::new(),
        }
    }

    /// With a parallel runner, a grid's or batch's points run side by side
    /// first; the walk then finds them in the ledger.
    fn run_in_parallel(&mut self, points: &[Point]) -> anyhow::Result<()> {
        let (Mode::Run { ctx, progress }, Some(parallel)) = (&self.mode, &self.sweep.parallel)
        else {
            return Ok(());
        };
        let (ctx, progress) = (*ctx, *progress);
        for id in parallel.run(self.sweep, ctx, points, progress)? {
            if self.sweep.ledger.get(&id)?.is_some_and(|r| r.is_done()) {
                self.counts.ran_ok += 1;
            } else {
                self.counts.ran_failed += 1;
            }
            self.launched.insert(id);
        }
        self.update_counts(progress);
        Ok(())
    }

    fn update_counts(&self, progress: &Progress) {
        let c = self.counts;
        progress.set_counts(
            c.ran_ok,
            c.ran_failed,
            c.to_run.saturating_sub(c.ran_ok + c.ran_failed),
        );
    }

    fn finish(self, experiments: Vec<ExperimentOutcome>) -> SweepOutcome {
        SweepOutcome {
            file: self.sweep.file.clone(),
            device: self.sweep.device.clone(),
            trials: self.sweep.trials,
            points: self.results,
            experiments,
        }
    }

    /// The point's result: looked up, or run now when the mode and the
    /// policy allow. `None`: not measured (and not run here).
    fn point(&mut self, p: &Point) -> anyhow::Result<Option<PointResult>> {
        self.found_points
            .entry(p.id.clone())
            .or_insert_with(|| p.clone());
        let mut existing = self.sweep.ledger.get(&p.id)?;
        let will_run = self.sweep.policy.should_run(existing.as_ref());
        if self.seen.insert(p.id.clone()) {
            if let (Mode::Run { ctx, progress }, true) = (
                &self.mode,
                will_run && self.sweep.selected(&p.experiment) && !self.launched.contains(&p.id),
            ) {
                let (ctx, progress) = (*ctx, *progress);
                // Points made at run time were not in the first listing.
                if self.counts.ran_ok + self.counts.ran_failed >= self.counts.to_run {
                    self.counts.to_run += 1;
                    progress.add_points(1);
                }
                let record = execute(ctx, self.sweep, p, existing.as_ref(), progress)?;
                if record.is_done() {
                    self.counts.ran_ok += 1;
                } else {
                    self.counts.ran_failed += 1;
                }
                progress.point_finished();
                self.update_counts(progress);
                existing = Some(record);
            }
            // Listed with its state after this walk (a later tier waits for
            // every lower-tier point to have one).
            self.listed.push(ListedPoint {
                id: p.id.clone(),
                experiment: p.experiment.clone(),
                tier: p.tier,
                label: p.label.clone(),
                model: p.spec.model.clone(),
                state: state_of(existing.as_ref()),
                will_run,
            });
        }
        let Some(record) = existing else {
            return Ok(None);
        };
        if let Some(r) = self.results.iter().find(|r| r.record.point_id == p.id) {
            return Ok(Some(r.clone()));
        }
        let result = PointResult::load(&self.sweep.store, record)?;
        self.results.push(result.clone());
        Ok(Some(result))
    }

    fn walk(&mut self) -> anyhow::Result<Vec<ExperimentOutcome>> {
        let file = &self.sweep.file;
        let mut outcomes = Vec::new();
        for tier in file.tiers() {
            for exp in file.experiments.iter().filter(|e| e.tier == tier) {
                outcomes.push(self.experiment(exp)?);
            }
        }
        Ok(outcomes)
    }

    fn experiment(&mut self, exp: &Experiment) -> anyhow::Result<ExperimentOutcome> {
        let file = &self.sweep.file;
        let mut out = ExperimentOutcome {
            name: exp.name.clone(),
            tier: exp.tier,
            profile: exp.profile.clone(),
            base: None,
            point_ids: Vec::new(),
            pending: Vec::new(),
            bsat: None,
            capacity: Vec::new(),
        };
        let mut base_engine = None;
        if let Some(objective_name) = &exp.from {
            let objective = &file.objectives[objective_name];
            let lower: Vec<PointResult> = self
                .results
                .iter()
                .filter(|r| r.record.tier < exp.tier)
                .cloned()
                .collect();
            let lower_complete = self
                .listed
                .iter()
                .filter(|p| p.tier < exp.tier)
                .all(|p| p.state != "pending");
            match results::best(&lower, objective) {
                Some(best) if lower_complete => {
                    out.base = Some((objective_name.clone(), best.record.point_id.clone()));
                    base_engine =
                        serde_json::from_value::<toml::Table>(best.record.engine.clone()).ok();
                }
                Some(_) => {
                    out.pending.push(format!(
                        "tier {}: waits for every lower-tier point to finish",
                        exp.tier
                    ));
                    return Ok(out);
                }
                None => {
                    out.pending.push(format!(
                        "tier {}: no lower-tier point meets objective `{objective_name}` (yet)",
                        exp.tier
                    ));
                    return Ok(out);
                }
            }
        }
        let base = base_engine.as_ref();
        match &exp.profile {
            Profile::Grid | Profile::Batch { .. } => {
                let points = file
                    .planned_points(exp, base)
                    .context("expanding the experiment's points")?;
                self.run_in_parallel(&points)?;
                for p in &points {
                    self.point(p)?;
                    out.point_ids.push(p.id.clone());
                }
                if matches!(exp.profile, Profile::Batch { .. }) {
                    out.bsat = Some(self.bsat(&points)?);
                }
            }
            Profile::Load { rates } => {
                let sync = file.points_with(exp, base, Some(Load::Concurrency(1)))?;
                let max = file.points_with(exp, base, Some(Load::Offline))?;
                for (i, (s, m)) in sync.iter().zip(&max).enumerate() {
                    let rs = self.point(s)?;
                    let rm = self.point(m)?;
                    out.point_ids.extend([s.id.clone(), m.id.clone()]);
                    let rate = |r: &Option<PointResult>| {
                        r.as_ref().and_then(|r| r.mean("request_throughput"))
                    };
                    let (Some(lo), Some(hi)) = (rate(&rs), rate(&rm)) else {
                        out.pending.push(format!(
                            "combination {}: {rates} rates between the synchronous and the throughput request rates, once both are measured",
                            i + 1
                        ));
                        continue;
                    };
                    for k in 1..=*rates {
                        let r = lo + (hi - lo) * f64::from(k) / f64::from(*rates + 1);
                        let p = file
                            .points_with(exp, base, Some(Load::Rate(r)))?
                            .swap_remove(i);
                        self.point(&p)?;
                        out.point_ids.push(p.id);
                    }
                }
            }
            Profile::Capacity(search) => {
                let combos = exp.combination_count();
                for i in 0..combos {
                    let cap = capacity::search(search, |x| {
                        let load = match search.search {
                            SearchAxis::Rate => Load::Rate(x),
                            SearchAxis::Concurrency => Load::Concurrency(x.round() as u32),
                        };
                        let p = file.points_with(exp, base, Some(load))?.swap_remove(i);
                        let r = self.point(&p)?;
                        out.point_ids.push(p.id.clone());
                        let Some(r) = r else {
                            return Ok(capacity::ProbeResult::Unknown);
                        };
                        let attainment = match (&r.record.status, &p.spec.slo) {
                            (PointStatus::Done, Some(slo)) => {
                                Some(capacity::attainment(&r.requests(&self.sweep.store)?, slo))
                            }
                            _ => None,
                        };
                        let probe = capacity::Probe {
                            load: x,
                            point_id: p.id.clone(),
                            passed: false,
                            reason: match &r.record.status {
                                PointStatus::Failed { class, message } => {
                                    Some(format!("{class}: {message}"))
                                }
                                PointStatus::Done => None,
                            },
                            attainment,
                            oversaturated: false,
                            request_throughput: r.mean("request_throughput"),
                            output_throughput: r.mean("output_throughput"),
                            goodput: r.mean("request_goodput"),
                        };
                        Ok(capacity::ProbeResult::Measured(capacity::judge(
                            probe,
                            search.attainment,
                            search.search == SearchAxis::Rate,
                        )))
                    })?;
                    if !cap.complete {
                        out.pending.push(format!(
                            "combination {}: the capacity search continues (up to {} probes)",
                            i + 1,
                            search.max_probes
                        ));
                    }
                    out.capacity.push(cap);
                }
            }
        }
        Ok(out)
    }

    /// The B_sat fit over the step logs of the batch points that finished.
    fn bsat(&mut self, points: &[Point]) -> anyhow::Result<Result<bsat::BsatFit, String>> {
        let mut steps = Vec::new();
        for p in points {
            if let Some(r) = self
                .results
                .iter()
                .find(|r| r.record.point_id == p.id && r.record.is_done())
            {
                steps.extend(r.steps(&self.sweep.store)?);
            }
        }
        let seed =
            u64::from_str_radix(points.first().map(|p| &p.id[..8]).unwrap_or("0"), 16).unwrap_or(0);
        Ok(bsat::fit(&steps, seed).map_err(|e| e.to_string()))
    }
}

/// Records in their sweeps' ledgers the sweep points a suite's run measured
/// (a suite's sweeps run their points as workloads of the suite's run), so
/// that `cargo xtask sweep FILE --report-only` reports them and a later
/// `cargo xtask sweep FILE` does not measure them again.
pub fn record_suite_points(
    catalogue: &workloads::Catalogue,
    suite: Option<&str>,
    run_id: &str,
    run: &crate::run_record::RunRecord,
    trials: u32,
    results: &Path,
) -> anyhow::Result<usize> {
    let Some(suite) = suite.and_then(|s| catalogue.suite(s).ok()) else {
        return Ok(0);
    };
    let mut recorded = 0;
    for name in &suite.sweeps {
        let Some(file) = catalogue.sweep(name) else {
            continue;
        };
        let mut file = file.clone();
        file.trials = Some(trials);
        let ledger = Ledger::open(results, &file.name, &run.fingerprint.device);
        for exp in &file.experiments {
            for point in file.static_points(exp).unwrap_or_default() {
                let Some(w) = run.workloads.iter().find(|w| w.name == point.spec.name) else {
                    continue;
                };
                let mut record = PointRecord::new(&point, &run.fingerprint.device, trials);
                record.run_id = Some(run_id.to_string());
                record.attempts = 1;
                record.wall_s = w.trials.iter().map(|t| t.wall_s).sum();
                record.updated_at = run.created_at.clone();
                if let Some(t) = w.trials.iter().find(|t| t.status != TrialStatus::Ok) {
                    record.status = PointStatus::Failed {
                        class: t.status.failure_class().unwrap_or(FailureClass::Crash),
                        message: match &t.status {
                            TrialStatus::Failed { reason, .. } => reason.clone(),
                            TrialStatus::TimedOut { after_s } => {
                                format!("timed out after {after_s:.1} s")
                            }
                            TrialStatus::Ok => String::new(),
                        },
                    };
                }
                ledger.put(&record)?;
                recorded += 1;
            }
        }
    }
    Ok(recorded)
}

/// The reports' default folder for a sweep on a device.
pub fn default_report_dir(results: &Path, sweep: &str, device: &str) -> PathBuf {
    Ledger::open(results, sweep, device).dir().join("report")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: PointStatus) -> PointRecord {
        serde_json::from_value(serde_json::json!({
            "point_id": "p", "sweep": "s", "experiment": "e", "tier": 0, "label": "l",
            "device": "cpu", "status": status, "run_id": null, "workload": "w",
            "model": null, "engine": {}, "axes": {}, "trials": 1, "attempts": 1,
            "wall_s": 1.0, "updated_at": ""
        }))
        .unwrap()
    }

    #[test]
    fn retry_policy_follows_both_flag_forms() {
        let oom = record(PointStatus::Failed {
            class: FailureClass::Oom,
            message: "m".into(),
        });
        let timeout = record(PointStatus::Failed {
            class: FailureClass::Timeout,
            message: "m".into(),
        });
        let done = record(PointStatus::Done);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

        let default = RetryPolicy::from_flags(&[], &[]).unwrap();
        assert!(default.should_run(None));
        assert!(!default.should_run(Some(&done)));
        assert!(!default.should_run(Some(&oom)));

        let retry = RetryPolicy::from_flags(&s(&["oom"]), &[]).unwrap();
        assert!(retry.should_run(Some(&oom)) && !retry.should_run(Some(&timeout)));

        // Seed 004's spelling: retry everything but OOM.
        let skip = RetryPolicy::from_flags(&[], &s(&["OOM"])).unwrap();
        assert!(!skip.should_run(Some(&oom)) && skip.should_run(Some(&timeout)));
        let none = RetryPolicy::from_flags(&[], &s(&["none"])).unwrap();
        assert!(none.should_run(Some(&oom)) && !none.should_run(Some(&done)));
        let all = RetryPolicy::from_flags(&s(&["all"]), &[]).unwrap();
        assert_eq!(all.retry.len(), FailureClass::ALL.len());

        let e = RetryPolicy::from_flags(&s(&["segfault"]), &[]).unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown failure class `segfault`"),
            "{e:#}"
        );
    }

    #[test]
    fn objectives_naming_unknown_metrics_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            "name = \"s\"\ndescription = \"d\"\n[fixed]\nrequests = 2\nprompt_len = 4\noutput_len = 4\n\n[objective.o]\nmaximize = \"tokens_per_banana\"\n\n[[experiment]]\nname = \"e\"\n",
        )
        .unwrap();
        let e = Sweep::open(&file, dir.path(), "cpu", None, RetryPolicy::default())
            .err()
            .unwrap();
        let e = format!("{e:#}");
        assert!(
            e.contains(
                "s.toml:9: field `objective.o.maximize`: unknown metric `tokens_per_banana`"
            ),
            "{e}"
        );
        std::fs::write(
            &file,
            "name = \"s\"\ndescription = \"d\"\n[fixed]\nrequests = 2\nprompt_len = 4\noutput_len = 4\n\n[objective.o]\nmaximize = \"output_tps_per_gpu\"\n\n[[experiment]]\nname = \"e\"\n",
        )
        .unwrap();
        let sweep = Sweep::open(&file, dir.path(), "cpu", Some(2), RetryPolicy::default()).unwrap();
        assert_eq!(sweep.trials, 2);
        let (listed, _) = sweep.listing().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, "pending");
    }
}
