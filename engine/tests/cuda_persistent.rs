//! GPU tests of the small-batch path's alternative kernels, each against
//! the kernels it replaces, bit for bit: the persistent decode kernel
//! (`decode_layers`, `DYNO_CUDA_PERSISTENT`) against five kernels per
//! layer, and the QKV kernel that applies Qwen3's q/k norms
//! (`DYNO_CUDA_QK_NORM_FUSED`) against `norm_qkv` + `qkv_rope_cache`.
//! Needs an NVIDIA GPU, so `#[ignore]`d; `engine/scripts/gpu_tests.sh`
//! runs it, or `cargo test --release -p engine --test cuda_persistent --
//! --ignored`.
//!
//! The tests set a variable around each backend's construction (where the
//! backend reads it); `ENV` keeps them from racing.

mod cuda_support;

use cuda_support::*;
use engine::backend::cuda::CudaBackend;
use engine::backend::{Backend, SeqStep};
use engine::config::{Architecture, ModelConfig};
use engine::engine_config::EngineConfig;

fn engine_config(eager: bool) -> EngineConfig {
    EngineConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 256,
        max_model_len: 512,
        enforce_eager: eager,
        ..Default::default()
    }
}

static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A backend built with `var=value` set.
fn backend_with(c: &ModelConfig, t: &Tensors, eager: bool, var: &str, value: &str) -> CudaBackend {
    let guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var(var, value);
    let b = CudaBackend::with_loader(c, &engine_config(eager), &loader(t));
    std::env::remove_var(var);
    drop(guard);
    let mut b = b.unwrap_or_else(|e| panic!("backend with {var}={value}: {e}"));
    b.allocate_kv_cache(128, 16).unwrap();
    b
}

/// `arch`'s tiny config reshaped: hidden size, head dim, q / kv heads,
/// intermediate size, layers.
fn shaped(arch: Architecture, shape: [usize; 6]) -> ModelConfig {
    let [hidden, head_dim, nq, nkv, inter, layers] = shape;
    ModelConfig {
        hidden_size: hidden,
        head_dim,
        num_attention_heads: nq,
        num_key_value_heads: nkv,
        intermediate_size: inter,
        num_hidden_layers: layers,
        ..tiny_config(arch)
    }
}

/// Runs `c` (weights seeded with `seed`) through a backend with `var=0`
/// and one with `var=1`, eager and with graphs, and asserts that their
/// logits and greedy tokens agree bit for bit. Returns the launches per
/// eager decode step with `0` and with `1`.
fn compare(name: &str, c: &ModelConfig, seed: u64, var: &str, labels: [&str; 2]) -> (u64, u64) {
    let t = random_tensors(c, seed);
    let mut eager_launches = (0, 0);
    for eager in [true, false] {
        let tag = format!("{name} eager={eager}");
        let off = run(
            &mut backend_with(c, &t, eager, var, "0"),
            c.vocab_size as u32,
        );
        let on = run(
            &mut backend_with(c, &t, eager, var, "1"),
            c.vocab_size as u32,
        );
        for (i, (x, y)) in off.logits.iter().zip(&on.logits).enumerate() {
            let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{tag}: logits of one-token step {i} differ");
        }
        assert_eq!(off.tokens, on.tokens, "{tag}: greedy tokens differ");
        println!(
            "{tag}: {} logit rows and {} greedy sequences identical; launches per decode \
             step {:?} ({}) -> {:?} ({})",
            off.logits.len(),
            off.tokens.len(),
            off.launches,
            labels[0],
            on.launches,
            labels[1]
        );
        if eager {
            eager_launches = (off.launches.unwrap(), on.launches.unwrap());
        }
    }
    eager_launches
}

/// What a backend computes: the logits of one-token steps at a long
/// context (several attention splits, the last block merging), and 24
/// greedy decode steps of batches of 1, 3 and 8 sequences, with the
/// launches of a decode step.
struct Outputs {
    logits: Vec<Vec<f32>>,
    tokens: Vec<Vec<u32>>,
    launches: Option<u64>,
}

