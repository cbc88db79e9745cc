//! Causal GQA attention over the paged KV cache.
//!
//! Per layer the cache holds a pool of `num_blocks × block_size` token slots
//! for K and one for V, each slot `[kv_heads, head_dim]` f32. A sequence's
//! `block_table` maps its logical block `pos / block_size` to a physical
//! block. Every (token, head) output is computed on its own, in a fixed
//! order over the cached positions, so a result never depends on which other
//! sequences share the step or how the prompt was split into chunks.

use rayon::prelude::*;

use super::super::BackendError;

pub struct KvCache {
    pub num_blocks: usize,
    pub block_size: usize,
    /// Floats per token slot: kv_heads × head_dim.
    slot: usize,
    /// Per layer, `[num_blocks × block_size, slot]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// Where one token of the batch sits: its position and its sequence's table.
#[derive(Clone, Copy)]
pub struct TokenPlace<'a> {
    pub position: usize,
    pub block_table: &'a [u32],
}

/// Shape of the attention heads.
#[derive(Clone, Copy)]
pub struct Heads {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvCache {
    pub fn new(
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        slot: usize,
    ) -> Result<KvCache, BackendError> {
        let floats = num_blocks
            .checked_mul(block_size)
            .and_then(|n| n.checked_mul(slot))
            .ok_or_else(|| BackendError::OutOfMemory("KV cache size overflows".into()))?;
        let alloc = || -> Result<Vec<f32>, BackendError> {
            let mut v = Vec::new();
            v.try_reserve_exact(floats).map_err(|e| {
                BackendError::OutOfMemory(format!("KV cache: {} bytes per layer: {e}", floats * 4))
            })?;
            v.resize(floats, 0.0);
            Ok(v)
        };
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for _ in 0..layers {
            keys.push(alloc()?);
            values.push(alloc()?);
        }
        Ok(KvCache {
            num_blocks,
            block_size,
            slot,
            keys,
            values,
        })
    }

    fn slot_index(&self, place: &TokenPlace<'_>) -> usize {
        let block = place.block_table[place.position / self.block_size] as usize;
        block * self.block_size + place.position % self.block_size
    }

    /// Stores the K and V rows (`[tokens, slot]`) of layer `layer`.
    pub fn write(&mut self, layer: usize, places: &[TokenPlace<'_>], k: &[f32], v: &[f32]) {
        let slot = self.slot;
        for (t, place) in places.iter().enumerate() {
            let at = self.slot_index(place) * slot;
            self.keys[layer][at..at + slot].copy_from_slice(&k[t * slot..(t + 1) * slot]);
            self.values[layer][at..at + slot].copy_from_slice(&v[t * slot..(t + 1) * slot]);
        }
    }

    /// Attention output `[tokens, q_heads × head_dim]` for queries `q`
    /// (`[tokens, q_heads × head_dim]`, RoPE applied), each token attending
    /// to positions `0..=position` of its own sequence.
    pub fn attend(
        &self,
        layer: usize,
        places: &[TokenPlace<'_>],
        q: &[f32],
        heads: Heads,
    ) -> Vec<f32> {
        let Heads {
            q_heads,
            kv_heads,
            head_dim,
        } = heads;
        let group = q_heads / kv_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (keys, values) = (&self.keys[layer], &self.values[layer]);
        let mut out = vec![0.0f32; places.len() * q_heads * head_dim];
        out.par_chunks_mut(head_dim)
            .enumerate()
            .for_each(|(i, out_head)| {
                let (t, h) = (i / q_heads, i % q_heads);
                let place = places[t];
                let query = &q[i * head_dim..(i + 1) * head_dim];
                let kv_offset = (h / group) * head_dim;
                let slots: Vec<usize> = (0..=place.position)
                    .map(|p| {
                        self.slot_index(&TokenPlace {
                            position: p,
                            block_table: place.block_table,
                        }) * self.slot
                            + kv_offset
                    })
                    .collect();
                let mut scores: Vec<f32> = slots
                    .iter()
                    .map(|&s| dot(query, &keys[s..s + head_dim]) * scale)
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    total += *s;
                }
                for (&s, &w) in slots.iter().zip(&scores) {
                    let weight = w / total;
                    for (o, &v) in out_head.iter_mut().zip(&values[s..s + head_dim]) {
                        *o += weight * v;
                    }
                }
            });
        out
    }
}

/// Dot product with eight fixed accumulators: vectorisable, and the same
/// order every time.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive softmax attention over contiguous K/V for one head.
    fn reference(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>]) -> Vec<f32> {
        let d = q.len();
        let s: Vec<f64> = k
            .iter()
            .map(|k| {
                q.iter().zip(k).map(|(a, b)| (*a * *b) as f64).sum::<f64>() / (d as f64).sqrt()
            })
            .collect();
        let m = s.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..d)
            .map(|j| (e.iter().zip(v).map(|(w, v)| w * v[j] as f64).sum::<f64>() / z) as f32)
            .collect()
    }

    #[test]
    fn paged_gqa_matches_contiguous_reference() {
        let (q_heads, kv_heads, d, bs) = (4, 2, 8, 4);
        let heads = Heads {
            q_heads,
            kv_heads,
            head_dim: d,
        };
        let mut cache = KvCache::new(1, 8, bs, kv_heads * d).unwrap();
        let table = [5u32, 2, 7]; // scattered physical blocks
        let len = 10;
        let val = |t: usize, j: usize| ((t * 31 + j * 7) % 13) as f32 / 13.0 - 0.5;
        let k: Vec<f32> = (0..len * kv_heads * d).map(|i| val(i, 1)).collect();
        let v: Vec<f32> = (0..len * kv_heads * d).map(|i| val(i, 3)).collect();
        let q: Vec<f32> = (0..len * q_heads * d).map(|i| val(i, 5)).collect();
        let places: Vec<TokenPlace> = (0..len)
            .map(|position| TokenPlace {
                position,
                block_table: &table,
            })
            .collect();
        cache.write(0, &places, &k, &v);
        let out = cache.attend(0, &places, &q, heads);
        for t in 0..len {
            for h in 0..q_heads {
                let g = h / (q_heads / kv_heads);
                let ks: Vec<Vec<f32>> = (0..=t)
                    .map(|p| k[(p * kv_heads + g) * d..(p * kv_heads + g + 1) * d].to_vec())
                    .collect();
                let vs: Vec<Vec<f32>> = (0..=t)
                    .map(|p| v[(p * kv_heads + g) * d..(p * kv_heads + g + 1) * d].to_vec())
                    .collect();
                let want = reference(
                    &q[(t * q_heads + h) * d..(t * q_heads + h + 1) * d],
                    &ks,
                    &vs,
                );
                let got = &out[(t * q_heads + h) * d..(t * q_heads + h + 1) * d];
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "t={t} h={h}: {a} vs {b}");
                }
            }
        }
        // The last token alone (decode) gives the same bits as in the batch.
        let last = cache.attend(0, &places[len - 1..], &q[(len - 1) * q_heads * d..], heads);
        assert!(last[..] == out[(len - 1) * q_heads * d..]);
    }
}
