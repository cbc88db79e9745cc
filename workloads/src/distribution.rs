//! Token-length distributions of prompts and outputs.
//!
//! In a spec each is a one-key table naming the kind:
//! `{ fixed = 128 }`, `{ uniform = { min = 16, max = 64 } }`,
//! `{ normal = { mean = 256, std_dev = 64, min = 16, max = 512 } }`,
//! `{ lognormal = { mean = 256, sigma = 0.6, min = 8, max = 2048 } }`, or
//! `{ list = "lengths/trace.txt" }` (whitespace-separated integers, `#`
//! comments; the path is relative to the spec; request i takes entry
//! i mod len, so a trace replays in its own order).
//!
//! Continuous draws are rounded to the nearest integer and clamped to
//! [min, max]; a lognormal's `mean` is the mean of the (unclamped) length,
//! `sigma` the standard deviation of its logarithm.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rng::Stream;

/// Longest length a spec may ask for: far beyond any model's context here,
/// low enough that a typo cannot make the generator exhaust memory.
pub const MAX_LENGTH: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LengthDist {
    Fixed(u32),
    Uniform {
        min: u32,
        max: u32,
    },
    Normal {
        mean: f64,
        std_dev: f64,
        min: u32,
        max: u32,
    },
    Lognormal {
        mean: f64,
        sigma: f64,
        min: u32,
        max: u32,
    },
    List(LengthList),
}

/// Lengths read from a file. Deserialized from the path alone; `values` is
/// filled in by [`LengthList::resolve`] when the spec is loaded, and is part
/// of the serialized (resolved) spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "PathBuf")]
pub struct LengthList {
    pub path: PathBuf,
    pub values: Vec<u32>,
}

impl From<PathBuf> for LengthList {
    fn from(path: PathBuf) -> Self {
        LengthList {
            path,
            values: Vec::new(),
        }
    }
}

/// A problem reading a lengths file: the message names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}:{line}: `{word}` is not a token length (a positive integer)", path.display())]
    Value {
        path: PathBuf,
        line: usize,
        word: String,
    },
    #[error("{}: holds no lengths", path.display())]
    Empty { path: PathBuf },
}

impl LengthList {
    /// Reads the lengths, with `self.path` taken relative to `spec_dir`.
    pub fn resolve(&mut self, spec_dir: &Path) -> Result<(), ListError> {
        let path = spec_dir.join(&self.path);
        let text = std::fs::read_to_string(&path).map_err(|source| ListError::Io {
            path: path.clone(),
            cause: source,
        })?;
        self.values = parse_lengths(&path, &text)?;
        Ok(())
    }
}

fn parse_lengths(path: &Path, text: &str) -> Result<Vec<u32>, ListError> {
    let mut values = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("");
        for word in content.split_whitespace() {
            match word.parse::<u32>() {
                Ok(v) if v >= 1 => values.push(v),
                _ => {
                    return Err(ListError::Value {
                        path: path.to_path_buf(),
                        line: i + 1,
                        word: word.to_string(),
                    })
                }
            }
        }
    }
    if values.is_empty() {
        return Err(ListError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(values)
}

impl LengthDist {
    /// The smallest and largest length this distribution can produce
    /// (`None` for an unresolved list).
    pub fn bounds(&self) -> Option<(u32, u32)> {
        match self {
            LengthDist::Fixed(v) => Some((*v, *v)),
            LengthDist::Uniform { min, max }
            | LengthDist::Normal { min, max, .. }
            | LengthDist::Lognormal { min, max, .. } => Some((*min, *max)),
            LengthDist::List(list) => {
                Some((*list.values.iter().min()?, *list.values.iter().max()?))
            }
        }
    }

    /// Problems with the parameters, as (sub-field, message); an empty list
    /// means valid. Lengths must be at least 1.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let finite_or = |name: &str, x: f64, ok: bool, want: &str, out: &mut Vec<_>| {
            if !x.is_finite() || !ok {
                out.push((name.to_string(), format!("must be {want}, got {x}")));
            }
        };
        match self {
            LengthDist::Fixed(v) => {
                if *v == 0 || *v > MAX_LENGTH {
                    out.push((
                        "fixed".into(),
                        format!("must be in 1..={MAX_LENGTH}, got {v}"),
                    ));
                }
            }
            LengthDist::Uniform { .. } => {}
            LengthDist::Normal { mean, std_dev, .. } => {
                finite_or("normal.mean", *mean, true, "finite", &mut out);
                finite_or(
                    "normal.std_dev",
                    *std_dev,
                    *std_dev >= 0.0,
                    ">= 0",
                    &mut out,
                );
            }
            LengthDist::Lognormal { mean, sigma, .. } => {
                finite_or("lognormal.mean", *mean, *mean > 0.0, "> 0", &mut out);
                finite_or("lognormal.sigma", *sigma, *sigma >= 0.0, ">= 0", &mut out);
            }
            LengthDist::List(list) => {
                if list.values.is_empty() {
                    out.push(("list".into(), "the lengths file was not read".into()));
                } else if let Some(v) = list.values.iter().find(|&&v| v > MAX_LENGTH) {
                    out.push((
                        "list".into(),
                        format!("holds {v}, above the limit {MAX_LENGTH}"),
                    ));
                }
            }
        }
        if let LengthDist::Uniform { min, max }
        | LengthDist::Normal { min, max, .. }
        | LengthDist::Lognormal { min, max, .. } = self
        {
            let kind = self.kind();
            if *min == 0 {
                out.push((format!("{kind}.min"), "a length must be at least 1".into()));
            }
            if min > max {
                out.push((
                    format!("{kind}.max"),
                    format!("must be >= min ({min}), got {max}"),
                ));
            } else if *max > MAX_LENGTH {
                out.push((
                    format!("{kind}.max"),
                    format!("must be at most {MAX_LENGTH}, got {max}"),
                ));
            }
        }
        out
    }

    /// The kind's name as written in the spec.
    pub fn kind(&self) -> &'static str {
        match self {
            LengthDist::Fixed(_) => "fixed",
            LengthDist::Uniform { .. } => "uniform",
            LengthDist::Normal { .. } => "normal",
            LengthDist::Lognormal { .. } => "lognormal",
            LengthDist::List(_) => "list",
        }
    }

    /// The length of request `index`, drawing from `rng` (lists do not draw).
    pub(crate) fn sample(&self, index: usize, rng: &mut Stream) -> u32 {
        match self {
            LengthDist::Fixed(v) => *v,
            LengthDist::Uniform { min, max } => min + rng.below(u64::from(max - min) + 1) as u32,
            LengthDist::Normal {
                mean,
                std_dev,
                min,
                max,
            } => round_clamp(mean + std_dev * rng.standard_normal(), *min, *max),
            LengthDist::Lognormal {
                mean,
                sigma,
                min,
                max,
            } => {
                let mu = libm::log(*mean) - sigma * sigma / 2.0;
                round_clamp(libm::exp(mu + sigma * rng.standard_normal()), *min, *max)
            }
            LengthDist::List(list) => list.values[index % list.values.len()],
        }
    }
}

