//! Turning one row of logits into a token.
//!
//! The algorithm is specified exactly so that the CUDA backend can reproduce
//! it on the device:
//!
//! 1. `temperature <= 0`: greedy argmax; ties go to the lowest token id; NaN
//!    logits never win.
//! 2. Otherwise the logits are divided by the temperature.
//! 3. Candidates are ranked by scaled logit, highest first, ties by lower id.
//!    Top-k (`top_k > 0`) keeps the first `k` of that ranking.
//! 4. Softmax over the kept candidates (max-subtracted, f32). Top-p
//!    (`top_p < 1`) keeps the shortest prefix of the ranking whose probability
//!    mass reaches `top_p` (at least one token).
//! 5. Draw `u = uniform(seed, index)` in `[0, 1)` and walk the kept tokens in
//!    *ascending token id*, accumulating their probabilities; the first token
//!    whose running sum exceeds `u * total` is chosen (the last kept token if
//!    rounding leaves none). Walking in id order means plain temperature
//!    sampling needs no sort, only a prefix sum.
//!
//! The draw is a pure function of the request's seed and the index of the
//! token being sampled, never of the batch it runs in.

use crate::backend::SampleSpec;

/// splitmix64's finalizer: a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Counter-based uniform draw in `[0, 1)` for the `index`-th sampled token of
/// a request with `seed`: `mix64(mix64(seed) ^ index)`, top 24 bits, scaled by
/// 2^-24 (exactly representable in f32).
pub fn uniform(seed: u64, index: u32) -> f32 {
    let bits = mix64(mix64(seed) ^ u64::from(index)) >> 40;
    bits as f32 * (1.0 / (1u32 << 24) as f32)
}

/// Greedy argmax: the lowest id among the largest logits; NaN is ignored.
/// An empty or all-NaN row gives token 0.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    let mut found = false;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if !found || v > best_value {
            best = i;
            best_value = v;
            found = true;
        }
    }
    best as u32
}

/// [`sample`] for a backend: a row holding a NaN or an infinity is not
/// sampled (its NaN-skipping rules would pick a token from garbage) but
/// answered with [`crate::backend::NONFINITE_LOGITS`].
pub fn sample_checked(logits: &[f32], spec: &SampleSpec) -> u32 {
    if logits.iter().all(|v| v.is_finite()) {
        sample(logits, spec)
    } else {
        crate::backend::NONFINITE_LOGITS
    }
}

