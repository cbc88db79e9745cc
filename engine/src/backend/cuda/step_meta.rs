//! The per-step inputs the kernels read (token ids, positions, KV slots,
//! block tables, sampling parameters), packed on the host into one `u32`
//! array and uploaded with a single copy. The layout depends only on the
//! capacities `(tokens, samples)`, so a CUDA graph captured for a batch-size
//! bucket bakes in addresses that stay valid for every step of that bucket;
//! the block-table stride is read by the kernels from device memory.

use super::super::{pending_row, BackendError, SeqStep};

/// Offsets (in `u32` elements) of each array for given capacities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaLayout {
    pub tokens_cap: usize,
    pub samples_cap: usize,
}

impl MetaLayout {
    pub fn tokens(&self) -> usize {
        0
    }
    pub fn positions(&self) -> usize {
        self.tokens_cap
    }
    pub fn slots(&self) -> usize {
        2 * self.tokens_cap
    }
    pub fn seq_idx(&self) -> usize {
        3 * self.tokens_cap
    }
    pub fn sample_rows(&self) -> usize {
        4 * self.tokens_cap
    }
    pub fn temperature(&self) -> usize {
        self.sample_rows() + self.samples_cap
    }
    pub fn top_k(&self) -> usize {
        self.sample_rows() + 2 * self.samples_cap
    }
    pub fn top_p(&self) -> usize {
        self.sample_rows() + 3 * self.samples_cap
    }
    pub fn seed_lo(&self) -> usize {
        self.sample_rows() + 4 * self.samples_cap
    }
    pub fn seed_hi(&self) -> usize {
        self.sample_rows() + 5 * self.samples_cap
    }
    pub fn draw_index(&self) -> usize {
        self.sample_rows() + 6 * self.samples_cap
    }
    pub fn bt_stride(&self) -> usize {
        self.sample_rows() + 7 * self.samples_cap
    }
    pub fn block_tables(&self) -> usize {
        self.bt_stride() + 1
    }
    /// Elements needed for `seqs` block-table rows of `stride` entries.
    pub fn len(&self, seqs: usize, stride: usize) -> usize {
        self.block_tables() + seqs * stride
    }
}

/// Fixed facts the packer checks the batch against.
#[derive(Debug, Clone, Copy)]
pub struct MetaLimits {
    pub block_size: usize,
    pub num_blocks: usize,
    /// Block that padding entries point at (never handed to the scheduler).
    pub trash_block: u32,
    pub vocab_size: usize,
    pub max_model_len: usize,
    /// Rows the previously launched step sampled, which `PENDING_TOKEN`s
    /// may name (0: no pending token is valid).
    pub pending_rows: usize,
}

/// What was packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedStep {
    /// Real tokens (padding excluded).
    pub tokens: usize,
    /// Sampled rows (padding excluded), in batch order.
    pub samples: usize,
    /// Elements of the array that must be uploaded.
    pub len: usize,
}

/// How sampled rows are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// The last token of every entry with `sample: Some`.
    Sampled,
    /// Every token (golden logits); sampling parameters are left greedy.
    All,
}