fn run(b: &mut CudaBackend, vocab: u32) -> Outputs {
    let long: Vec<u32> = (0..300).map(|i| (i * 7919 + 7) % vocab).collect();
    let bt_long = blocks_for(5, 20); // blocks 100..120, past the decode batches'
    b.forward_logits(&[step(50, &long[..200], 0, &bt_long, false)])
        .unwrap();
    b.forward_logits(&[step(50, &long[200..290], 200, &bt_long, false)])
        .unwrap();
    let mut logits = Vec::new();
    for p in 290..300 {
        logits.extend(
            b.forward_logits(&[step(50, &long[p..p + 1], p, &bt_long, false)])
                .unwrap(),
        );
    }
    let mut tokens = Vec::new();
    for (first, n) in [(0usize, 1usize), (1, 3), (0, 8)] {
        let bts: Vec<Vec<u32>> = (0..n).map(|i| blocks_for(first + i, 4)).collect();
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|s| {
                (0..20 + s)
                    .map(|i| ((i + 31 * s) as u32 * 6151 + 11) % vocab)
                    .collect()
            })
            .collect();
        let batch: Vec<SeqStep> = (0..n)
            .map(|s| step((first + s) as u64, &prompts[s], 0, &bts[s], true))
            .collect();
        let start = b.forward(&batch).unwrap();
        let mut seqs: Vec<Vec<u32>> = prompts
            .iter()
            .zip(start)
            .map(|(p, f)| [p.clone(), vec![f]].concat())
            .collect();
        for _ in 0..24 {
            let lasts: Vec<[u32; 1]> = seqs.iter().map(|s| [*s.last().unwrap()]).collect();
            let batch: Vec<SeqStep> = (0..n)
                .map(|s| {
                    let at = seqs[s].len() - 1;
                    step((first + s) as u64, &lasts[s], at, &bts[s], true)
                })
                .collect();
            let next = b.forward(&batch).unwrap();
            for (s, t) in seqs.iter_mut().zip(next) {
                s.push(t);
            }
        }
        tokens.extend(seqs);
    }
    Outputs {
        logits,
        tokens,
        launches: b.launches_per_decode_step(),
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn persistent_decode_matches_the_five_kernels_bit_for_bit() {
    let geometries = [
        ("llama", tiny_config(Architecture::Llama)),
        ("qwen2 (QKV bias)", tiny_config(Architecture::Qwen2)),
        // smollm2-135m's attention shape: head dim 64, 9 query heads on 3
        // KV heads (the tensor-core loop), hidden 576.
        (
            "head dim 64, 9 q / 3 kv heads",
            shaped(Architecture::Llama, [576, 64, 9, 3, 1536, 4]),
        ),
    ];
    for (name, c) in &geometries {
        let labels = ["five kernels per layer", "decode_layers"];
        let (five, one) = compare(name, c, 11, "DYNO_CUDA_PERSISTENT", labels);
        assert!(
            one + 4 * c.num_hidden_layers as u64 <= five,
            "{name}: {five} -> {one} launches"
        );
    }
    // Asked for where it cannot run (q/k norms): an error naming why.
    let c = tiny_config(Architecture::Qwen3);
    let t = random_tensors(&c, 11);
    let guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("DYNO_CUDA_PERSISTENT", "1");
    let e = CudaBackend::with_loader(&c, &engine_config(true), &loader(&t));
    std::env::remove_var("DYNO_CUDA_PERSISTENT");
    drop(guard);
    let e = e
        .err()
        .expect("qwen3 with DYNO_CUDA_PERSISTENT=1 must be refused")
        .to_string();
    assert!(
        e.contains("DYNO_CUDA_PERSISTENT=1") && e.contains("q/k norm"),
        "{e}"
    );
    println!("qwen3 refused: {e}");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn qk_norms_in_the_qkv_kernel_match_the_two_kernels_bit_for_bit() {
    let geometries = [
        // Tiny Qwen3: head dim 128 (16 blocks per head), 4 q / 1 kv heads.
        ("qwen3", tiny_config(Architecture::Qwen3)),
        // qwen3-0.6b's head shape.
        (
            "head dim 128, 16 q / 8 kv heads",
            shaped(Architecture::Qwen3, [1024, 128, 16, 8, 3072, 3]),
        ),
        // 8 blocks per head.
        (
            "head dim 64, 8 q / 2 kv heads",
            shaped(Architecture::Qwen3, [256, 64, 8, 2, 512, 2]),
        ),
    ];
    for (name, c) in &geometries {
        let labels = ["norm_qkv + qkv_rope_cache", "one QKV kernel"];
        let (two, one) = compare(name, c, 13, "DYNO_CUDA_QK_NORM_FUSED", labels);
        assert_eq!(
            one + c.num_hidden_layers as u64,
            two,
            "{name}: {two} -> {one} launches"
        );
    }
}
