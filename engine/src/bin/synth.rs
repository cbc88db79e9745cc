//! Temporary stand-in for `engine synth` until the CLI owner wires that
//! subcommand to `engine::synth::write_preset`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Write a synthetic HF checkpoint (config.json + model.safetensors)")]
struct Args {
    /// One of engine::synth::preset_names().
    #[arg(long)]
    preset: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let summary = engine::synth::write_preset(&args.preset, args.seed, &args.out)
        .with_context(|| format!("synth --preset {}", args.preset))?;
    println!(
        "{}: {} parameters, {} bytes in {:.2} s",
        summary.dir.display(),
        summary.num_parameters,
        summary.bytes,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