/// Rows `Rows::Sampled` samples for `batch`: one per sampling entry, plus
/// one per draft token under verification.
pub fn sampled_rows(batch: &[SeqStep<'_>]) -> usize {
    batch
        .iter()
        .filter_map(|s| s.sample.as_ref())
        .map(|spec| spec.num_rows())
        .sum()
}

/// Packs `batch` into `out` under `layout`; entries beyond the batch up to
/// `pad_seqs` are padding (one token at position 0 in the trash block).
pub fn pack(
    batch: &[SeqStep<'_>],
    layout: MetaLayout,
    limits: &MetaLimits,
    rows: Rows,
    pad_seqs: usize,
    out: &mut [u32],
) -> Result<PackedStep, BackendError> {
    let bs = limits.block_size;
    let tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
    let padded_tokens = tokens + pad_seqs.saturating_sub(batch.len());
    if padded_tokens > layout.tokens_cap {
        return Err(BackendError::InvalidBatch(format!(
            "{padded_tokens} tokens exceed the capacity of {}",
            layout.tokens_cap
        )));
    }
    let mut stride = 1usize;
    for s in batch {
        if s.tokens.is_empty() {
            return Err(BackendError::InvalidBatch(format!(
                "sequence {}: no tokens",
                s.seq_id
            )));
        }
        let end = s.start_pos + s.tokens.len();
        if end > limits.max_model_len {
            return Err(BackendError::InvalidBatch(format!(
                "sequence {}: position {end} exceeds max_model_len {}",
                s.seq_id, limits.max_model_len
            )));
        }
        let needed = end.div_ceil(bs);
        if s.block_table.len() < needed {
            return Err(BackendError::InvalidBatch(format!(
                "sequence {}: {} KV blocks cover fewer than {end} positions",
                s.seq_id,
                s.block_table.len()
            )));
        }
        if let Some(b) = s.block_table[..needed]
            .iter()
            .find(|&&b| b as usize >= limits.num_blocks)
        {
            return Err(BackendError::InvalidBatch(format!(
                "sequence {}: KV block {b} out of range (pool has {})",
                s.seq_id, limits.num_blocks
            )));
        }
        if let Some(spec) = &s.sample {
            if spec.num_rows() > s.tokens.len() {
                return Err(BackendError::InvalidBatch(format!(
                    "sequence {}: {} draft tokens to verify in a chunk of {}",
                    s.seq_id,
                    spec.num_drafts,
                    s.tokens.len()
                )));
            }
        }
        for &t in s.tokens {
            match pending_row(t) {
                Some(r) if r >= limits.pending_rows => {
                    return Err(BackendError::InvalidBatch(format!(
                        "sequence {}: pending token of row {r}, but the last step sampled {} rows",
                        s.seq_id, limits.pending_rows
                    )))
                }
                Some(_) => {}
                None if t as usize >= limits.vocab_size => {
                    return Err(BackendError::InvalidBatch(format!(
                        "sequence {}: token {t} outside the vocabulary of {}",
                        s.seq_id, limits.vocab_size
                    )))
                }
                None => {}
            }
        }
        stride = stride.max(needed);
    }
    let seqs = batch.len().max(pad_seqs);
    let len = layout.len(seqs, stride);
    if len > out.len() {
        return Err(BackendError::InvalidBatch(format!(
            "step metadata needs {len} slots, buffer holds {}",
            out.len()
        )));
    }
    let samples_wanted = match rows {
        Rows::Sampled => sampled_rows(batch) + seqs - batch.len(),
        Rows::All => padded_tokens,
    };
    if samples_wanted > layout.samples_cap {
        return Err(BackendError::InvalidBatch(format!(
            "{samples_wanted} sampled rows exceed the capacity of {}",
            layout.samples_cap
        )));
    }

    out[layout.bt_stride()] = stride as u32;
    let mut t = 0usize;
    let mut s_out = 0usize;
    let mut put_sample = |out: &mut [u32], row: usize, spec: Option<&super::super::SampleSpec>| {
        out[layout.sample_rows() + s_out] = row as u32;
        let (temp, k, p, seed, idx) = match spec {
            Some(sp) => (sp.temperature, sp.top_k, sp.top_p, sp.seed, sp.index),
            None => (0.0, 0, 1.0, 0, 0),
        };
        out[layout.temperature() + s_out] = temp.to_bits();
        out[layout.top_k() + s_out] = k;
        out[layout.top_p() + s_out] = p.to_bits();
        out[layout.seed_lo() + s_out] = seed as u32;
        out[layout.seed_hi() + s_out] = (seed >> 32) as u32;
        out[layout.draw_index() + s_out] = idx;
        s_out += 1;
    };
    for (i, s) in batch.iter().enumerate() {
        let row =
            &mut out[layout.block_tables() + i * stride..layout.block_tables() + (i + 1) * stride];
        let needed = (s.start_pos + s.tokens.len()).div_ceil(bs);
        row[..needed].copy_from_slice(&s.block_table[..needed]);
        row[needed..].fill(limits.trash_block);
        for (j, &tok) in s.tokens.iter().enumerate() {
            let pos = s.start_pos + j;
            out[layout.tokens() + t] = tok;
            out[layout.positions() + t] = pos as u32;
            out[layout.slots() + t] = s.block_table[pos / bs] * bs as u32 + (pos % bs) as u32;
            out[layout.seq_idx() + t] = i as u32;
            if rows == Rows::All {
                put_sample(out, t, None);
            }
            t += 1;
        }
        if rows == Rows::Sampled {
            if let Some(spec) = &s.sample {
                // The last token, or with drafts under verification each of
                // the last num_drafts + 1 tokens with its own draw index.
                let n = spec.num_rows();
                for j in 0..n {
                    put_sample(out, t - n + j, Some(&spec.row(j)));
                }
            }
        }
    }
    for i in batch.len()..seqs {
        let row =
            &mut out[layout.block_tables() + i * stride..layout.block_tables() + (i + 1) * stride];
        row.fill(limits.trash_block);
        out[layout.tokens() + t] = 0;
        out[layout.positions() + t] = 0;
        out[layout.slots() + t] = limits.trash_block * bs as u32;
        out[layout.seq_idx() + t] = i as u32;
        put_sample(out, t, None);
        t += 1;
    }
    Ok(PackedStep {
        tokens,
        samples: samples_wanted - (seqs - batch.len()),
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SampleSpec;

    fn limits() -> MetaLimits {
        MetaLimits {
            block_size: 4,
            num_blocks: 10,
            trash_block: 10,
            vocab_size: 100,
            max_model_len: 64,
            pending_rows: 2,
        }
    }

    fn spec(seed: u64) -> SampleSpec {
        SampleSpec {
            temperature: 0.5,
            top_k: 3,
            top_p: 0.9,
            seed,
            index: 7,
            num_drafts: 0,
        }
    }

    #[test]
    fn packs_prefill_chunk_and_decode_with_slots_and_tables() {
        let bt_a = [3u32, 5];
        let bt_b = [7u32];
        let batch = [
            SeqStep {
                seq_id: 1,
                tokens: &[11, 12, 13],
                start_pos: 3,
                block_table: &bt_a,
                sample: Some(spec(1 << 40 | 9)),
            },
            SeqStep {
                seq_id: 2,
                tokens: &[20],
                start_pos: 2,
                block_table: &bt_b,
                sample: None,
            },
        ];
        let layout = MetaLayout {
            tokens_cap: 4,
            samples_cap: 2,
        };
        let mut out = vec![u32::MAX; 64];
        let p = pack(&batch, layout, &limits(), Rows::Sampled, 0, &mut out).unwrap();
        assert_eq!(p.tokens, 4);
        assert_eq!(p.samples, 1);
        assert_eq!(&out[0..4], &[11, 12, 13, 20]);
        assert_eq!(
            &out[layout.positions()..layout.positions() + 4],
            &[3, 4, 5, 2]
        );
        // pos 3 → block 3 offset 3; pos 4,5 → block 5 offsets 0,1; pos 2 → block 7 offset 2
        assert_eq!(&out[layout.slots()..layout.slots() + 4], &[15, 20, 21, 30]);
        assert_eq!(&out[layout.seq_idx()..layout.seq_idx() + 4], &[0, 0, 0, 1]);
        assert_eq!(out[layout.sample_rows()], 2);
        assert_eq!(f32::from_bits(out[layout.temperature()]), 0.5);
        assert_eq!(out[layout.seed_lo()], 9);
        assert_eq!(out[layout.seed_hi()], 1 << 8);
        assert_eq!(out[layout.bt_stride()], 2);
        let bt = layout.block_tables();
        assert_eq!(&out[bt..bt + 4], &[3, 5, 7, 10]);
        assert_eq!(p.len, bt + 4);
    }

    #[test]
    fn padding_entries_point_at_the_trash_block() {
        let bt = [1u32];
        let batch = [SeqStep {
            seq_id: 1,
            tokens: &[5],
            start_pos: 0,
            block_table: &bt,
            sample: Some(spec(0)),
        }];
        let layout = MetaLayout {
            tokens_cap: 4,
            samples_cap: 4,
        };
        let mut out = vec![0u32; 64];
        let p = pack(&batch, layout, &limits(), Rows::Sampled, 4, &mut out).unwrap();
        assert_eq!(p.samples, 1);
        assert_eq!(&out[layout.slots()..layout.slots() + 4], &[4, 40, 40, 40]);
        assert_eq!(
            &out[layout.sample_rows()..layout.sample_rows() + 4],
            &[0, 1, 2, 3]
        );
        assert_eq!(f32::from_bits(out[layout.temperature() + 3]), 0.0);
    }

    #[test]
    fn rejects_bad_batches_with_clear_errors() {
        let layout = MetaLayout {
            tokens_cap: 8,
            samples_cap: 8,
        };
        let mut out = vec![0u32; 128];
        let bt = [1u32];
        let short = [SeqStep {
            seq_id: 9,
            tokens: &[1, 2, 3, 4, 5],
            start_pos: 0,
            block_table: &bt,
            sample: None,
        }];
        let e = pack(&short, layout, &limits(), Rows::Sampled, 0, &mut out).unwrap_err();
        assert!(e.to_string().contains("sequence 9"), "{e}");
        let bad_block = [99u32];
        let oob = [SeqStep {
            seq_id: 3,
            tokens: &[1],
            start_pos: 0,
            block_table: &bad_block,
            sample: None,
        }];
        let e = pack(&oob, layout, &limits(), Rows::Sampled, 0, &mut out).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let bad_tok = [SeqStep {
            seq_id: 4,
            tokens: &[100],
            start_pos: 0,
            block_table: &bt,
            sample: None,
        }];
        let e = pack(&bad_tok, layout, &limits(), Rows::Sampled, 0, &mut out).unwrap_err();
        assert!(e.to_string().contains("vocabulary"), "{e}");
    }

    #[test]
    fn verify_chunks_sample_every_draft_position_with_its_own_draw() {
        let bt = [2u32, 3];
        let verify = SampleSpec {
            num_drafts: 3,
            ..spec(5)
        };
        let batch = [
            SeqStep {
                seq_id: 1,
                tokens: &[9],
                start_pos: 4,
                block_table: &bt,
                sample: Some(spec(4)),
            },
            SeqStep {
                seq_id: 2,
                tokens: &[1, 2, 3, 4],
                start_pos: 2,
                block_table: &bt,
                sample: Some(verify.clone()),
            },
        ];
        assert_eq!(sampled_rows(&batch), 5);
        let layout = MetaLayout {
            tokens_cap: 5,
            samples_cap: 5,
        };
        let mut out = vec![0u32; 128];
        let p = pack(&batch, layout, &limits(), Rows::Sampled, 0, &mut out).unwrap();
        assert_eq!(p.samples, 5);
        let rows = layout.sample_rows();
        assert_eq!(&out[rows..rows + 5], &[0, 1, 2, 3, 4]);
        let draws = layout.draw_index();
        assert_eq!(&out[draws..draws + 5], &[7, 7, 8, 9, 10]);
        assert_eq!(out[layout.seed_lo() + 4], 5);
        let too_many = [SeqStep {
            sample: Some(SampleSpec {
                num_drafts: 4,
                ..spec(5)
            }),
            ..batch[1].clone()
        }];
        let e = pack(&too_many, layout, &limits(), Rows::Sampled, 0, &mut out).unwrap_err();
        assert!(e.to_string().contains("draft"), "{e}");
    }

    #[test]
    fn all_rows_mode_samples_every_token() {
        let bt = [2u32, 3];
        let batch = [SeqStep {
            seq_id: 1,
            tokens: &[1, 2, 3, 4, 5],
            start_pos: 0,
            block_table: &bt,
            sample: None,
        }];
        let layout = MetaLayout {
            tokens_cap: 5,
            samples_cap: 5,
        };
        let mut out = vec![0u32; 128];
        let p = pack(&batch, layout, &limits(), Rows::All, 0, &mut out).unwrap();
        assert_eq!(p.samples, 5);
        assert_eq!(
            &out[layout.sample_rows()..layout.sample_rows() + 5],
            &[0, 1, 2, 3, 4]
        );
    }
}
