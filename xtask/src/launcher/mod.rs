//! Launchers: where a sweep's points run. `local` spreads them over this
//! machine's GPUs (one point per GPU at a time); `slurm` submits one batch
//! job per point to a SLURM cluster. Neither decides what a point measures:
//! every job runs `xtask sweep FILE --point ID`, the same code path as a
//! point run in-process.

pub mod local;
pub mod slurm;
pub mod slurm_script;
pub mod slurm_state;
