//! Launchers: where a sweep's points run. `local` spreads them over this
//! machine's GPUs (one point per GPU at a time); `slurm` submits one batch
//! job per point to a SLURM cluster. Neither decides what a point measures:
//! every job runs `xtask sweep FILE --point ID`, the same code path as a
//! point run in-process. The flags live in `crate::cli`, the command glue
//! in `crate::commands::sweep_launch`.

pub mod gpu_breakdown;
pub mod local;
pub mod parallel;
pub mod slurm;
pub mod slurm_script;
pub mod slurm_state;

/// GPUs a point holds: `--gpus-per-point` / `[slurm] gpus_per_point`, else
/// the point's `tensor_parallel_size` knob where it has one, else 1 on
/// cuda and none on cpu.
pub fn gpus_for(device: &str, configured: Option<u32>, engine: &toml::Table) -> u32 {
    if device != "cuda" {
        return 0;
    }
    configured
        .or_else(|| {
            engine
                .get("tensor_parallel_size")
                .and_then(toml::Value::as_integer)
                .and_then(|n| u32::try_from(n).ok())
        })
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_per_point() {
        let none = toml::Table::new();
        assert_eq!(gpus_for("cpu", Some(4), &none), 0);
        assert_eq!(gpus_for("cuda", None, &none), 1);
        assert_eq!(gpus_for("cuda", Some(2), &none), 2);
        let mut tp = toml::Table::new();
        tp.insert("tensor_parallel_size".into(), toml::Value::Integer(4));
        assert_eq!(gpus_for("cuda", None, &tp), 4);
        assert_eq!(gpus_for("cuda", Some(1), &tp), 1);
    }
}
