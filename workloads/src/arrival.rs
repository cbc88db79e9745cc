//! When requests arrive.
//!
//! In a spec: `arrival = "offline"` (every request at t = 0),
//! `arrival = { poisson = { rate = 8.0 } }` (exponential gaps, mean 1/rate),
//! `arrival = { gamma = { rate = 8.0, burstiness = 0.5 } }` (vLLM's
//! semantics: gamma gaps of shape `burstiness` and mean 1/rate; below 1 is
//! burstier than Poisson, 1 is Poisson, above 1 is steadier), or
//! `arrival = { concurrency = 8 }` (closed loop: arrivals are all 0 and the
//! pipeline passes `--max-concurrency 8` to `engine bench`, which keeps 8
//! requests in flight).
//!
//! Open-loop arrivals start at 0: the first request arrives at once, each
//! later one a sampled gap after the previous one.

use serde::{Deserialize, Serialize};

use crate::rng::Stream;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Arrival {
    Offline,
    Poisson { rate: f64 },
    Gamma { rate: f64, burstiness: f64 },
    Concurrency(u32),
}

impl Arrival {
    /// Closed-loop concurrency, for `engine bench --max-concurrency`.
    pub fn max_concurrency(&self) -> Option<u32> {
        match self {
            Arrival::Concurrency(n) => Some(*n),
            _ => None,
        }
    }

    /// Problems with the parameters, as (sub-field, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let positive = |field: &str, x: f64| {
            (!(x.is_finite() && x > 0.0)).then(|| {
                (
                    field.to_string(),
                    format!("must be a finite number > 0, got {x}"),
                )
            })
        };
        match self {
            Arrival::Offline => vec![],
            Arrival::Poisson { rate } => positive("poisson.rate", *rate).into_iter().collect(),
            Arrival::Gamma { rate, burstiness } => positive("gamma.rate", *rate)
                .into_iter()
                .chain(positive("gamma.burstiness", *burstiness))
                .collect(),
            Arrival::Concurrency(n) => (*n == 0)
                .then(|| ("concurrency".to_string(), "must be at least 1".to_string()))
                .into_iter()
                .collect(),
        }
    }

    /// The expected time for `n` open-loop requests to arrive, with the
    /// sub-field that sets it (the rate); None for closed loop and offline.
    pub fn expected_span_s(&self, n: u32) -> Option<(&'static str, f64)> {
        let gaps = f64::from(n.saturating_sub(1));
        match self {
            Arrival::Poisson { rate } => Some(("poisson.rate", gaps / rate)),
            Arrival::Gamma { rate, .. } => Some(("gamma.rate", gaps / rate)),
            Arrival::Offline | Arrival::Concurrency(_) => None,
        }
    }

    /// Arrival times in seconds of `n` requests, non-decreasing from 0.
    pub(crate) fn times(&self, n: usize, rng: &mut Stream) -> Vec<f64> {
        let mut t = 0.0;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 {
                t += match self {
                    Arrival::Offline | Arrival::Concurrency(_) => 0.0,
                    Arrival::Poisson { rate } => rng.exponential(*rate),
                    Arrival::Gamma { rate, burstiness } => {
                        rng.gamma(*burstiness, 1.0 / (rate * burstiness))
                    }
                };
            }
            out.push(t);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Purpose;

    fn gaps(arrival: &Arrival, n: usize) -> Vec<f64> {
        let mut rng = Stream::new(21, Purpose::Arrival, false);
        let t = arrival.times(n, &mut rng);
        assert_eq!(t[0], 0.0);
        t.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn mean_cv(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn poisson_mean_interval_is_one_over_rate() {
        let g = gaps(&Arrival::Poisson { rate: 5.0 }, 50_001);
        assert!(g.iter().all(|&x| x >= 0.0));
        let (mean, cv) = mean_cv(&g);
        assert!((mean - 0.2).abs() < 0.004, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.03, "cv {cv}");
    }

    #[test]
    fn gamma_keeps_the_rate_and_burstiness_sets_the_spread() {
        // Gamma with shape k has CV 1/sqrt(k).
        for k in [0.25, 1.0, 4.0] {
            let g = gaps(
                &Arrival::Gamma {
                    rate: 10.0,
                    burstiness: k,
                },
                50_001,
            );
            let (mean, cv) = mean_cv(&g);
            assert!((mean - 0.1).abs() < 0.003, "k={k}: mean gap {mean}");
            let want = 1.0 / f64::sqrt(k);
            assert!((cv - want).abs() < 0.05 * want, "k={k}: cv {cv} vs {want}");
        }
    }

    #[test]
    fn offline_and_closed_loop_arrive_at_zero() {
        assert!(gaps(&Arrival::Offline, 10).iter().all(|&g| g == 0.0));
        let c = Arrival::Concurrency(4);
        assert!(gaps(&c, 10).iter().all(|&g| g == 0.0));
        assert_eq!(c.max_concurrency(), Some(4));
        assert_eq!(Arrival::Offline.max_concurrency(), None);
    }

    #[test]
    fn bad_rates_are_reported() {
        assert_eq!(
            Arrival::Poisson { rate: 0.0 }.problems()[0].0,
            "poisson.rate"
        );
        let g = Arrival::Gamma {
            rate: f64::INFINITY,
            burstiness: -1.0,
        };
        assert_eq!(g.problems().len(), 2);
        assert_eq!(Arrival::Concurrency(0).problems()[0].0, "concurrency");
        assert!(Arrival::Concurrency(1).problems().is_empty());
    }
}
