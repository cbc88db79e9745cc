//! `cargo xtask`: a thin entry point; the work lives in the library.

use clap::Parser;
use xtask::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let root = xtask::repo_root();
    let result = xtask::commands::run(cli.command, &root);
    match result {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        // 1 is reserved for "a regression was found"; every error (bad
        // input, a failed build, a broken store) is a usage or
        // infrastructure error: 2, like clap's own usage errors.
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
