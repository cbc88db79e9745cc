//! Workload specs: one TOML file per workload in `workloads/specs/`.
//!
//! ```toml
//! name = "example-poisson"            # must equal the file name's stem
//! description = "Open loop at 6 req/s"
//! model = "tiny"                      # default model preset (--model overrides)
//! seed = 3                            # everything random derives from it
//! requests = 24                       # measured requests
//! warmup_requests = 4                 # run first in the same process, not measured
//!
//! # Token lengths: fixed | uniform | normal | lognormal | list (see distribution.rs)
//! prompt_len = { uniform = { min = 16, max = 48 } }
//! output_len = { fixed = 24 }        # = max_tokens of each request
//!
//! # Arrivals: "offline" | poisson | gamma | concurrency (see arrival.rs)
//! arrival = { poisson = { rate = 6.0 } }
//!
//! [prefix]          # optional: request i shares its first `length` prompt
//! groups = 4        # tokens with every request of group i mod `groups`
//! length = 16       # (prompt_len counts them; its min must exceed `length`)
//!
//! [sampling]        # optional; defaults: greedy, no top-k/top-p, ignore_eos false
//! temperature = 0.0
//! top_k = 0         # 0 = off
//! top_p = 1.0       # 1.0 = off
//! ignore_eos = true # always generate max_tokens
//!
//! [slo]             # optional, for goodput: a request is good if it meets all
//! ttft_ms = 2000.0
//! tpot_ms = 200.0
//! e2el_ms = 10000.0
//!
//! [thresholds]      # optional per-metric practical thresholds (fractions)
//! output_throughput = 0.05
//!
//! [engine]          # optional engine-knob overrides, merged into engine.toml
//! max_num_seqs = 8
//! ```
//!
//! Unknown keys are errors. Every error names the file, the line and the
//! dotted field (`arrival.poisson.rate`). Per-request sampling seeds derive
//! from `seed`; the generator ([`crate::generate`]) turns a spec and a
//! [`crate::generate::TokenSpace`] into byte-identical requests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arrival::Arrival;
use crate::distribution::{LengthDist, ListError};
use crate::location::{InvalidToml, SourceMap};
use crate::request::MAX_ARRIVAL_S;

/// Most measured (and, separately, warmup) requests a spec may ask for.
pub const MAX_REQUESTS: u32 = 10_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: String,
    pub description: String,
    /// Default model preset or checkpoint directory; the pipeline's
    /// `--model` overrides it.
    #[serde(default)]
    pub model: Option<String>,
    pub seed: u64,
    pub requests: u32,
    pub warmup_requests: u32,
    pub prompt_len: LengthDist,
    /// Output length, i.e. each request's `max_tokens`.
    pub output_len: LengthDist,
    #[serde(default)]
    pub prefix: Option<PrefixGroups>,
    pub arrival: Arrival,
    #[serde(default)]
    pub sampling: SamplingSpec,
    #[serde(default)]
    pub slo: Option<Slo>,
    /// Practical thresholds per metric (names from xtask's metric
    /// catalogue), as fractions: 0.05 = 5%.
    #[serde(default)]
    pub thresholds: BTreeMap<String, f64>,
    /// Engine-knob overrides, merged by the pipeline into engine.toml.
    #[serde(default)]
    pub engine: Option<toml::Table>,
    /// The workload means some requests to be rejected (e.g. prompts past
    /// the context, to measure admission): the pipeline then does not flag
    /// its trials for rejections.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expect_rejections: bool,
}

/// Shared-prefix groups: every request of a group starts with the same
/// `length` tokens, so prefix-cache reuse can be measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixGroups {
    pub groups: u32,
    pub length: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSpec {
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub top_k: u32,
    #[serde(default = "one")]
    pub top_p: f32,
    #[serde(default)]
    pub ignore_eos: bool,
}

fn one() -> f32 {
    1.0
}

impl Default for SamplingSpec {
    fn default() -> Self {
        SamplingSpec {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            ignore_eos: false,
        }
    }
}

/// Service-level objectives for goodput, in milliseconds (vLLM's
/// `--goodput ttft:… tpot:… e2el:…`). Absent ones are not checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    #[serde(default)]
    pub ttft_ms: Option<f64>,
    #[serde(default)]
    pub tpot_ms: Option<f64>,
    #[serde(default)]
    pub e2el_ms: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Invalid(InvalidToml),
}

