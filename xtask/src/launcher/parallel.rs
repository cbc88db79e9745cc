//! The local launcher's parallel runner: a sweep's points as workers of
//! the xtask binary itself (`sweep FILE --point ID`), at most one per GPU
//! slot (see `local.rs`), each recording itself in the ledger.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use super::gpus_for;
use super::local::{run_jobs, LocalJob, LocalOutcome};
use super::slurm_script::PointCommand;
use crate::bench::BenchContext;
use crate::progress::Progress;
use crate::sweep::{Point, PointRunner, PointStatus, Sweep};

/// Runs a sweep's points as parallel workers, one per GPU.
pub struct ParallelRunner {
    /// GPU UUIDs, one slot each.
    pub slots: Vec<String>,
    pub command: PointCommand,
    pub gpus_per_point: Option<u32>,
}

impl PointRunner for ParallelRunner {
    /// Runs the points the policy allows, each as `xtask sweep FILE --point
    /// ID` with `CUDA_VISIBLE_DEVICES` set to the GPUs it holds; each
    /// records itself in the ledger. Returns the ids it started (the walk
    /// then only looks them up).
    fn run(
        &self,
        sweep: &Sweep,
        ctx: &BenchContext,
        points: &[Point],
        progress: &Progress,
    ) -> anyhow::Result<BTreeSet<String>> {
        let mut jobs = Vec::new();
        let mut models = BTreeSet::new();
        for p in points {
            if !(sweep.only.is_empty() || sweep.only.contains(&p.experiment))
                || !sweep.policy.should_run(sweep.ledger.get(&p.id)?.as_ref())
            {
                continue;
            }
            models.insert(p.spec.model.clone());
            jobs.push(LocalJob {
                point_id: p.id.clone(),
                label: p.label.clone(),
                slots: gpus_for(&sweep.device, self.gpus_per_point, &p.engine()) as usize,
            });
        }
        if jobs.is_empty() {
            return Ok(BTreeSet::new());
        }
        // Synthesize each model once here rather than in racing workers.
        for model in models {
            let name = model.unwrap_or_else(|| crate::workload_plan::DEFAULT_MODEL.to_string());
            crate::model::resolve(&name, &ctx.engine, &ctx.root.join(".models"))?;
        }
        let jobs_dir = sweep.ledger.dir().join("jobs");
        let mut spawn = |job: &LocalJob, uuids: &[String]| {
            let dir = jobs_dir.join(&job.point_id);
            std::fs::create_dir_all(&dir)?;
            let log_path = dir.join("local.log");
            let log = std::fs::File::create(&log_path)?;
            let child = Command::new(&self.command.xtask)
                .arg("sweep")
                .arg(&self.command.sweep_file)
                .arg("--point")
                .arg(&job.point_id)
                .args(&self.command.args)
                .env("CUDA_VISIBLE_DEVICES", uuids.join(","))
                .env("DYNO_ROOT", &self.command.root)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            progress.println(format!(
                "point {} ({}) started on {}",
                job.point_id,
                job.label,
                uuids.join(",")
            ));
            Ok((child, Some(log_path)))
        };
        let mut on_done = |job: &LocalJob, outcome: &LocalOutcome| {
            let line = match outcome {
                LocalOutcome::NotRun { reason } => format!("error: {reason}"),
                LocalOutcome::Exited {
                    status,
                    gpus,
                    wall_s,
                    log,
                } => {
                    let recorded = sweep.ledger.get(&job.point_id).ok().flatten();
                    let log = log
                        .as_ref()
                        .map(|l| l.display().to_string())
                        .unwrap_or_default();
                    match recorded.map(|r| r.status) {
                        Some(PointStatus::Done) => format!(
                            "point {} ({}) done on {} ({wall_s:.1} s)",
                            job.point_id,
                            job.label,
                            gpus.join(",")
                        ),
                        Some(PointStatus::Failed { class, message }) => format!(
                            "point {} ({}) FAILED ({class}) on {}: {message}",
                            job.point_id,
                            job.label,
                            gpus.join(",")
                        ),
                        None => format!(
                            "error: point {} ({}): its worker exited ({status}) without recording it; log {log}",
                            job.point_id, job.label
                        ),
                    }
                }
            };
            progress.println(line);
            progress.point_finished();
        };
        run_jobs(&jobs, &self.slots, &mut spawn, &mut on_done);
        Ok(jobs.into_iter().map(|j| j.point_id).collect())
    }
}
