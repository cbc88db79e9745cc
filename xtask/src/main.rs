use std::path::PathBuf;

use clap::{Parser, Subcommand};
use xtask::store;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Look at, check and move what is in the results store.
    #[command(subcommand)]
    Store(store::cli::StoreCmd),
}

/// The workspace root: xtask lives one level below it.
fn project_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Store(cmd) => store::cli::run(cmd, &project_root().join("results"))?,
    };
    std::process::exit(code);
}
