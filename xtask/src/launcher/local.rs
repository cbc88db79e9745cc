//! `--launcher local`: every GPU of this machine at once. Points run as
//! child processes of the xtask binary itself (`sweep FILE --point ID`),
//! each with `CUDA_VISIBLE_DEVICES` set to the UUIDs of the GPUs it holds,
//! so no two points ever share a GPU and a point needing k GPUs holds k.
//!
//! On a CPU there is one slot: points run one after another. Running CPU
//! points side by side would make them compete for the same cores and
//! memory bandwidth (the engine already uses every core), so each point's
//! numbers would depend on what ran beside it: not a measurement.

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::run_record::GpuFingerprint;

/// One GPU a point may be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSlot {
    /// NVML's `GPU-...` UUID: what `CUDA_VISIBLE_DEVICES` is set to (a UUID,
    /// unlike an index, means the same GPU to NVML and to CUDA).
    pub uuid: String,
    pub name: String,
}

/// The GPUs this process may use: NVML's list, restricted to
/// `CUDA_VISIBLE_DEVICES` when it is set (indices, taken in NVML's order,
/// or UUIDs; an empty value, `-1` or `NoDevFiles` hides every GPU).
pub fn visible_gpus(all: &[GpuFingerprint], cuda_visible: Option<&str>) -> Vec<GpuSlot> {
    let slot = |g: &GpuFingerprint| GpuSlot {
        uuid: g.uuid.clone(),
        name: g.name.clone(),
    };
    let Some(visible) = cuda_visible else {
        return all.iter().map(slot).collect();
    };
    let mut slots = Vec::new();
    for entry in visible.split(',').map(str::trim) {
        let found = if let Ok(index) = entry.parse::<usize>() {
            all.get(index)
        } else if entry.is_empty() {
            None
        } else {
            let bare = entry.trim_start_matches("GPU-").to_ascii_lowercase();
            // CUDA accepts a unique prefix of a UUID.
            all.iter().find(|g| {
                g.uuid
                    .trim_start_matches("GPU-")
                    .to_ascii_lowercase()
                    .starts_with(&bare)
            })
        };
        match found {
            Some(g) if !slots.iter().any(|s: &GpuSlot| s.uuid == g.uuid) => slots.push(slot(g)),
            Some(_) => {}
            // CUDA stops at the first entry it cannot resolve.
            None => break,
        }
    }
    slots
}

/// Which slots are taken.
#[derive(Debug, Clone)]
pub struct SlotPool {
    busy: Vec<bool>,
}

impl SlotPool {
    pub fn new(slots: usize) -> SlotPool {
        SlotPool {
            busy: vec![false; slots],
        }
    }

    pub fn len(&self) -> usize {
        self.busy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.busy.is_empty()
    }

    pub fn free(&self) -> usize {
        self.busy.iter().filter(|b| !**b).count()
    }

    /// `k` free slots (lowest first), now taken; `None` if fewer are free.
    pub fn take(&mut self, k: usize) -> Option<Vec<usize>> {
        if self.free() < k {
            return None;
        }
        let picked: Vec<usize> = (0..self.busy.len())
            .filter(|&i| !self.busy[i])
            .take(k)
            .collect();
        for &i in &picked {
            self.busy[i] = true;
        }
        Some(picked)
    }

    pub fn give_back(&mut self, slots: &[usize]) {
        for &i in slots {
            if let Some(b) = self.busy.get_mut(i) {
                *b = false;
            }
        }
    }
}

/// A point to run locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalJob {
    pub point_id: String,
    pub label: String,
    /// Slots it needs: GPUs on a GPU machine, 1 on a CPU.
    pub slots: usize,
}

/// How one point's process ended.
#[derive(Debug)]
pub enum LocalOutcome {
    /// The process ran and exited (its status says how; the store has what
    /// it measured or the failure it recorded).
    Exited {
        status: ExitStatus,
        /// The GPU UUIDs it held (empty on a CPU).
        gpus: Vec<String>,
        wall_s: f64,
        log: Option<PathBuf>,
    },
    /// It never started; the reason names the point and the cause.
    NotRun { reason: String },
}

/// Starts one point's process on the given slots (UUIDs for GPUs, empty on
/// a CPU); returns the child and its log file.
pub type Spawn<'a> =
    dyn FnMut(&LocalJob, &[String]) -> std::io::Result<(Child, Option<PathBuf>)> + 'a;