impl WorkloadSpec {
    /// Reads, parses and validates the spec at `path`, and reads any
    /// lengths files it names.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` as if read from `path` (which names the
    /// spec in errors, gives the expected `name`, and anchors list paths).
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        let map = SourceMap::new(path, text);
        let mut spec: WorkloadSpec =
            toml::from_str(text).map_err(|e| SpecError::Invalid(map.invalid_from_toml(&e)))?;
        let spec_dir = path.parent().unwrap_or(Path::new("."));
        for (field, dist) in [
            ("prompt_len", &mut spec.prompt_len),
            ("output_len", &mut spec.output_len),
        ] {
            if let LengthDist::List(list) = dist {
                list.resolve(spec_dir).map_err(|e: ListError| {
                    SpecError::Invalid(map.invalid_field(&format!("{field}.list"), e.to_string()))
                })?;
            }
        }
        if let Some(problem) = spec.problems(path).into_iter().next() {
            let (field, message) = problem;
            return Err(SpecError::Invalid(map.invalid_field(&field, message)));
        }
        Ok(spec)
    }

    /// Closed-loop concurrency for `engine bench --max-concurrency`, if any.
    pub fn max_concurrency(&self) -> Option<u32> {
        self.arrival.max_concurrency()
    }

    /// Every semantic problem of a spec built in memory (a sweep point),
    /// as (dotted field, message); the name is checked as an identifier but
    /// not against a file name.
    pub fn problems_in_memory(&self) -> Vec<(String, String)> {
        self.problems(Path::new(&format!("{}.toml", self.name)))
    }

    /// Every semantic problem, as (dotted field, message).
    fn problems(&self, path: &Path) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut add = |field: &str, message: String| out.push((field.to_string(), message));

        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        if !is_identifier(&self.name) {
            add(
                "name",
                format!(
                    "`{}` must be non-empty lowercase letters, digits, `-`, `_` or `.`",
                    self.name
                ),
            );
        } else if stem.as_deref().is_some_and(|s| s != self.name) {
            add(
                "name",
                format!(
                    "`{}` must equal the file name's stem `{}`",
                    self.name,
                    stem.unwrap_or_default()
                ),
            );
        }
        if !(1..=MAX_REQUESTS).contains(&self.requests) {
            add(
                "requests",
                format!("must be in 1..={MAX_REQUESTS}, got {}", self.requests),
            );
        }
        if self.warmup_requests > MAX_REQUESTS {
            add(
                "warmup_requests",
                format!(
                    "must be at most {MAX_REQUESTS}, got {}",
                    self.warmup_requests
                ),
            );
        }
        for (field, dist) in [
            ("prompt_len", &self.prompt_len),
            ("output_len", &self.output_len),
        ] {
            for (sub, message) in dist.problems() {
                add(&format!("{field}.{sub}"), message);
            }
        }
        if let Some(prefix) = &self.prefix {
            if prefix.groups == 0 {
                add("prefix.groups", "must be at least 1".into());
            }
            if prefix.length == 0 {
                add("prefix.length", "must be at least 1".into());
            }
            if let Some((min, _)) = self.prompt_len.bounds() {
                if min <= prefix.length {
                    add(
                        "prefix.length",
                        format!(
                            "must be below the shortest prompt (prompt_len min {min}), got {}",
                            prefix.length
                        ),
                    );
                }
            }
        }
        for (sub, message) in self.arrival.problems() {
            add(&format!("arrival.{sub}"), message);
        }
        let requests = self.requests.max(self.warmup_requests);
        if let Some((sub, span_s)) = self.arrival.expected_span_s(requests) {
            if span_s.is_nan() || span_s > MAX_ARRIVAL_S {
                add(
                    &format!("arrival.{sub}"),
                    format!(
                        "{requests} requests would take about {span_s:.3e} s to arrive, past the \
                         limit of {MAX_ARRIVAL_S:.0} s; raise the rate"
                    ),
                );
            }
        }
        let s = &self.sampling;
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            add(
                "sampling.temperature",
                format!("must be >= 0, got {}", s.temperature),
            );
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            add(
                "sampling.top_p",
                format!("must be in (0, 1], got {}", s.top_p),
            );
        }
        if let Some(slo) = &self.slo {
            let all = [
                ("ttft_ms", slo.ttft_ms),
                ("tpot_ms", slo.tpot_ms),
                ("e2el_ms", slo.e2el_ms),
            ];
            if all.iter().all(|(_, v)| v.is_none()) {
                add("slo", "sets none of ttft_ms, tpot_ms, e2el_ms".into());
            }
            for (name, value) in all {
                if let Some(v) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                    add(
                        &format!("slo.{name}"),
                        format!("must be a finite number of ms > 0, got {v}"),
                    );
                }
            }
        }
        for (metric, fraction) in &self.thresholds {
            if !is_identifier(metric) {
                add(
                    &format!("thresholds.{metric}"),
                    "is not a metric name".into(),
                );
            } else if !(fraction.is_finite() && *fraction > 0.0 && *fraction < 1.0) {
                add(
                    &format!("thresholds.{metric}"),
                    format!("must be a fraction in (0, 1) (0.05 = 5%), got {fraction}"),
                );
            }
        }
        out
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
description = "test"
seed = 1
requests = 8
warmup_requests = 2
prompt_len = { uniform = { min = 16, max = 32 } }
output_len = { fixed = 8 }
arrival = { poisson = { rate = 4.0 } }
"#;

    fn parse(text: &str) -> Result<WorkloadSpec, String> {
        WorkloadSpec::parse(text, Path::new("dir/t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_minimal_spec_parses_with_defaults() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.sampling, SamplingSpec::default());
        assert_eq!(s.max_concurrency(), None);
        assert!(s.prefix.is_none() && s.slo.is_none() && s.thresholds.is_empty());
    }

    #[test]
    fn name_must_match_the_file() {
        let e = parse(&GOOD.replace("name = \"t\"", "name = \"u\"")).unwrap_err();
        assert!(e.starts_with("dir/t.toml:2: field `name`"), "{e}");
    }

    #[test]
    fn semantic_errors_name_line_and_field() {
        let cases = [
            ("rate = 4.0", "rate = 0.0", 9, "arrival.poisson.rate"),
            (
                "min = 16, max = 32",
                "min = 33, max = 32",
                7,
                "prompt_len.uniform.max",
            ),
            ("{ fixed = 8 }", "{ fixed = 0 }", 8, "output_len.fixed"),
            ("requests = 8", "requests = 0", 5, "requests"),
        ];
        for (from, to, line, field) in cases {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(
                e.starts_with(&format!("dir/t.toml:{line}: field `{field}`")),
                "{e}"
            );
        }
    }

    #[test]
    fn optional_tables_are_checked() {
        let with = |extra: &str| parse(&format!("{GOOD}{extra}"));
        assert!(with("[prefix]\ngroups = 2\nlength = 8\n").is_ok());
        let e = with("[prefix]\ngroups = 2\nlength = 16\n").unwrap_err();
        assert!(e.contains(":12: field `prefix.length`"), "{e}");
        let e = with("[slo]\n").unwrap_err();
        assert!(e.contains(":10: field `slo`"), "{e}");
        let e = with("[slo]\nttft_ms = -1\n").unwrap_err();
        assert!(e.contains(":11: field `slo.ttft_ms`"), "{e}");
        let e = with("[thresholds]\noutput_throughput = 5\n").unwrap_err();
        assert!(
            e.contains(":11: field `thresholds.output_throughput`"),
            "{e}"
        );
        let e = with("[sampling]\ntop_p = 0.0\n").unwrap_err();
        assert!(e.contains(":11: field `sampling.top_p`"), "{e}");
        let s =
            with("[thresholds]\noutput_throughput = 0.05\n[engine]\nmax_num_seqs = 4\n").unwrap();
        assert_eq!(s.thresholds["output_throughput"], 0.05);
        assert_eq!(s.engine.unwrap()["max_num_seqs"].as_integer(), Some(4));
    }

    #[test]
    fn an_arrival_rate_so_low_the_requests_never_arrive_is_an_error() {
        for rate in ["1e-300", "1e-6"] {
            let e = parse(&GOOD.replace("rate = 4.0", &format!("rate = {rate}"))).unwrap_err();
            assert!(
                e.starts_with("dir/t.toml:9: field `arrival.poisson.rate`") && e.contains("raise"),
                "{e}"
            );
        }
        assert!(parse(&GOOD.replace("rate = 4.0", "rate = 0.001")).is_ok());
    }

    #[test]
    fn expect_rejections_defaults_off_and_stays_out_of_the_json() {
        let s = parse(GOOD).unwrap();
        assert!(!s.expect_rejections);
        assert!(serde_json::to_value(&s)
            .unwrap()
            .get("expect_rejections")
            .is_none());
        let s = parse(&GOOD.replace("seed = 1", "seed = 1\nexpect_rejections = true")).unwrap();
        assert!(s.expect_rejections);
        assert_eq!(serde_json::to_value(&s).unwrap()["expect_rejections"], true);
    }

    #[test]
    fn closed_loop_exposes_its_concurrency() {
        let s =
            parse(&GOOD.replace("{ poisson = { rate = 4.0 } }", "{ concurrency = 8 }")).unwrap();
        assert_eq!(s.max_concurrency(), Some(8));
    }
}
