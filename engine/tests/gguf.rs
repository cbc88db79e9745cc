//! GGUF checkpoints without a download: synthetic files written from the
//! tiny presets (as llama.cpp's converter would write them: llama.cpp names,
//! ggml dimension order, Llama q/k rows permuted, llama3 RoPE as
//! `rope_freqs.weight`) load with the same config and give the same logits
//! as the safetensors checkpoint; bad files give errors naming the file and
//! the field or tensor; a toy vocabulary checks the tokenizer.

use std::path::{Path, PathBuf};

use engine::backend::cpu::CpuBackend;
use engine::backend::{Backend, SeqStep};
use engine::config::{Architecture, ModelConfig};
use engine::engine_config::EngineConfig;
use engine::gguf::{GgufWriter, MetaValue, TensorEncoding};
use engine::synth::write_preset;
#[cfg(feature = "text")]
use engine::tokenizer::{TextTokenizer, TokenizerError};
use engine::weights::Checkpoint;

fn s(v: &str) -> MetaValue {
    MetaValue::String(v.to_string())
}
fn u(v: usize) -> MetaValue {
    MetaValue::U32(v as u32)
}

/// llama.cpp's name for an HF tensor name.
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (part, kind) = rest.rsplit_once('.').unwrap();
    let part = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{part}.{kind}")
}