/// Runs `jobs` on `slots` (GPU UUIDs; empty for a CPU, which has one slot),
/// at most one point per slot at a time. Jobs start in order; a job that
/// needs more slots than are free waits while later, smaller jobs that fit
/// go ahead (so one wide point never idles the rest of the machine). A job
/// needing more slots than exist is not run, with a reason; the others are
/// unaffected. `on_done` sees each outcome as it happens.
pub fn run_jobs(
    jobs: &[LocalJob],
    slots: &[String],
    spawn: &mut Spawn<'_>,
    on_done: &mut dyn FnMut(&LocalJob, &LocalOutcome),
) -> Vec<LocalOutcome> {
    let cpu = slots.is_empty();
    let mut pool = SlotPool::new(if cpu { 1 } else { slots.len() });
    let mut outcomes: Vec<Option<LocalOutcome>> = jobs.iter().map(|_| None).collect();
    let mut waiting: Vec<usize> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let need = if cpu { 1 } else { job.slots.max(1) };
        if need > pool.len() {
            let outcome = LocalOutcome::NotRun {
                reason: format!(
                    "point {} ({}) needs {need} GPUs; this machine has {} visible ({})",
                    job.point_id,
                    job.label,
                    pool.len(),
                    slots.join(",")
                ),
            };
            on_done(job, &outcome);
            outcomes[i] = Some(outcome);
        } else {
            waiting.push(i);
        }
    }
    struct Running {
        job: usize,
        slots: Vec<usize>,
        child: Child,
        log: Option<PathBuf>,
        started: Instant,
    }
    let mut running: Vec<Running> = Vec::new();
    while !waiting.is_empty() || !running.is_empty() {
        // Start every waiting job that fits, in order.
        let mut still_waiting = Vec::new();
        for i in waiting {
            let job = &jobs[i];
            let need = if cpu { 1 } else { job.slots.max(1) };
            match pool.take(need) {
                Some(taken) => {
                    let uuids: Vec<String> = if cpu {
                        Vec::new()
                    } else {
                        taken.iter().map(|&s| slots[s].clone()).collect()
                    };
                    match spawn(job, &uuids) {
                        Ok((child, log)) => running.push(Running {
                            job: i,
                            slots: taken,
                            child,
                            log,
                            started: Instant::now(),
                        }),
                        Err(e) => {
                            pool.give_back(&taken);
                            let outcome = LocalOutcome::NotRun {
                                reason: format!(
                                    "point {} ({}): cannot start its process: {e}",
                                    job.point_id, job.label
                                ),
                            };
                            on_done(job, &outcome);
                            outcomes[i] = Some(outcome);
                        }
                    }
                }
                None => still_waiting.push(i),
            }
        }
        waiting = still_waiting;
        // Reap whatever finished.
        let mut finished_any = false;
        let mut k = 0;
        while k < running.len() {
            let status = match running[k].child.try_wait() {
                Ok(Some(status)) => Some(Ok(status)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            };
            let Some(status) = status else {
                k += 1;
                continue;
            };
            let mut done = running.swap_remove(k);
            pool.give_back(&done.slots);
            finished_any = true;
            let job = &jobs[done.job];
            let outcome = match status {
                Ok(status) => LocalOutcome::Exited {
                    status,
                    gpus: if cpu {
                        Vec::new()
                    } else {
                        done.slots.iter().map(|&s| slots[s].clone()).collect()
                    },
                    wall_s: done.started.elapsed().as_secs_f64(),
                    log: done.log.clone(),
                },
                Err(e) => {
                    let _ = done.child.kill();
                    let _ = done.child.wait();
                    LocalOutcome::NotRun {
                        reason: format!(
                            "point {} ({}): waiting for its process failed: {e}",
                            job.point_id, job.label
                        ),
                    }
                }
            };
            on_done(job, &outcome);
            outcomes[done.job] = Some(outcome);
        }
        if !finished_any && !running.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(LocalOutcome::NotRun {
                reason: "not scheduled".into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn gpu(uuid: &str) -> GpuFingerprint {
        GpuFingerprint {
            name: "NVIDIA H200".into(),
            uuid: uuid.into(),
            compute_capability: "9.0".into(),
            sm_count: Some(132),
            memory_bytes: 1,
            driver_version: "x".into(),
            cuda_driver_version: "13.0".into(),
            power_limit_w: None,
        }
    }

    #[test]
    fn cuda_visible_devices_restricts_the_gpus() {
        let all = [gpu("GPU-aaaa-1"), gpu("GPU-bbbb-2"), gpu("GPU-cccc-3")];
        let uuids = |v: Option<&str>| -> Vec<String> {
            visible_gpus(&all, v).into_iter().map(|g| g.uuid).collect()
        };
        assert_eq!(uuids(None).len(), 3);
        assert_eq!(uuids(Some("2,0")), vec!["GPU-cccc-3", "GPU-aaaa-1"]);
        assert_eq!(uuids(Some("GPU-bbbb-2")), vec!["GPU-bbbb-2"]);
        assert_eq!(uuids(Some("bbbb")), vec!["GPU-bbbb-2"]);
        assert!(uuids(Some("")).is_empty());
        assert!(uuids(Some("-1")).is_empty());
        assert!(uuids(Some("NoDevFiles")).is_empty());
        // CUDA stops at the first device it cannot resolve.
        assert_eq!(uuids(Some("0,7,1")), vec!["GPU-aaaa-1"]);
    }

    #[test]
    fn the_pool_never_hands_out_a_slot_twice() {
        let mut pool = SlotPool::new(3);
        let a = pool.take(2).unwrap();
        assert_eq!(a, vec![0, 1]);
        assert!(pool.take(2).is_none());
        let b = pool.take(1).unwrap();
        assert_eq!(b, vec![2]);
        assert_eq!(pool.free(), 0);
        pool.give_back(&a);
        assert_eq!(pool.take(2).unwrap(), vec![0, 1]);
    }

    /// Runs fake points that write `start end uuids` lines to a file, then
    /// checks no GPU ever had two points at once and that points overlapped.
    #[test]
    fn points_spread_over_gpus_one_per_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace");
        let jobs: Vec<LocalJob> = (0..6)
            .map(|i| LocalJob {
                point_id: format!("p{i}"),
                label: format!("l{i}"),
                slots: if i == 2 { 2 } else { 1 },
            })
            .collect();
        let slots = vec!["GPU-a".to_string(), "GPU-b".to_string()];
        let started_at = Instant::now();
        let trace_for_spawn = trace.clone();
        let mut spawn = move |job: &LocalJob, uuids: &[String]| {
            let script = format!(
                "s=$(date +%s.%N); sleep 0.3; e=$(date +%s.%N); echo \"$s $e $CUDA_VISIBLE_DEVICES {}\" >> {}",
                job.point_id,
                trace_for_spawn.display()
            );
            let child = Command::new("sh")
                .arg("-c")
                .arg(script)
                .env("CUDA_VISIBLE_DEVICES", uuids.join(","))
                .spawn()?;
            Ok((child, None))
        };
        let mut seen = Vec::new();
        let outcomes = run_jobs(&jobs, &slots, &mut spawn, &mut |job, _| {
            seen.push(job.point_id.clone())
        });
        let wall = started_at.elapsed().as_secs_f64();
        assert_eq!(seen.len(), 6);
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, LocalOutcome::Exited { status, .. } if status.success())));
        let text = std::fs::read_to_string(&trace).unwrap();
        let rows: Vec<(f64, f64, Vec<String>)> = text
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].split(',').map(String::from).collect(),
                )
            })
            .collect();
        assert_eq!(rows.len(), 6);
        for (i, a) in rows.iter().enumerate() {
            for b in &rows[i + 1..] {
                let share = a.2.iter().any(|g| b.2.contains(g));
                let overlap = a.0 < b.1 && b.0 < a.1;
                assert!(
                    !(share && overlap),
                    "two points on one GPU at once: {a:?} {b:?}"
                );
            }
        }
        // The wide point held both GPUs.
        assert!(rows.iter().any(|r| r.2.len() == 2));
        // 5 single points on 2 GPUs + 1 wide: 4 rounds of 0.3 s, not 6.
        assert!(wall < 6.0 * 0.3 + 0.5, "no parallelism: {wall} s");
    }

    #[test]
    fn a_point_wider_than_the_machine_is_refused_and_the_rest_run() {
        let jobs = vec![
            LocalJob {
                point_id: "wide".into(),
                label: "tp-4".into(),
                slots: 4,
            },
            LocalJob {
                point_id: "ok".into(),
                label: "tp-1".into(),
                slots: 1,
            },
        ];
        let slots = vec!["GPU-a".to_string(), "GPU-b".to_string()];
        let mut spawn = |_: &LocalJob, _: &[String]| Ok((Command::new("true").spawn()?, None));
        let outcomes = run_jobs(&jobs, &slots, &mut spawn, &mut |_, _| {});
        match &outcomes[0] {
            LocalOutcome::NotRun { reason } => {
                assert!(
                    reason.contains("wide") && reason.contains("needs 4 GPUs"),
                    "{reason}"
                );
                assert!(reason.contains("has 2"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(outcomes[1], LocalOutcome::Exited { .. }));
    }

    #[test]
    fn cpu_points_run_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace");
        let jobs: Vec<LocalJob> = (0..3)
            .map(|i| LocalJob {
                point_id: format!("p{i}"),
                label: String::new(),
                slots: 0,
            })
            .collect();
        let t = trace.clone();
        let mut spawn = move |_: &LocalJob, uuids: &[String]| {
            assert!(uuids.is_empty());
            let script = format!(
                "s=$(date +%s.%N); sleep 0.1; e=$(date +%s.%N); echo \"$s $e\" >> {}",
                t.display()
            );
            Ok((Command::new("sh").arg("-c").arg(script).spawn()?, None))
        };
        run_jobs(&jobs, &[], &mut spawn, &mut |_, _| {});
        let text = std::fs::read_to_string(&trace).unwrap();
        let mut rows: Vec<(f64, f64)> = text
            .lines()
            .map(|l| {
                let f: Vec<f64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
                (f[0], f[1])
            })
            .collect();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in rows.windows(2) {
            assert!(w[0].1 <= w[1].0, "CPU points overlapped: {w:?}");
        }
    }
}
