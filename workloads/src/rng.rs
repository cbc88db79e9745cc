//! Seeded random streams and the few distributions the generator needs.
//!
//! Everything here is written out by hand on top of ChaCha8 (whose output is
//! fixed by its specification) and `libm` (pure-Rust, correctly rounded enough
//! and identical on every target), instead of `rand`'s distributions, whose
//! algorithms may change between releases: a workload must resolve to the
//! same bytes on any machine, this year and next.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a stream is used for. Each purpose draws from its own ChaCha stream,
/// so changing one part of a spec (the arrival rate, say) leaves the others
/// (the prompts) unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    PromptLen = 0,
    OutputLen = 1,
    PromptTokens = 2,
    PrefixTokens = 3,
    Arrival = 4,
    SamplingSeed = 5,
}

/// Warmup requests draw from streams offset by this much, so the measured
/// requests do not depend on how many warmup requests there are.
pub(crate) const WARMUP_STREAM_OFFSET: u64 = 64;

/// One seeded random stream.
pub(crate) struct Stream(ChaCha8Rng);

impl Stream {
    /// The key is blake3 of a fixed domain string and the seed, so the
    /// mapping from seed to key does not rely on `rand_core`'s seed expander.
    pub(crate) fn new(seed: u64, purpose: Purpose, warmup: bool) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"dyno-workloads/stream/v1");
        hasher.update(&seed.to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(*hasher.finalize().as_bytes());
        let offset = if warmup { WARMUP_STREAM_OFFSET } else { 0 };
        rng.set_stream(purpose as u64 + offset);
        Stream(rng)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1), 53 random bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: safe to take the logarithm of.
    pub(crate) fn open_unit(&mut self) -> f64 {
        1.0 - self.unit()
    }

    /// Uniform integer in [0, n) by multiply-shift (bias below 2^-32 for the
    /// n < 2^32 used here). `n` must be positive.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal by Box–Muller (one value per pair of uniforms; the
    /// second is dropped so every call consumes exactly two draws).
    pub(crate) fn standard_normal(&mut self) -> f64 {
        let u1 = self.open_unit();
        let u2 = self.unit();
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
    }

    /// Exponential with the given rate (mean 1/rate).
    pub(crate) fn exponential(&mut self, rate: f64) -> f64 {
        -libm::log(self.open_unit()) / rate
    }

    /// Gamma(shape, scale) by Marsaglia–Tsang; shapes below 1 use the boost
    /// Gamma(shape) = Gamma(shape + 1) * U^(1/shape).
    pub(crate) fn gamma(&mut self, shape: f64, scale: f64) -> f64 {
        if shape < 1.0 {
            let boost = libm::pow(self.open_unit(), 1.0 / shape);
            return self.gamma(shape + 1.0, scale) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / libm::sqrt(9.0 * d);
        loop {
            let z = self.standard_normal();
            let v = 1.0 + c * z;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.open_unit();
            if libm::log(u) < 0.5 * z * z + d - d * v + d * libm::log(v) {
                return d * v * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn purposes_and_phases_are_independent_streams() {
        let a = Stream::new(7, Purpose::PromptLen, false).next_u64();
        let b = Stream::new(7, Purpose::OutputLen, false).next_u64();
        let c = Stream::new(7, Purpose::PromptLen, true).next_u64();
        let d = Stream::new(8, Purpose::PromptLen, false).next_u64();
        assert!(a != b && a != c && a != d && b != c);
        assert_eq!(a, Stream::new(7, Purpose::PromptLen, false).next_u64());
    }

    #[test]
    fn unit_and_below_stay_in_range() {
        let mut s = Stream::new(1, Purpose::PromptLen, false);
        for _ in 0..10_000 {
            let u = s.unit();
            assert!((0.0..1.0).contains(&u));
            let o = s.open_unit();
            assert!(o > 0.0 && o <= 1.0);
            assert!(s.below(7) < 7);
        }
    }

    #[test]
    fn below_covers_every_value_evenly() {
        let mut s = Stream::new(2, Purpose::PromptTokens, false);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[s.below(10) as usize] += 1;
        }
        // Expected 10,000 each; sd ~95, so 500 is > 5 sd.
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn normal_has_mean_zero_and_unit_variance() {
        let mut s = Stream::new(3, Purpose::PromptLen, false);
        let xs: Vec<f64> = (0..200_000).map(|_| s.standard_normal()).collect();
        let (mean, var) = mean_var(&xs);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn exponential_mean_is_one_over_rate() {
        let mut s = Stream::new(4, Purpose::Arrival, false);
        let xs: Vec<f64> = (0..200_000).map(|_| s.exponential(4.0)).collect();
        let (mean, var) = mean_var(&xs);
        assert!((mean - 0.25).abs() < 0.0025, "mean {mean}");
        assert!((var - 0.0625).abs() < 0.002, "var {var}");
    }

    #[test]
    fn gamma_matches_shape_and_scale() {
        // Gamma(k, θ): mean kθ, variance kθ². Both branches (k < 1, k >= 1).
        for (shape, scale) in [(0.5, 2.0), (1.0, 1.0), (4.0, 0.25)] {
            let mut s = Stream::new(5, Purpose::Arrival, false);
            let xs: Vec<f64> = (0..200_000).map(|_| s.gamma(shape, scale)).collect();
            assert!(xs.iter().all(|&x| x > 0.0));
            let (mean, var) = mean_var(&xs);
            let (m, v) = (shape * scale, shape * scale * scale);
            assert!(
                (mean - m).abs() < 0.01 * m.max(1.0),
                "k={shape}: mean {mean} vs {m}"
            );
            assert!(
                (var - v).abs() < 0.04 * v.max(1.0),
                "k={shape}: var {var} vs {v}"
            );
        }
    }
}
