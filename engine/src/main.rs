//! The `engine` binary: `bench`, `generate`, `synth`, `info`, and `serve`
//! (with the cargo feature `serve`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use engine::bench::{self, ArrivalMode};
use engine::engine::Engine;
use engine::engine_config::{DeviceKind, EngineConfig};
#[cfg(feature = "text")]
use engine::tokenizer::{ChatMessage, TextTokenizer};
use engine::weights::Checkpoint;
use workloads::{Request, SamplingParams};

#[derive(Parser)]
#[command(name = "engine", about = "dyno's LLM inference engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl From<DeviceArg> for DeviceKind {
    fn from(d: DeviceArg) -> DeviceKind {
        match d {
            DeviceArg::Auto => DeviceKind::Auto,
            DeviceArg::Cpu => DeviceKind::Cpu,
            DeviceArg::Cuda => DeviceKind::Cuda,
        }
    }
}

/// Flags every model-running subcommand takes.
#[derive(clap::Args)]
struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json + safetensors) or a
    /// GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Engine knobs (engine.toml); defaults when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `device` from the config.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a requests file and write per-request records and a step log.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// requests.jsonl (workloads::Request per line).
        #[arg(long)]
        requests: PathBuf,
        /// records.jsonl to write.
        #[arg(long)]
        out: PathBuf,
        /// Step log (default: the records path with `.steps.jsonl`).
        #[arg(long)]
        step_log: Option<PathBuf>,
        /// Summary JSON (default: the records path with `.summary.json`).
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Closed loop: at most N requests in flight (arrival_s ignored).
        #[arg(long)]
        max_concurrency: Option<usize>,
    },
    /// Generate from text or token ids and print the tokens with their
    /// timings (and the text, when the model has a tokenizer).
    #[command(group(clap::ArgGroup::new("input").required(true).args(["prompt_ids", "prompt"])))]
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Comma-separated prompt token ids, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',')]
        prompt_ids: Vec<u32>,
        /// Prompt text, tokenized with the model's tokenizer (GGUF metadata
        /// or tokenizer.json).
        #[arg(long)]
        prompt: Option<String>,
        /// Send --prompt as a user message through the model's chat template.
        #[arg(long, requires = "prompt")]
        chat: bool,
        /// With --chat: a system message before the user's.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        #[arg(long, default_value_t = 16)]
        max_tokens: u32,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        top_k: u32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        ignore_eos: bool,
    },
    /// Write a synthetic checkpoint of a preset shape with seeded weights.
    Synth {
        #[arg(long)]
        preset: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep only the first N layers (a reduced-depth copy of a large
        /// shape, for checks where a full-depth reference would be slow).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        layers: Option<u32>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print what the pipeline needs to know about a checkpoint (format,
    /// architecture, vocabulary, special tokens) as JSON, reading only its
    /// header: how `cargo xtask bench --model FILE.gguf` learns the vocab.
    Inspect {
        /// A Hugging Face checkpoint directory or a GGUF file.
        #[arg(long)]
        model: PathBuf,
    },
    /// Check an engine.toml without loading a model: exit 0 when it is
    /// valid, else print what is wrong (line and field) and exit 1.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Serve the model over an OpenAI-compatible HTTP API (built with the
    /// cargo feature `serve`).
    #[cfg(feature = "serve")]
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0 picks a free port (the address is printed on stdout).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Require `Authorization: Bearer KEY` on /v1/* (default: the
        /// DYNO_API_KEY environment variable, if set, else no key).
        #[arg(long)]
        api_key: Option<String>,
        /// The model name clients use (default: the model directory's name).
        #[arg(long)]
        served_model_name: Option<String>,
        /// Requests that may wait beyond the running batch before new ones
        /// get 503 with Retry-After.
        #[arg(long, default_value_t = 4096)]
        max_waiting: usize,
        /// Tokio worker threads for HTTP (the engine runs on its own).
        #[arg(long, default_value_t = 2)]
        http_threads: usize,
        /// Microseconds the engine thread and one HTTP worker keep polling
        /// for the next request after the last one left, before they sleep
        /// (0: sleep at once). A request that comes while they poll skips
        /// the operating system's wake-ups (~0.6 ms of TTFT on the H200
        /// machine); the cost is a busy core or two while the server has
        /// work and for that long after. Default: 2000 on a GPU, 0 on the
        /// CPU (its backend needs every core for the steps).
        #[arg(long)]
        idle_spin_us: Option<u64>,
    },
    /// Report backend availability and GPU properties.
    Info {
        /// Print JSON (for the pipeline's fingerprint).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code the pipeline classifies a failure by (a sweep records a
/// rejected config as `invalid-config` and a failed allocation as `oom`).
fn exit_code(e: &anyhow::Error) -> u8 {
    use engine::backend::BackendError;
    use engine::engine::EngineError;
    use engine::engine_config::EngineConfigError;
    use workloads::engine_knobs::{EXIT_INVALID_CONFIG, EXIT_OUT_OF_MEMORY};
    let oom = |b: &BackendError| match b {
        BackendError::OutOfMemory(_) => true,
        BackendError::Cuda(m) => m.contains("OUT_OF_MEMORY") || m.contains("out of memory"),
        _ => false,
    };
    for cause in e.chain() {
        if cause.downcast_ref::<EngineConfigError>().is_some() {
            return EXIT_INVALID_CONFIG as u8;
        }
        match cause.downcast_ref::<EngineError>() {
            Some(EngineError::KvCacheTooSmall(_)) => return EXIT_OUT_OF_MEMORY as u8,
            Some(EngineError::Config(_)) => return EXIT_INVALID_CONFIG as u8,
            Some(EngineError::Backend(b)) if oom(b) => return EXIT_OUT_OF_MEMORY as u8,
            _ => {}
        }
        if cause.downcast_ref::<BackendError>().is_some_and(oom) {
            return EXIT_OUT_OF_MEMORY as u8;
        }
    }
    1
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench {
            model,
            requests,
            out,
            step_log,
            summary,
            max_concurrency,
        } => {
            let step_log = step_log.unwrap_or_else(|| sibling(&out, "steps.jsonl"));
            let summary = summary.unwrap_or_else(|| sibling(&out, "summary.json"));
            run_bench(
                &model,
                &requests,
                &out,
                &step_log,
                &summary,
                max_concurrency,
            )
        }
        Command::Generate {
            model,
            prompt_ids,
            prompt,
            chat,
            system,
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            ignore_eos,
        } => {
            let sampling = SamplingParams {
                temperature,
                top_k,
                top_p,
                seed,
                max_tokens,
                ignore_eos,
                stop_token_ids: Vec::new(),
            };
            if let Some((field, message)) = sampling.problem() {
                bail!("--{} {message}", field.replace('_', "-"));
            }
            let input = match prompt {
                Some(text) => PromptInput::Text { text, chat, system },
                None => PromptInput::Ids(prompt_ids),
            };
            run_generate(&model, input, sampling)
        }
        Command::Synth {
            preset,
            seed,
            layers,
            out,
        } => {
            let mut cfg = engine::synth::preset(&preset)?;
            if let Some(n) = layers {
                cfg.num_hidden_layers = n as usize;
            }
            let written = engine::synth::write_checkpoint(&cfg, seed, &out)
                .with_context(|| format!("synthesizing preset `{preset}`"))?;
            println!(
                "wrote {} ({} parameters, {} bytes)",
                written.dir.display(),
                written.num_parameters,
                written.bytes
            );
            Ok(())
        }
        Command::Inspect { model } => {
            let ckpt = engine::weights::Checkpoint::open(&model)
                .with_context(|| format!("opening {}", model.display()))?;
            let c = &ckpt.config;
            let mut special: Vec<u32> = c.bos_token_id.into_iter().collect();
            special.extend(&c.eos_token_ids);
            special.sort_unstable();
            special.dedup();
            let info = workloads::ModelInfo {
                format: if ckpt.gguf_metadata().is_some() {
                    "gguf"
                } else {
                    "safetensors"
                }
                .to_string(),
                architecture: c.architecture.hf_class().to_string(),
                vocab_size: u32::try_from(c.vocab_size).context("vocab_size above u32")?,
                special_token_ids: special,
                num_hidden_layers: c.num_hidden_layers as u32,
                hidden_size: c.hidden_size as u32,
            };
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::CheckConfig { config } => {
            EngineConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Info { json } => run_info(json),
        #[cfg(feature = "serve")]
        Command::Serve {
            model,
            host,
            port,
            api_key,
            served_model_name,
            max_waiting,
            http_threads,
            idle_spin_us,
        } => {
            let cfg = load_config(&model)?;
            let name = served_model_name.unwrap_or_else(|| {
                model
                    .model
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| model.model.display().to_string())
            });
            let api_key = api_key.or_else(|| std::env::var("DYNO_API_KEY").ok());
            let label = name.clone();
            // The engine is built on its own thread (backends stay on the
            // thread that made them).
            // The model's tokenizer (with the `text` feature): string
            // prompts and decoded text; token ids always work.
            let codec = serve_codec(&model.model)?;
            let make_engine = move || {
                let (engine, _) = build_engine(&model, &cfg).map_err(|e| format!("{e:#}"))?;
                let info = engine.backend().info();
                eprintln!(
                    "engine serve: {label} on {} ({}, {}), {} KV blocks of {} tokens, max_model_len {}, max_num_seqs {}",
                    info.kind,
                    info.device_name,
                    info.dtype,
                    engine.num_kv_blocks(),
                    engine.block_size(),
                    engine.max_model_len(),
                    engine.max_num_seqs()
                );
                Ok(engine)
            };
            let opts = engine::serve::ServeOptions {
                host,
                port,
                api_key,
                served_model_name: name,
                max_waiting,
                http_threads,
                idle_spin: idle_spin_us.map(std::time::Duration::from_micros),
                codec,
            };
            engine::serve::run(make_engine, opts).context("engine serve")
        }
    }
}

/// The served model's tokenizer as `engine serve`'s text codec, when the
/// checkpoint carries one (a GGUF's metadata, a directory's tokenizer.json).
#[cfg(all(feature = "serve", feature = "text"))]
fn serve_codec(
    model: &Path,
) -> anyhow::Result<Option<std::sync::Arc<dyn engine::serve::text::TextCodec>>> {
    let checkpoint =
        Checkpoint::open(model).with_context(|| format!("opening model {}", model.display()))?;
    match TextTokenizer::from_checkpoint(&checkpoint) {
        Ok(tokenizer) => {
            eprintln!("engine serve: the model's tokenizer is loaded: text prompts are accepted");
            Ok(Some(std::sync::Arc::new(ServeCodec(tokenizer))))
        }
        Err(engine::tokenizer::TokenizerError::Missing { reason, .. }) => {
            eprintln!("engine serve: no tokenizer ({reason}): prompts must be token ids");
            Ok(None)
        }
        Err(e) => Err(e).context("loading the model's tokenizer"),
    }
}

/// Without the `text` feature: prompts are token ids.
#[cfg(all(feature = "serve", not(feature = "text")))]
fn serve_codec(
    _model: &Path,
) -> anyhow::Result<Option<std::sync::Arc<dyn engine::serve::text::TextCodec>>> {
    Ok(None)
}

#[cfg(all(feature = "serve", feature = "text"))]
struct ServeCodec(TextTokenizer);

#[cfg(all(feature = "serve", feature = "text"))]
impl engine::serve::text::TextCodec for ServeCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.0.encode(text).map_err(|e| e.to_string())
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids, true).unwrap_or_default()
    }

    fn apply_chat_template(&self, messages: &serde_json::Value) -> Result<String, String> {
        let list = messages
            .as_array()
            .ok_or("`messages` must be a list of {role, content}")?;
        let messages = list
            .iter()
            .map(|m| {
                let role = m["role"].as_str().ok_or("a message without a `role`")?;
                let content = m["content"]
                    .as_str()
                    .ok_or("a message whose `content` is not a string")?;
                Ok(ChatMessage::new(role, content))
            })
            .collect::<Result<Vec<_>, &str>>()?;
        self.0
            .apply_chat_template(&messages)
            .map_err(|e| e.to_string())
    }
}

/// `records.jsonl` → `records.<suffix>` next to it.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "records".into());
    out.with_file_name(format!("{stem}.{suffix}"))
}

fn load_config(args: &ModelArgs) -> anyhow::Result<EngineConfig> {
    let mut cfg = match &args.config {
        Some(path) => EngineConfig::load(path)?,
        None => EngineConfig::default(),
    };
    if let Some(device) = args.device {
        cfg.device = device.into();
    }
    Ok(cfg)
}

fn build_engine(args: &ModelArgs, cfg: &EngineConfig) -> anyhow::Result<(Engine, Checkpoint)> {
    let checkpoint = Checkpoint::open(&args.model)
        .with_context(|| format!("opening model {}", args.model.display()))?;
    let backend =
        engine::backend::create(cfg.device, &checkpoint, cfg).context("creating the backend")?;
    let engine = Engine::new(backend, &checkpoint.config, cfg).context("starting the engine")?;
    Ok((engine, checkpoint))
}

fn run_bench(
    model: &ModelArgs,
    requests_path: &Path,
    out: &Path,
    step_log: &Path,
    summary_path: &Path,
    max_concurrency: Option<usize>,
) -> anyhow::Result<()> {
    // Read and check the requests before anything slow or anything written.
    let requests: Vec<Request> = workloads::jsonl::read(requests_path)?;
    bench::validate_requests(&requests).with_context(|| format!("{}", requests_path.display()))?;
    let mode = match max_concurrency {
        Some(n) => ArrivalMode::ClosedLoop { max_concurrency: n },
        None => ArrivalMode::OpenLoop,
    };
    if max_concurrency == Some(0) {
        bail!("--max-concurrency must be at least 1");
    }
    let cfg = load_config(model)?;
    let (mut engine, checkpoint) = build_engine(model, &cfg)?;
    let result = bench::run(&mut engine, requests, mode).context("running the benchmark")?;

    // The config as it ran: a derived max_num_seqs (0 in the file) as its value.
    let mut config_json = serde_json::to_value(&cfg).context("serializing the engine config")?;
    config_json["max_num_seqs"] = serde_json::json!(engine.max_num_seqs());
    let summary = bench::summarize(&engine, &result, config_json, checkpoint.content_hash());
    workloads::jsonl::write_atomic(out, &result.records)?;
    workloads::jsonl::write_atomic(step_log, &result.steps)?;
    let summary_json =
        serde_json::to_vec_pretty(&summary).context("serializing the bench summary")?;
    workloads::jsonl::write_bytes_atomic(summary_path, &summary_json)
        .with_context(|| format!("writing {}", summary_path.display()))?;
    eprintln!(
        "{} records ({} rejected, {} stopped by non-finite logits), {} output tokens in {:.3} s over {} steps → {}",
        summary.num_requests,
        summary.num_rejected,
        summary.num_nonfinite,
        summary.output_tokens,
        summary.measured_duration_s,
        summary.num_steps,
        out.display()
    );
    if summary.prefix_cache_queries > 0 {
        eprintln!(
            "prefix cache: {} of {} looked-up tokens found ({:.1} %)",
            summary.prefix_cache_hits,
            summary.prefix_cache_queries,
            100.0 * summary.prefix_cache_hits as f64 / summary.prefix_cache_queries as f64
        );
    }
    Ok(())
}

enum PromptInput {
    Ids(Vec<u32>),
    Text {
        text: String,
        chat: bool,
        system: Option<String>,
    },
}

fn run_generate(
    model: &ModelArgs,
    input: PromptInput,
    sampling: SamplingParams,
) -> anyhow::Result<()> {
    let cfg = load_config(model)?;
    let text_out = TextOut::new(model, &input)?;
    let prompt_ids = match input {
        PromptInput::Ids(ids) => ids,
        PromptInput::Text { text, chat, system } => text_out.encode(text, chat, system)?,
    };
    let (mut engine, _) = build_engine(model, &cfg)?;
    let info = engine.backend().info();
    println!(
        "backend: {} ({}, {}); prompt: {} tokens",
        info.kind,
        info.device_name,
        info.dtype,
        prompt_ids.len()
    );
    // The ids, so that a tokenized prompt can go into a requests file.
    let ids: Vec<String> = prompt_ids.iter().map(u32::to_string).collect();
    println!("prompt_ids: {}", ids.join(","));
    engine.set_clock_origin(std::time::Instant::now());
    engine.add_request(Request {
        id: 0,
        arrival_s: 0.0,
        warmup: false,
        prompt_token_ids: prompt_ids,
        sampling,
    });
    let mut record = None;
    while engine.has_unfinished() {
        let outcome = engine.step().context("engine step")?;
        for t in &outcome.tokens {
            println!("token {:>6}  at {:>10.3} ms", t.token, t.time_s * 1e3);
        }
        record = outcome.finished.into_iter().next().or(record);
    }
    let record = record.context("the engine finished without a record")?;
    match &record.status {
        workloads::RecordStatus::Ok => {}
        workloads::RecordStatus::Rejected { reason } => bail!("request rejected: {reason}"),
        workloads::RecordStatus::NonfiniteLogits => bail!(
            "the model produced non-finite logits (NaN or infinity) after {} tokens; \
             its outputs cannot be trusted",
            record.output_len
        ),
    }
    let ids: Vec<String> = record.output_token_ids.iter().map(u32::to_string).collect();
    println!("output_ids: {}", ids.join(","));
    if let Some(text) = text_out.decode(&record.output_token_ids)? {
        println!("text: {text}");
    }
    let times = &record.token_times_s;
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        print!("ttft: {:.3} ms", first * 1e3);
        if times.len() > 1 {
            let tpot = (last - first) / (times.len() - 1) as f64;
            print!(
                ", tpot: {:.3} ms, decode: {:.1} tok/s",
                tpot * 1e3,
                1.0 / tpot
            );
        }
        println!(", finish: {:?}", record.finish_reason);
    }
    Ok(())
}

/// The model's tokenizer for `generate` (built with the `text` feature):
/// required for `--prompt`, used to print the output's text when present.
#[cfg(feature = "text")]
struct TextOut(Result<TextTokenizer, engine::tokenizer::TokenizerError>);

#[cfg(feature = "text")]
impl TextOut {
    fn new(model: &ModelArgs, _input: &PromptInput) -> anyhow::Result<TextOut> {
        let checkpoint = Checkpoint::open(&model.model)
            .with_context(|| format!("opening model {}", model.model.display()))?;
        Ok(TextOut(TextTokenizer::from_checkpoint(&checkpoint)))
    }

    fn encode(&self, text: String, chat: bool, system: Option<String>) -> anyhow::Result<Vec<u32>> {
        let tokenizer = self
            .0
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("--prompt needs the model's tokenizer")?;
        let text = if chat {
            let mut messages = Vec::new();
            if let Some(system) = system {
                messages.push(ChatMessage::new("system", &system));
            }
            messages.push(ChatMessage::new("user", &text));
            tokenizer.apply_chat_template(&messages)?
        } else {
            text
        };
        Ok(tokenizer.encode(&text)?)
    }

    fn decode(&self, ids: &[u32]) -> anyhow::Result<Option<String>> {
        match &self.0 {
            Ok(tokenizer) => Ok(Some(tokenizer.decode(ids, true)?)),
            Err(_) => Ok(None),
        }
    }
}

/// Without the `text` feature: token ids only, and a clear error for text.
#[cfg(not(feature = "text"))]
struct TextOut;

#[cfg(not(feature = "text"))]
impl TextOut {
    fn new(_model: &ModelArgs, input: &PromptInput) -> anyhow::Result<TextOut> {
        if matches!(input, PromptInput::Text { .. }) {
            bail!(
                "--prompt needs a tokenizer, and this engine was built without the `text` \
                 feature: rebuild with `cargo build --release -p engine --features text`, \
                 or pass --prompt-ids"
            );
        }
        Ok(TextOut)
    }

    fn encode(
        &self,
        _text: String,
        _chat: bool,
        _system: Option<String>,
    ) -> anyhow::Result<Vec<u32>> {
        bail!("built without the `text` feature")
    }

    fn decode(&self, _ids: &[u32]) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
}

fn run_info(json: bool) -> anyhow::Result<()> {
    let cuda_available = engine::backend::cuda::is_available();
    let (gpus, gpu_error) = match engine::backend::cuda::device_properties() {
        Ok(gpus) => (gpus, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let mut backends = vec!["cpu".to_string()];
    if cuda_available {
        backends.push("cuda".to_string());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if json {
        let info = workloads::EngineInfo {
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
            backends,
            cuda_available,
            cpu_threads: cpus,
            gpus,
            gpu_error,
        };
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("engine {}", env!("CARGO_PKG_VERSION"));
        println!("backends: {}", backends.join(", "));
        println!("cpu threads: {cpus}");
        for g in &gpus {
            println!(
                "gpu {}: {} (sm {}.{}, {} SMs, {} MiB)",
                g.ordinal,
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                g.sm_count,
                g.total_memory_bytes >> 20
            );
        }
        if let Some(e) = gpu_error {
            println!("gpu: {e}");
        }
    }
    Ok(())
}
