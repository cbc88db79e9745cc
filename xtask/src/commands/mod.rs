//! The command layer: one module per `cargo xtask` command, each turning
//! parsed flags (`crate::cli`) into calls on the layers below and an exit
//! code (0 clean, 1 a regression or failed trial, 2 usage or infrastructure
//! error).

pub mod baseline;
pub mod compare;
pub mod store;

use std::path::Path;

use crate::cli::Command;

/// Runs one parsed command from the workspace at `root`.
pub fn run(command: Command, root: &Path) -> anyhow::Result<i32> {
    match command {
        Command::Bench(args) => crate::bench::run(&args, root),
        Command::Store(cmd) => store::run(cmd, &root.join("results")),
        Command::Compare(args) => compare::run_cli(args, root),
        Command::Baseline(cmd) => baseline::run_cli(cmd, root),
    }
}