fn round_clamp(x: f64, min: u32, max: u32) -> u32 {
    libm::round(x).clamp(f64::from(min), f64::from(max)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Purpose;

    fn draw(dist: &LengthDist, n: usize) -> Vec<u32> {
        let mut rng = Stream::new(11, Purpose::PromptLen, false);
        (0..n).map(|i| dist.sample(i, &mut rng)).collect()
    }

    fn mean(xs: &[u32]) -> f64 {
        xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64
    }

    #[test]
    fn uniform_stays_within_bounds_and_reaches_both() {
        let xs = draw(&LengthDist::Uniform { min: 16, max: 24 }, 10_000);
        assert!(xs.iter().all(|&x| (16..=24).contains(&x)));
        assert!(xs.contains(&16) && xs.contains(&24));
        assert!((mean(&xs) - 20.0).abs() < 0.1, "{}", mean(&xs));
    }

    #[test]
    fn normal_is_clamped_and_centred() {
        let d = LengthDist::Normal {
            mean: 100.0,
            std_dev: 40.0,
            min: 50,
            max: 150,
        };
        let xs = draw(&d, 50_000);
        assert!(xs.iter().all(|&x| (50..=150).contains(&x)));
        // Symmetric clamping keeps the mean; the tails pile up at the bounds.
        assert!((mean(&xs) - 100.0).abs() < 0.5, "{}", mean(&xs));
        let at_min = xs.iter().filter(|&&x| x == 50).count() as f64 / xs.len() as f64;
        assert!((at_min - 0.106).abs() < 0.01, "P(x <= 50) {at_min}");
    }

    #[test]
    fn lognormal_mean_is_the_requested_mean() {
        let d = LengthDist::Lognormal {
            mean: 200.0,
            sigma: 0.5,
            min: 1,
            max: 1_000_000,
        };
        let xs = draw(&d, 100_000);
        assert!((mean(&xs) - 200.0).abs() < 2.0, "{}", mean(&xs));
        // The median of a lognormal is exp(mu) = mean * exp(-sigma²/2) ≈ 176.5.
        let mut sorted = xs.clone();
        sorted.sort_unstable();
        let median = f64::from(sorted[sorted.len() / 2]);
        assert!((median - 176.5).abs() < 3.0, "median {median}");
    }

    #[test]
    fn list_replays_in_order() {
        let d = LengthDist::List(LengthList {
            path: "x".into(),
            values: vec![3, 1, 4],
        });
        assert_eq!(draw(&d, 7), vec![3, 1, 4, 3, 1, 4, 3]);
        assert_eq!(d.bounds(), Some((1, 4)));
    }

    #[test]
    fn lengths_file_errors_name_the_line() {
        let p = Path::new("l.txt");
        assert_eq!(
            parse_lengths(p, "# c\n3 4\n5 # x\n").unwrap(),
            vec![3, 4, 5]
        );
        let e = parse_lengths(p, "3\n4 zero\n").unwrap_err().to_string();
        assert!(e.contains("l.txt:2:") && e.contains("zero"), "{e}");
        assert!(parse_lengths(p, "0\n").is_err());
        assert!(parse_lengths(p, "# none\n").is_err());
    }

    #[test]
    fn bad_parameters_are_reported() {
        let d = LengthDist::Uniform { min: 9, max: 3 };
        assert_eq!(d.problems()[0].0, "uniform.max");
        let d = LengthDist::Lognormal {
            mean: -1.0,
            sigma: f64::NAN,
            min: 0,
            max: 3,
        };
        let fields: Vec<_> = d.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(
            fields,
            ["lognormal.mean", "lognormal.sigma", "lognormal.min"]
        );
        assert!(LengthDist::Fixed(0).problems().len() == 1);
        assert!(LengthDist::Fixed(MAX_LENGTH + 1).problems().len() == 1);
        let huge = LengthDist::Uniform {
            min: 1,
            max: u32::MAX,
        };
        assert_eq!(huge.problems()[0].0, "uniform.max");
        assert!(LengthDist::Fixed(1).problems().is_empty());
    }
}
