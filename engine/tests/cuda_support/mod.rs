//! Shared helpers for the GPU tests: random and on-disk (safetensors) models,
//! and a plain f32 CPU reference forward pass to compare against.
#![allow(dead_code)]

use std::collections::HashMap;

use engine::backend::{BackendError, SeqStep};
use engine::config::{Architecture, DType, ModelConfig};
use half::bf16;
use rand::{Rng, SeedableRng};

pub type Tensors = HashMap<String, Vec<bf16>>;

pub fn tiny_config(arch: Architecture) -> ModelConfig {
    let (heads, kv, hd) = match arch {
        Architecture::Llama => (4, 2, 64),
        Architecture::Qwen2 => (6, 1, 64),
        Architecture::Qwen3 => (4, 1, 128),
    };
    ModelConfig {
        architecture: arch,
        vocab_size: 1000,
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hd,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 512,
        tie_word_embeddings: arch != Architecture::Llama,
        attention_bias: arch == Architecture::Qwen2,
        qk_norm: arch == Architecture::Qwen3,
        bos_token_id: None,
        eos_token_ids: vec![],
        torch_dtype: DType::BF16,
        initializer_range: 0.02,
    }
}

/// Every tensor the config names, with seeded random values (norm weights
/// around 1, biases and matrices small), rounded to bf16.
pub fn random_tensors(c: &ModelConfig, seed: u64) -> Tensors {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut t = Tensors::new();
    let mut put = |name: String, n: usize, center: f32, scale: f32| {
        let v = (0..n)
            .map(|_| bf16::from_f32(center + scale * (rng.random::<f32>() * 2.0 - 1.0)))
            .collect();
        t.insert(name, v);
    };
    let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (nq, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    let s = 0.06;
    put(
        "model.embed_tokens.weight".into(),
        c.vocab_size * h,
        0.0,
        1.0,
    );
    if !c.tie_word_embeddings {
        put("lm_head.weight".into(), c.vocab_size * h, 0.0, s);
    }
    put("model.norm.weight".into(), h, 1.0, 0.2);
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), h, 1.0, 0.2);
        put(format!("{p}.post_attention_layernorm.weight"), h, 1.0, 0.2);
        put(format!("{p}.self_attn.q_proj.weight"), nq * hd * h, 0.0, s);
        put(format!("{p}.self_attn.k_proj.weight"), nkv * hd * h, 0.0, s);
        put(format!("{p}.self_attn.v_proj.weight"), nkv * hd * h, 0.0, s);
        put(format!("{p}.self_attn.o_proj.weight"), h * nq * hd, 0.0, s);
        if c.attention_bias {
            put(format!("{p}.self_attn.q_proj.bias"), nq * hd, 0.0, 0.5);
            put(format!("{p}.self_attn.k_proj.bias"), nkv * hd, 0.0, 0.5);
            put(format!("{p}.self_attn.v_proj.bias"), nkv * hd, 0.0, 0.5);
        }
        if c.qk_norm {
            put(format!("{p}.self_attn.q_norm.weight"), hd, 1.0, 0.2);
            put(format!("{p}.self_attn.k_norm.weight"), hd, 1.0, 0.2);
        }
        put(format!("{p}.mlp.gate_proj.weight"), i * h, 0.0, s);
        put(format!("{p}.mlp.up_proj.weight"), i * h, 0.0, s);
        put(format!("{p}.mlp.down_proj.weight"), h * i, 0.0, s);
    }
    t
}

pub fn loader(t: &Tensors) -> impl Fn(&str) -> Result<Vec<bf16>, BackendError> + '_ {
    move |name| {
        t.get(name)
            .cloned()
            .ok_or_else(|| BackendError::Cuda(format!("test model has no tensor {name}")))
    }
}

fn f32s(t: &Tensors, name: &str) -> Vec<f32> {
    t[name].iter().map(|v| v.to_f32()).collect()
}

