//! llama.cpp tensor names → the engine's (Hugging Face) names, and the
//! row order llama.cpp gives the Llama q/k projections.
//!
//! llama.cpp's converter (`conversion/llama.py`, `LlamaModel.permute`)
//! reorders the rows of `q_proj` and `k_proj` (weights and biases) of
//! Llama-architecture models so that each head's RoPE pairs are adjacent
//! (ggml's "normal" rotation, as in Meta's original checkpoints):
//!
//! ```text
//! w.reshape(n_head, 2, head_dim / 2, ...).swapaxes(1, 2).reshape(w.shape)
//! ```
//!
//! with `n_head` = the query heads for q and the KV heads for k. HF's
//! `rotate_half` (which the engine implements) pairs element `j` with
//! `j + head_dim / 2` instead, so the loader undoes the swap: HF row
//! `h·hd + i·hd/2 + j` is GGUF row `h·hd + 2j + i`. Qwen2/Qwen3 use
//! the NeoX rotation in llama.cpp and are stored unpermuted.

/// The HF name of a llama.cpp tensor, or None for a tensor the engine does
/// not use.
pub(crate) fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = top {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Which permuted projection an HF tensor name is: Some(true) for q,
/// Some(false) for k.
pub(crate) fn rope_permuted(hf: &str) -> Option<bool> {
    let (_, last) = hf.rsplit_once(".self_attn.")?;
    match last {
        "q_proj.weight" | "q_proj.bias" => Some(true),
        "k_proj.weight" | "k_proj.bias" => Some(false),
        _ => None,
    }
}

/// Undoes llama.cpp's q/k row permutation in place: `values` holds `rows`
/// rows of `cols` values, `rows` = `n_heads` × head_dim.
pub(crate) fn unpermute_rows(values: &mut [f32], cols: usize, n_heads: usize) {
    let rows = values.len() / cols.max(1);
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        debug_assert!(false, "validated at open: {rows} rows, {n_heads} heads");
        return;
    }
    let hd = rows / n_heads;
    let half = hd / 2;
    let src = values.to_vec();
    for h in 0..n_heads {
        for i in 0..2 {
            for j in 0..half {
                let to = h * hd + i * half + j;
                let from = h * hd + 2 * j + i;
                values[to * cols..(to + 1) * cols]
                    .copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(
            rope_permuted("model.layers.3.self_attn.k_proj.bias"),
            Some(false)
        );
        assert_eq!(
            rope_permuted("model.layers.3.self_attn.v_proj.weight"),
            None
        );
    }

    /// The converter's permutation, written as in `LlamaModel.permute`, then
    /// undone.
    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        let (n_heads, hd, cols) = (3, 8, 2);
        let rows = n_heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        // permute: reshape(n_head, 2, hd/2, cols).swapaxes(1, 2)
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..n_heads {
            for i in 0..2 {
                for j in 0..hd / 2 {
                    let src = h * hd + i * hd / 2 + j; // index (h, i, j)
                    let dst = h * hd + j * 2 + i; // index (h, j, i)
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        unpermute_rows(&mut gguf, cols, n_heads);
        assert_eq!(gguf, hf);
    }
}