/// `LlamaModel.permute` of the converter: reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).
fn permute(values: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let hd = rows / n_head;
    let mut out = vec![0.0; values.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..hd / 2 {
                let (src, dst) = (h * hd + i * hd / 2 + j, h * hd + 2 * j + i);
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The metadata llama.cpp's converter writes for `cfg`.
fn metadata(w: &mut GgufWriter, cfg: &ModelConfig) {
    let arch = cfg.architecture.model_type();
    let k = |key: &str| format!("{arch}.{key}");
    w.meta("general.architecture", s(arch))
        .meta(&k("context_length"), u(cfg.max_position_embeddings))
        .meta(&k("embedding_length"), u(cfg.hidden_size))
        .meta(&k("feed_forward_length"), u(cfg.intermediate_size))
        .meta(&k("block_count"), u(cfg.num_hidden_layers))
        .meta(&k("attention.head_count"), u(cfg.num_attention_heads))
        .meta(&k("attention.head_count_kv"), u(cfg.num_key_value_heads))
        .meta(&k("attention.key_length"), u(cfg.head_dim))
        .meta(&k("attention.value_length"), u(cfg.head_dim))
        .meta(&k("rope.dimension_count"), u(cfg.head_dim))
        .meta(&k("rope.freq_base"), MetaValue::F32(cfg.rope_theta as f32))
        .meta(
            &k("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(cfg.rms_norm_eps as f32),
        )
        .meta(&k("vocab_size"), u(cfg.vocab_size))
        .meta(
            "tokenizer.ggml.bos_token_id",
            u(cfg.bos_token_id.unwrap() as usize),
        )
        .meta(
            "tokenizer.ggml.eos_token_id",
            u(cfg.eos_token_ids[0] as usize),
        );
    if let Some(r) = &cfg.rope_scaling {
        w.meta(
            &k("rope.scaling.original_context_length"),
            u(r.original_max_position_embeddings),
        );
    }
}

/// A GGUF file of the checkpoint in `dir`, every matrix in `encoding`.
fn gguf_of(dir: &Path, encoding: TensorEncoding) -> GgufWriter {
    let ckpt = Checkpoint::open(dir).unwrap();
    let cfg = &ckpt.config;
    let mut w = GgufWriter::new();
    metadata(&mut w, cfg);
    for name in ckpt.tensor_names() {
        let t = ckpt.tensor(name).unwrap();
        let shape = t.shape.to_vec();
        let mut values = t.to_f32();
        let cols = if shape.len() == 2 { shape[1] } else { 1 };
        if cfg.architecture == Architecture::Llama {
            if name.contains("q_proj") {
                values = permute(&values, cfg.num_attention_heads, cols);
            } else if name.contains("k_proj") {
                values = permute(&values, cfg.num_key_value_heads, cols);
            }
        }
        let enc = if shape.len() == 2 {
            encoding
        } else {
            TensorEncoding::F32
        };
        w.tensor(&gguf_name(name), &shape, enc, &values).unwrap();
    }
    if let Some(r) = &cfg.rope_scaling {
        // The converter's llama3 divisors per frequency.
        let (dim, theta) = (cfg.head_dim, cfg.rope_theta);
        let old = r.original_max_position_embeddings as f64;
        let factors: Vec<f32> = (0..dim / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                (if wavelen < old / r.high_freq_factor {
                    1.0
                } else if wavelen > old / r.low_freq_factor {
                    r.factor
                } else {
                    let s = (old / wavelen - r.low_freq_factor)
                        / (r.high_freq_factor - r.low_freq_factor);
                    1.0 / ((1.0 - s) / r.factor + s)
                }) as f32
            })
            .collect();
        w.tensor(
            "rope_freqs.weight",
            &[dim / 2],
            TensorEncoding::F32,
            &factors,
        )
        .unwrap();
    }
    w
}

fn logits(ckpt: &Checkpoint, tokens: &[u32]) -> Vec<Vec<f32>> {
    let cfg = EngineConfig {
        num_threads: 2,
        ..EngineConfig::default()
    };
    let mut b = CpuBackend::new(ckpt, &cfg).unwrap();
    b.allocate_kv_cache(4, 16).unwrap();
    let step = SeqStep {
        seq_id: 0,
        tokens,
        start_pos: 0,
        block_table: &[0, 1, 2, 3],
        sample: None,
    };
    b.forward_logits(&[step]).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn synthetic_gguf_matches_the_safetensors_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = [1u32, 17, 300, 5, 1999, 42, 7, 8, 9, 10];
    for preset in ["tiny", "tiny-qwen2", "tiny-qwen3"] {
        let dir = tmp.path().join(preset);
        write_preset(preset, 0, &dir).unwrap();
        let hf = Checkpoint::open(&dir).unwrap();
        let path = write(
            tmp.path(),
            &format!("{preset}.gguf"),
            &gguf_of(&dir, TensorEncoding::F32).to_bytes(),
        );
        let gguf = Checkpoint::open(&path).unwrap();
        let mut want_cfg = hf.config.clone();
        // Not in GGUF: the fitted llama3 parameters are compared below.
        want_cfg.rope_scaling = gguf.config.rope_scaling.clone();
        want_cfg.initializer_range = gguf.config.initializer_range;
        want_cfg.torch_dtype = gguf.config.torch_dtype;
        want_cfg.rms_norm_eps = gguf.config.rms_norm_eps;
        assert_eq!(gguf.config, want_cfg, "{preset}");
        if let (Some(a), Some(b)) = (&hf.config.rope_scaling, &gguf.config.rope_scaling) {
            assert_eq!(a.factor, b.factor);
            assert!(
                (a.low_freq_factor - b.low_freq_factor).abs() < 1e-4,
                "{b:?}"
            );
            assert!(
                (a.high_freq_factor - b.high_freq_factor).abs() < 1e-4,
                "{b:?}"
            );
        }
        // Every tensor comes back in HF order (q/k un-permuted).
        for name in hf.tensor_names() {
            assert_eq!(
                hf.tensor(name).unwrap().to_f32(),
                gguf.tensor(name).unwrap().to_f32(),
                "{preset}: {name}"
            );
        }
        let (a, b) = (logits(&hf, &tokens), logits(&gguf, &tokens));
        for (ra, rb) in a.iter().zip(&b) {
            for (x, y) in ra.iter().zip(rb) {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + x.abs()),
                    "{preset}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn quantized_gguf_loads_and_stays_close() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_preset("tiny", 0, &dir).unwrap();
    let hf = Checkpoint::open(&dir).unwrap();
    let tokens = [1u32, 17, 300, 5];
    let want = logits(&hf, &tokens);
    for enc in [
        TensorEncoding::Q8_0,
        TensorEncoding::Q4_0,
        TensorEncoding::Q4_1,
        TensorEncoding::F16,
        TensorEncoding::BF16,
    ] {
        let path = write(tmp.path(), "q.gguf", &gguf_of(&dir, enc).to_bytes());
        let q = Checkpoint::open(&path).unwrap();
        let w = q.tensor("model.layers.0.mlp.up_proj.weight").unwrap();
        assert_eq!(w.encoding, enc);
        let got = logits(&q, &tokens);
        let err = want[3]
            .iter()
            .zip(&got[3])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let scale = want[3].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            err < 0.5 * scale,
            "{enc:?}: logits moved by {err} (scale {scale})"
        );
    }
}

#[test]
fn truncated_and_corrupt_files_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_preset("tiny-qwen2", 0, &dir).unwrap();
    let bytes = gguf_of(&dir, TensorEncoding::Q8_0).to_bytes();
    // Every cut inside the header and a few inside the data.
    let mut cuts: Vec<usize> = (0..4096.min(bytes.len())).step_by(7).collect();
    cuts.extend([bytes.len() / 2, bytes.len() - 1]);
    for cut in cuts {
        let path = write(tmp.path(), "cut.gguf", &bytes[..cut]);
        let err = match Checkpoint::open(&path) {
            Ok(_) => panic!("a file cut at {cut} of {} opened", bytes.len()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("cut.gguf"), "{err}");
    }
    // Garbage counts and versions.
    let mut bad = bytes.clone();
    bad[4] = 9;
    let err = Checkpoint::open(&write(tmp.path(), "v.gguf", &bad))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("version"), "{err}");
    let mut bad = bytes.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = Checkpoint::open(&write(tmp.path(), "n.gguf", &bad))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tensor_count"), "{err}");
    let err = Checkpoint::open(&write(tmp.path(), "m.gguf", b"GGML\x03\0\0\0"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("magic"), "{err}");
}

#[test]
fn unsupported_type_missing_tensor_and_bad_metadata_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_preset("tiny-qwen2", 0, &dir).unwrap();
    // A Q4_K tensor (ggml type 12).
    let mut w = gguf_of(&dir, TensorEncoding::F32);
    w.raw_tensor("blk.0.attn_extra.weight", vec![256, 1], 12, vec![0; 144]);
    let err = Checkpoint::open(&write(tmp.path(), "k.gguf", &w.to_bytes()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("Q4_K") && err.contains("blk.0.attn_extra.weight"),
        "{err}"
    );
    // No output_norm.
    let ckpt = Checkpoint::open(&dir).unwrap();
    let mut w = GgufWriter::new();
    metadata(&mut w, &ckpt.config);
    for name in ckpt
        .tensor_names()
        .into_iter()
        .filter(|n| *n != "model.norm.weight")
    {
        let t = ckpt.tensor(name).unwrap();
        w.tensor(&gguf_name(name), t.shape, TensorEncoding::F32, &t.to_f32())
            .unwrap();
    }
    let err = Checkpoint::open(&write(tmp.path(), "n.gguf", &w.to_bytes()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.norm.weight") && err.contains("missing"),
        "{err}"
    );
    // An unsupported architecture.
    let mut w = GgufWriter::new();
    w.meta("general.architecture", s("gemma3"));
    let err = Checkpoint::open(&write(tmp.path(), "a.gguf", &w.to_bytes()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("general.architecture") && err.contains("gemma3"),
        "{err}"
    );
}

#[cfg(feature = "text")]
#[test]
fn a_gguf_without_tokenizer_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_preset("tiny-qwen2", 0, &dir).unwrap();
    let path = write(
        tmp.path(),
        "t.gguf",
        &gguf_of(&dir, TensorEncoding::F32).to_bytes(),
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    match TextTokenizer::from_checkpoint(&ckpt) {
        Err(e @ TokenizerError::Missing { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("t.gguf") && msg.contains("tokenizer.ggml"),
                "{msg}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a tokenizer from nothing"),
    }
    // A synthetic HF directory has none either.
    let err = TextTokenizer::from_checkpoint(&Checkpoint::open(&dir).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

/// A toy byte-level BPE vocabulary in GGUF metadata.
#[cfg(feature = "text")]
#[test]
fn gguf_tokenizer_encodes_decodes_and_splits_special_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_preset("tiny-qwen2", 0, &dir).unwrap();
    let mut w = gguf_of(&dir, TensorEncoding::F32);
    // "Ġ" is byte-level BPE's space.
    let tokens = [
        "<unk>",
        "<|im_start|>",
        "<|im_end|>",
        "h",
        "e",
        "l",
        "o",
        "Ġ",
        "w",
        "r",
        "d",
        "he",
        "ll",
        "hell",
        "hello",
        "1",
        "2",
    ];
    let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    let merges = ["h e", "l l", "he ll", "hell o"];
    w.meta("tokenizer.ggml.model", s("gpt2"))
        .meta("tokenizer.ggml.pre", s("smollm"))
        .meta("tokenizer.ggml.tokens", MetaValue::Array(tokens.iter().map(|t| s(t)).collect()))
        .meta("tokenizer.ggml.token_type", MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t)).collect()))
        .meta("tokenizer.ggml.merges", MetaValue::Array(merges.iter().map(|t| s(t)).collect()))
        .meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(false))
        .meta(
            "tokenizer.chat_template",
            s("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
        );
    let path = write(tmp.path(), "tok.gguf", &w.to_bytes());
    let ckpt = Checkpoint::open(&path).unwrap();
    let tok = TextTokenizer::from_checkpoint(&ckpt).unwrap();
    assert_eq!(
        tok.encode("hello world").unwrap(),
        vec![14, 7, 8, 6, 9, 5, 10]
    );
    assert_eq!(
        tok.encode("<|im_start|>hello<|im_end|>").unwrap(),
        vec![1, 14, 2]
    );
    // smollm's pre-tokenizer splits digits one by one.
    assert_eq!(tok.encode("12").unwrap(), vec![15, 16]);
    assert_eq!(
        tok.decode(&[14, 7, 8, 6, 9, 5, 10], true).unwrap(),
        "hello world"
    );
    assert_eq!(tok.decode(&[1, 14, 2], true).unwrap(), "hello");
    let chat = tok
        .apply_chat_template(&[engine::tokenizer::ChatMessage::new("user", "hello")])
        .unwrap();
    assert_eq!(
        chat,
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );

    // An unknown pre-tokenizer is named.
    w.meta("tokenizer.ggml.pre", s("mystery"));
    let bytes = w.to_bytes();
    let path = write(tmp.path(), "dup.gguf", &bytes);
    assert!(Checkpoint::open(&path)
        .err()
        .unwrap()
        .to_string()
        .contains("appears twice"));
}

/// `engine inspect` tells the pipeline a GGUF file's vocabulary and
/// special tokens (what xtask cannot read itself), the same as for the
/// safetensors directory it was converted from; a file that is not a
/// checkpoint is an error naming it.
#[test]
fn engine_inspect_reports_the_gguf_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-qwen2");
    write_preset("tiny-qwen2", 0, &dir).unwrap();
    let gguf = write(
        tmp.path(),
        "tiny-qwen2.gguf",
        &gguf_of(&dir, TensorEncoding::F32).to_bytes(),
    );
    let inspect = |model: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["inspect", "--model"])
            .arg(model)
            .output()
            .unwrap()
    };
    let parse = |out: std::process::Output| -> workloads::ModelInfo {
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let from_gguf = parse(inspect(&gguf));
    let from_dir = parse(inspect(&dir));
    assert_eq!(from_gguf.format, "gguf");
    assert_eq!(from_dir.format, "safetensors");
    let cfg = Checkpoint::open(&dir).unwrap().config;
    assert_eq!(from_gguf.vocab_size as usize, cfg.vocab_size);
    assert_eq!(from_gguf.architecture, "Qwen2ForCausalLM");
    assert_eq!(from_gguf.special_token_ids, from_dir.special_token_ids);
    assert_eq!(from_gguf.num_hidden_layers, from_dir.num_hidden_layers);

    let junk = write(tmp.path(), "junk.gguf", b"not a gguf file");
    let out = inspect(&junk);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.gguf"), "{err}");
}