/// y[n] = Σ_k x[k] w[n, k]
fn matvec(w: &[f32], x: &[f32], n: usize) -> Vec<f32> {
    let k = x.len();
    (0..n)
        .map(|r| {
            w[r * k..(r + 1) * k]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect()
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps as f32).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

fn rope(x: &mut [f32], pos: usize, theta: f64) {
    let d = x.len();
    for j in 0..d / 2 {
        let f = theta.powf(-(2.0 * j as f64) / d as f64);
        let (s, c) = ((pos as f64) * f).sin_cos();
        let (a, b) = (x[j], x[j + d / 2]);
        x[j] = a * c as f32 - b * s as f32;
        x[j + d / 2] = b * c as f32 + a * s as f32;
    }
}

/// Logits at every position of `tokens` (one sequence from position 0), f32.
pub fn reference_logits(c: &ModelConfig, t: &Tensors, tokens: &[u32]) -> Vec<Vec<f32>> {
    let (h, hd) = (c.hidden_size, c.head_dim);
    let (nq, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    let emb = f32s(t, "model.embed_tokens.weight");
    let mut xs: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&tok| emb[tok as usize * h..(tok as usize + 1) * h].to_vec())
        .collect();
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let g = |n: &str| f32s(t, &format!("{p}.{n}"));
        let (wq, wk, wv, wo) = (
            g("self_attn.q_proj.weight"),
            g("self_attn.k_proj.weight"),
            g("self_attn.v_proj.weight"),
            g("self_attn.o_proj.weight"),
        );
        let ln1 = g("input_layernorm.weight");
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut qs = Vec::new();
        for (pos, x) in xs.iter().enumerate() {
            let hn = rmsnorm(x, &ln1, c.rms_norm_eps);
            let mut q = matvec(&wq, &hn, nq * hd);
            let mut k = matvec(&wk, &hn, nkv * hd);
            let mut v = matvec(&wv, &hn, nkv * hd);
            if c.attention_bias {
                for (a, b) in q.iter_mut().zip(g("self_attn.q_proj.bias")) {
                    *a += b;
                }
                for (a, b) in k.iter_mut().zip(g("self_attn.k_proj.bias")) {
                    *a += b;
                }
                for (a, b) in v.iter_mut().zip(g("self_attn.v_proj.bias")) {
                    *a += b;
                }
            }
            for (heads, vec, norm) in [(nq, &mut q, "q_norm"), (nkv, &mut k, "k_norm")] {
                for hh in 0..heads {
                    let head = &mut vec[hh * hd..(hh + 1) * hd];
                    if c.qk_norm {
                        let n = rmsnorm(
                            head,
                            &g(&format!("self_attn.{norm}.weight")),
                            c.rms_norm_eps,
                        );
                        head.copy_from_slice(&n);
                    }
                    rope(head, pos, c.rope_theta);
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        let (wg, wu, wd) = (
            g("mlp.gate_proj.weight"),
            g("mlp.up_proj.weight"),
            g("mlp.down_proj.weight"),
        );
        let ln2 = g("post_attention_layernorm.weight");
        let group = nq / nkv;
        for pos in 0..xs.len() {
            let mut attn = vec![0f32; nq * hd];
            for hh in 0..nq {
                let kvh = hh / group;
                let q = &qs[pos][hh * hd..(hh + 1) * hd];
                let scores: Vec<f32> = (0..=pos)
                    .map(|j| {
                        let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (j, p) in e.iter().enumerate() {
                    for d in 0..hd {
                        attn[hh * hd + d] += p / z * vs[j][kvh * hd + d];
                    }
                }
            }
            let o = matvec(&wo, &attn, h);
            let x = &mut xs[pos];
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            let hn = rmsnorm(x, &ln2, c.rms_norm_eps);
            let gt = matvec(&wg, &hn, c.intermediate_size);
            let up = matvec(&wu, &hn, c.intermediate_size);
            let act: Vec<f32> = gt
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let dn = matvec(&wd, &act, h);
            for (a, b) in x.iter_mut().zip(&dn) {
                *a += b;
            }
        }
    }
    let head = if c.tie_word_embeddings {
        emb
    } else {
        f32s(t, "lm_head.weight")
    };
    let fnorm = f32s(t, "model.norm.weight");
    xs.iter()
        .map(|x| matvec(&head, &rmsnorm(x, &fnorm, c.rms_norm_eps), c.vocab_size))
        .collect()
}

pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Block table for sequence `i`: `per_seq` consecutive blocks.
pub fn blocks_for(i: usize, per_seq: usize) -> Vec<u32> {
    ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect()
}

pub fn greedy() -> Option<engine::backend::SampleSpec> {
    Some(engine::backend::SampleSpec {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        index: 0,
        num_drafts: 0,
    })
}

pub fn step<'a>(
    seq_id: u64,
    tokens: &'a [u32],
    start_pos: usize,
    bt: &'a [u32],
    sample: bool,
) -> SeqStep<'a> {
    SeqStep {
        seq_id,
        tokens,
        start_pos,
        block_table: bt,
        sample: if sample { greedy() } else { None },
    }
}
