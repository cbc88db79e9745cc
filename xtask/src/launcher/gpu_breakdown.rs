//! Which GPU ran which points: from each point's run fingerprint (the GPU
//! the engine ran on, by UUID), per GPU the points, their outcomes and the
//! time it was busy. Printed after a sweep that used more than one GPU, and
//! written as `gpus.csv` beside the other reports.

use std::collections::BTreeMap;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};

use crate::run_record::RunRecord;
use crate::store::Store;
use crate::sweep::SweepOutcome;

/// One GPU's share of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuRow {
    pub uuid: String,
    pub name: String,
    pub points: usize,
    pub done: usize,
    pub failed: usize,
    /// Sum of the points' wall times, seconds.
    pub busy_s: f64,
}

/// Per GPU, the sweep's points that have a stored run (sorted by UUID).
/// Points without a run (failed before storing anything) are not counted.
pub fn rows(outcome: &SweepOutcome, store: &Store) -> anyhow::Result<Vec<GpuRow>> {
    let mut by_gpu: BTreeMap<String, GpuRow> = BTreeMap::new();
    for p in &outcome.points {
        let Some(run_id) = &p.record.run_id else {
            continue;
        };
        let run: RunRecord = store.get(run_id)?;
        let (uuid, name) = match run.fingerprint.gpus.as_slice() {
            [] => ("cpu".to_string(), run.fingerprint.host.cpu_model.clone()),
            gpus => (
                gpus.iter()
                    .map(|g| g.uuid.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                gpus[0].name.clone(),
            ),
        };
        let row = by_gpu.entry(uuid.clone()).or_insert(GpuRow {
            uuid,
            name,
            points: 0,
            done: 0,
            failed: 0,
            busy_s: 0.0,
        });
        row.points += 1;
        if p.record.is_done() {
            row.done += 1;
        } else {
            row.failed += 1;
        }
        row.busy_s += p.record.wall_s;
    }
    Ok(by_gpu.into_values().collect())
}

pub fn csv(rows: &[GpuRow]) -> String {
    let mut out = String::from("gpu_uuid,gpu_name,points,done,failed,busy_s\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{:.3}\n",
            r.uuid,
            r.name.replace(',', " "),
            r.points,
            r.done,
            r.failed,
            r.busy_s
        ));
    }
    out
}

/// Prints the breakdown when the sweep's points ran on more than one GPU.
pub fn print(rows: &[GpuRow]) {
    if rows.len() < 2 {
        return;
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(vec!["GPU", "name", "points", "done", "failed", "busy"]);
    for r in rows {
        let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
        table.add_row(vec![
            Cell::new(&r.uuid),
            Cell::new(&r.name),
            right(r.points.to_string()),
            right(r.done.to_string()),
            right(r.failed.to_string()),
            right(format!("{:.1} s", r.busy_s)),
        ]);
    }
    println!("\npoints per GPU (from each run's fingerprint):\n{table}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_one_line_per_gpu() {
        let rows = vec![
            GpuRow {
                uuid: "GPU-a".into(),
                name: "NVIDIA H200".into(),
                points: 2,
                done: 2,
                failed: 0,
                busy_s: 10.0,
            },
            GpuRow {
                uuid: "GPU-b".into(),
                name: "NVIDIA H200".into(),
                points: 2,
                done: 1,
                failed: 1,
                busy_s: 12.5,
            },
        ];
        let text = csv(&rows);
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("GPU-b,NVIDIA H200,2,1,1,12.500"));
    }
}
