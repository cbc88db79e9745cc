//! The command layer: one module per `cargo xtask` command, each turning
//! parsed flags (`crate::cli`) into calls on the layers below and an exit
//! code (0 clean, 1 a regression or failed trial, 2 usage or infrastructure
//! error).

pub mod baseline;
pub mod compare;
pub mod history;
pub mod store;
pub mod sweep;
pub mod sweep_launch;

use std::path::Path;

use crate::cli::Command;

/// Runs one parsed command from the workspace at `root`.
pub fn run(command: Command, root: &Path) -> anyhow::Result<i32> {
    match command {
        Command::Bench(args) => crate::bench::run(&args, root),
        Command::Store(args) => store::run_cli(args, root),
        Command::Compare(args) => compare::run_cli(args, root),
        Command::Baseline(cmd) => baseline::run_cli(cmd, root),
        Command::History(args) => history::run_cli(args, root),
        Command::Sweep(args) => sweep::run_cli(&args, root),
    }
}