/// Samples one token from `logits` under `spec` (see the module docs).
pub fn sample(logits: &[f32], spec: &SampleSpec) -> u32 {
    if spec.temperature <= 0.0 || logits.is_empty() {
        return argmax(logits);
    }
    let inv_t = 1.0 / spec.temperature;
    // NaN scores are treated as impossible tokens.
    let scaled = |i: usize| {
        let v = logits[i];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v * inv_t
        }
    };
    let vocab = logits.len();
    let top_k = spec.top_k as usize;
    let use_top_k = top_k > 0 && top_k < vocab;
    let use_top_p = spec.top_p < 1.0;

    // Kept token ids. Without top-k/top-p every token is kept, unsorted.
    let mut kept: Vec<usize> = (0..vocab).collect();
    let rank = |a: &usize, b: &usize| scaled(*b).total_cmp(&scaled(*a)).then(a.cmp(b));
    if use_top_k {
        kept.select_nth_unstable_by(top_k - 1, rank);
        kept.truncate(top_k);
    }
    if use_top_p {
        kept.sort_unstable_by(rank);
    }

    let max = kept
        .iter()
        .map(|&i| scaled(i))
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return argmax(logits);
    }
    let mut probs: Vec<f32> = kept.iter().map(|&i| (scaled(i) - max).exp()).collect();
    let total: f32 = probs.iter().sum();

    if use_top_p {
        // `kept` is ranked; keep the shortest prefix reaching top_p of the mass.
        let target = spec.top_p.max(0.0) * total;
        let mut cum = 0.0f32;
        let mut len = kept.len();
        for (n, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= target {
                len = n + 1;
                break;
            }
        }
        kept.truncate(len);
        probs.truncate(len);
    }

    // Walk in ascending token id.
    let mut order: Vec<usize> = (0..kept.len()).collect();
    order.sort_unstable_by_key(|&n| kept[n]);
    let kept_total: f32 = probs.iter().sum();
    let threshold = uniform(spec.seed, spec.index) * kept_total;
    let mut cum = 0.0f32;
    for &n in &order {
        cum += probs[n];
        if cum > threshold {
            return kept[n] as u32;
        }
    }
    order.last().map_or(0, |&n| kept[n] as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(temperature: f32, top_k: u32, top_p: f32, seed: u64, index: u32) -> SampleSpec {
        SampleSpec {
            temperature,
            top_k,
            top_p,
            seed,
            index,
            num_drafts: 0,
        }
    }

    #[test]
    fn greedy_takes_lowest_index_among_ties_and_skips_nan() {
        assert_eq!(sample(&[1.0, 3.0, 3.0, 2.0], &spec(0.0, 0, 1.0, 0, 0)), 1);
        assert_eq!(sample(&[f32::NAN, 0.5, 0.7], &spec(0.0, 0, 1.0, 0, 0)), 2);
        assert_eq!(argmax(&[-1.0, -1.0]), 0);
    }

    #[test]
    fn uniform_is_in_range_deterministic_and_varies() {
        let mut distinct = std::collections::BTreeSet::new();
        for seed in 0..20u64 {
            for index in 0..50u32 {
                let u = uniform(seed, index);
                assert!((0.0..1.0).contains(&u), "{u}");
                assert_eq!(u, uniform(seed, index));
                distinct.insert(u.to_bits());
            }
        }
        assert!(distinct.len() > 990, "{}", distinct.len());
    }

    #[test]
    fn uniform_mean_is_about_half() {
        let n = 20_000u32;
        let mean: f64 = (0..n).map(|i| f64::from(uniform(7, i))).sum::<f64>() / f64::from(n);
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.1, 2.0, 1.9, -3.0];
        for index in 0..100 {
            assert_eq!(sample(&logits, &spec(1.5, 1, 1.0, 3, index)), 1);
        }
    }

    #[test]
    fn top_k_restricts_support() {
        let logits = [0.0, 1.0, 0.9, 0.8, -1.0];
        for index in 0..500 {
            let t = sample(&logits, &spec(5.0, 2, 1.0, 11, index));
            assert!(t == 1 || t == 2, "{t}");
        }
    }

    #[test]
    fn top_p_keeps_nucleus_only() {
        // probs ≈ [0.64, 0.24, 0.09, 0.03] at temperature 1.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut seen = [0u32; 4];
        for index in 0..2000 {
            seen[sample(&logits, &spec(1.0, 0, 0.8, 5, index)) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        // A tiny top_p still keeps the best token.
        assert_eq!(sample(&logits, &spec(1.0, 0, 0.0, 5, 3)), 0);
    }

    #[test]
    fn temperature_sampling_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()]; // probs 0.25, 0.75
        let n = 8000;
        let ones = (0..n)
            .filter(|&i| sample(&logits, &spec(1.0, 0, 1.0, 42, i)) == 1)
            .count();
        let frac = ones as f64 / f64::from(n);
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let logits: Vec<f32> = (0..64).map(|i| ((i * 37) % 17) as f32 * 0.1).collect();
        let run = |seed| -> Vec<u32> {
            (0..32)
                .map(|i| sample(&logits, &spec(0.8, 20, 0.95, seed, i)))
                .collect()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn a_row_with_nan_or_inf_is_flagged_not_sampled() {
        use crate::backend::NONFINITE_LOGITS;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for temperature in [0.0, 1.0] {
                let s = spec(temperature, 0, 1.0, 1, 0);
                assert_eq!(sample_checked(&[0.5, bad, 0.1], &s), NONFINITE_LOGITS);
            }
        }
        assert_eq!(
            sample_checked(&[0.5, 0.7, 0.1], &spec(0.0, 0, 1.0, 1, 0)),
            1
        );
    }

    #[test]
    fn nan_and_neg_inf_logits_are_never_sampled() {
        let logits = [f32::NAN, f32::NEG_INFINITY, 0.0, 0.0];
        for index in 0..200 {
            let t = sample(&logits, &spec(1.0, 0, 1.0, 9, index));
            assert!(t >= 2, "{t}");
        }
    }
}
