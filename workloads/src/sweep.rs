//! Sweep files: many workloads × engine configs from one TOML file
//! (`workloads/sweeps/*.toml`, or any path given to `cargo xtask sweep`).
//!
//! ```toml
//! name = "smollm2-tier0"          # identifier; the sweep's folder in the store
//! description = "max_num_seqs × max_num_batched_tokens, offline 1000 × (256 → 1024)"
//! trials = 1                      # optional: the pipeline's default otherwise
//!
//! [fixed]                         # settings of every experiment (lists expand here too)
//! model = "smollm2-135m"
//! seed = 11
//! requests = 1000
//! warmup_requests = 16
//! prompt_len = 256                # an integer is a fixed length; a table is a distribution
//! output_len = 1024
//! ignore_eos = true
//!
//! [[experiment]]
//! name = "batching"
//! max_num_seqs = [128, 256, 512, 1024]           # engine knob: a list is an axis
//! max_num_batched_tokens = [8192, 16384, 32768]  # 4 × 3 = 12 points
//!
//! [objective.best-tps]            # named objectives, for tiers and reports
//! maximize = "output_tps_per_gpu"
//! subject_to = { p99_ttft_ms = 2000.0 }   # upper bounds on other metrics
//!
//! [[experiment]]
//! name = "memory"
//! tier = 1                        # runs after every lower tier …
//! from = "best-tps"               # … on the engine knobs of its best point
//! gpu_memory_utilization = [0.8, 0.9, 0.95]
//! ```
//!
//! Settings (in `[fixed]` and in each `[[experiment]]`, the experiment's
//! value winning) are of three kinds: workload parameters (`model`, `seed`,
//! `requests`, `warmup_requests`, `prompt_len`, `output_len`, `prefix`,
//! `ignore_eos`, `temperature`, `top_k`, `top_p`, `slo`, `thresholds`),
//! load (`concurrency` for a closed loop; `rate` with `arrival = "poisson"`
//! (default) or `"gamma"` and `burstiness`; `arrival = "offline"`, the
//! default), and engine knobs ([`crate::engine_knobs::KNOBS`]). A list value
//! is an axis: the points are the cartesian product of every axis.
//!
//! Profiles (`profile = ...` in an experiment) generate the load instead:
//! - `"grid"` (default): the cartesian product above;
//! - `"batch"`: closed loop at each of `batch_sizes` (concurrency = B,
//!   `requests` = B unless set), for batch saturation (B_sat);
//! - `"load"`: GuideLLM's sweep: synchronous (concurrency 1), throughput
//!   (offline), then `rates` request rates evenly between the two measured
//!   request rates (the arrival process from `arrival`, default Poisson);
//! - `"capacity"`: the highest load meeting `slo` for `attainment` of the
//!   requests (`search = "rate"` or `"concurrency"`), by an exponential probe
//!   from `start` then bisection to a relative `precision`, at most
//!   `max_probes` points.
//!
//! The `load` and `capacity` profiles and tiers above 0 make their points
//! at run time (they depend on measurements); the rest are known from the
//! file alone. Every error names the file, the line and the field.
//!
//! A point's id is the blake3 of what defines it (the resolved workload with
//! its model and engine knobs, and the trial count), so the same point in two
//! runs of a file (or two files) has the same id: that is what resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::arrival::Arrival;
use crate::distribution::LengthDist;
use crate::engine_knobs;
use crate::location::{InvalidToml, SourceMap};
use crate::spec::{PrefixGroups, SamplingSpec, Slo, SpecError, WorkloadSpec};
use crate::suite::SuiteDevice;

/// Workload parameters a sweep may set.
pub const WORKLOAD_KEYS: &[&str] = &[
    "model",
    "seed",
    "requests",
    "warmup_requests",
    "prompt_len",
    "output_len",
    "prefix",
    "ignore_eos",
    "temperature",
    "top_k",
    "top_p",
    "slo",
    "thresholds",
];

/// Load settings a sweep may set.
pub const LOAD_KEYS: &[&str] = &["concurrency", "rate", "arrival", "burstiness"];

/// Keys that describe an experiment rather than a point (never expanded).
pub const EXPERIMENT_KEYS: &[&str] = &[
    "name",
    "tier",
    "from",
    "profile",
    "batch_sizes",
    "rates",
    "search",
    "attainment",
    "start",
    "precision",
    "max_probes",
];

/// Significant digits kept of a generated request rate, so a resumed sweep
/// computes the same point ids from the same stored measurements.
const RATE_DIGITS: i32 = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct SweepFile {
    pub path: PathBuf,
    pub name: String,
    pub description: String,
    pub trials: Option<u32>,
    /// The device the sweep is sized for, if it says.
    pub device: Option<SuiteDevice>,
    pub experiments: Vec<Experiment>,
    pub objectives: BTreeMap<String, Objective>,
    /// `[slurm]`: settings of the SLURM launcher (partition, qos, time,
    /// ...), read and checked by xtask's launcher (docs/CLUSTER.md).
    pub slurm: Option<Table>,
    /// The file's text, to locate problems found later (objective metrics).
    text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    /// Position in the file (`experiment[index]` in errors).
    pub index: usize,
    pub tier: u32,
    /// Objective whose best point (over every lower tier) gives this
    /// experiment's starting engine knobs; set exactly when `tier > 0`.
    pub from: Option<String>,
    pub profile: Profile,
    /// `[fixed]` overlaid with the experiment's own settings.
    settings: Table,
    /// Where each setting was written: `fixed.KEY` or `experiment[i].KEY`.
    origin: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Profile {
    Grid,
    Batch { batch_sizes: Vec<u32> },
    Load { rates: u32 },
    Capacity(CapacitySearch),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchAxis {
    Rate,
    Concurrency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacitySearch {
    pub search: SearchAxis,
    /// Fraction of requests that must meet every SLO (0.99 = 99 %).
    pub attainment: f64,
    /// First probe: a rate in req/s or a concurrency.
    pub start: f64,
    /// Bisection stops when the bracket is narrower than this fraction of
    /// its lower end.
    pub precision: f64,
    pub max_probes: u32,
}

/// Best point by `metric`, among points whose `subject_to` metrics are at
/// most their bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub name: String,
    pub metric: String,
    pub maximize: bool,
    pub subject_to: BTreeMap<String, f64>,
}

/// What a point is measured under: one workload on one engine config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// 16 hex digits of the blake3 of [`Point::definition`].
    pub id: String,
    pub sweep: String,
    pub experiment: String,
    pub tier: u32,
    /// `key-value` of each axis (and the generated load), joined by `.`.
    pub label: String,
    /// The values of the axes and of the load, for reports.
    pub axes: BTreeMap<String, serde_json::Value>,
    /// The workload, named `<sweep>.<experiment>[.<label>]`; its `engine`
    /// table holds the point's knobs and its `model` the model.
    pub spec: WorkloadSpec,
    pub trials: Option<u32>,
}

impl Point {
    /// What defines the point: the resolved workload less its name and
    /// description, and the trial count.
    pub fn definition(spec: &WorkloadSpec, trials: Option<u32>) -> serde_json::Value {
        let mut value = serde_json::to_value(spec).unwrap_or(serde_json::Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.remove("name");
            map.remove("description");
        }
        serde_json::json!({ "workload": value, "trials": trials })
    }

    /// The engine knobs (empty when all are defaults).
    pub fn engine(&self) -> Table {
        self.spec.engine.clone().unwrap_or_default()
    }
}

/// Hex blake3 (16 digits) of a JSON value with every object's keys sorted.
pub fn point_id(definition: &serde_json::Value) -> String {
    let mut bytes = Vec::new();
    write_canonical(definition, &mut bytes);
    blake3::hash(&bytes).to_hex()[..16].to_string()
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value as J;
    match value {
        J::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_string(k).unwrap_or_default().as_bytes());
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        J::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        other => out.extend(other.to_string().as_bytes()),
    }
}

/// The load of one point, as generated by a profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Offline,
    Concurrency(u32),
    /// Open loop at `rate` req/s with the experiment's arrival process.
    Rate(f64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    name: String,
    description: String,
    #[serde(default)]
    trials: Option<u32>,
    #[serde(default)]
    device: Option<SuiteDevice>,
    #[serde(default)]
    fixed: Table,
    #[serde(default, rename = "experiment")]
    experiments: Vec<Table>,
    #[serde(default, rename = "objective")]
    objectives: BTreeMap<String, RawObjective>,
    #[serde(default)]
    slurm: Option<Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjective {
    #[serde(default)]
    maximize: Option<String>,
    #[serde(default)]
    minimize: Option<String>,
    #[serde(default)]
    subject_to: BTreeMap<String, f64>,
}

type Problem = (String, String);

impl SweepFile {
    pub fn load(path: &Path) -> Result<SweepFile, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text` as if read from `path`: every static point
    /// is built once, so a bad value fails here, not hours into a sweep.
    pub fn parse(text: &str, path: &Path) -> Result<SweepFile, SpecError> {
        let map = SourceMap::new(path, text);
        let invalid =
            |(field, message): Problem| SpecError::Invalid(map.invalid_field(&field, message));
        let raw: RawSweep =
            toml::from_str(text).map_err(|e| SpecError::Invalid(map.invalid_from_toml(&e)))?;
        if !is_identifier(&raw.name) {
            return Err(invalid((
                "name".into(),
                format!(
                    "`{}` must be lowercase letters, digits, `-`, `_` or `.`",
                    raw.name
                ),
            )));
        }
        if raw.trials == Some(0) {
            return Err(invalid(("trials".into(), "must be at least 1".into())));
        }
        if raw.experiments.is_empty() {
            return Err(SpecError::Invalid(
                map.invalid_document("defines no [[experiment]]"),
            ));
        }
        for (key, value) in &raw.fixed {
            check_setting(key, value, &format!("fixed.{key}")).map_err(invalid)?;
        }
        let mut objectives = BTreeMap::new();
        for (name, o) in raw.objectives {
            let at = format!("objective.{name}");
            let (metric, maximize) = match (o.maximize, o.minimize) {
                (Some(m), None) => (m, true),
                (None, Some(m)) => (m, false),
                _ => {
                    return Err(invalid((
                        at,
                        "needs exactly one of `maximize` or `minimize` (a metric name)".into(),
                    )))
                }
            };
            for (metric, bound) in &o.subject_to {
                if !bound.is_finite() {
                    return Err(invalid((
                        format!("{at}.subject_to.{metric}"),
                        format!("must be a finite upper bound, got {bound}"),
                    )));
                }
            }
            objectives.insert(
                name.clone(),
                Objective {
                    name,
                    metric,
                    maximize,
                    subject_to: o.subject_to,
                },
            );
        }
        let mut experiments = Vec::new();
        for (index, table) in raw.experiments.iter().enumerate() {
            let exp = parse_experiment(index, table, &raw.fixed, &objectives).map_err(invalid)?;
            if experiments.iter().any(|e: &Experiment| e.name == exp.name) {
                return Err(invalid((
                    format!("experiment[{index}].name"),
                    format!("`{}` names two experiments", exp.name),
                )));
            }
            experiments.push(exp);
        }
        let file = SweepFile {
            path: path.to_path_buf(),
            name: raw.name,
            description: raw.description,
            trials: raw.trials,
            device: raw.device,
            experiments,
            objectives,
            slurm: raw.slurm,
            text: text.to_string(),
        };
        // Build every point once (with the lowest load a profile would use)
        // so that bad settings fail now, located.
        for exp in &file.experiments {
            let loads: Vec<Option<Load>> = match &exp.profile {
                Profile::Grid => vec![None],
                Profile::Batch { batch_sizes } => batch_sizes
                    .iter()
                    .map(|b| Some(Load::Concurrency(*b)))
                    .collect(),
                Profile::Load { .. } => vec![Some(Load::Concurrency(1)), Some(Load::Offline)],
                Profile::Capacity(c) => vec![Some(match c.search {
                    SearchAxis::Rate => Load::Rate(c.start),
                    SearchAxis::Concurrency => Load::Concurrency(c.start as u32),
                })],
            };
            for load in loads {
                file.points_with(exp, None, load)?;
            }
        }
        Ok(file)
    }

    /// A problem at a dotted field of the file (for checks made by the
    /// pipeline, e.g. of objective metric names).
    pub fn invalid_field(&self, field: &str, message: impl Into<String>) -> InvalidToml {
        SourceMap::new(&self.path, &self.text).invalid_field(field, message)
    }

    pub fn experiment(&self, name: &str) -> Option<&Experiment> {
        self.experiments.iter().find(|e| e.name == name)
    }

    /// Tiers in increasing order.
    pub fn tiers(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self.experiments.iter().map(|e| e.tier).collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// The points an experiment's settings expand to, known without
    /// measuring: every grid and batch point of tier 0. Tiers above 0 need
    /// `base_engine` (the best lower-tier point's knobs), and `load` and
    /// `capacity` profiles make theirs at run time (see [`Self::points_with`]).
    pub fn static_points(&self, exp: &Experiment) -> Option<Vec<Point>> {
        if exp.tier > 0 {
            return None;
        }
        self.planned_points(exp, None)
    }

    /// The grid or batch points of `exp` on top of `base_engine`; `None` for
    /// profiles whose points depend on measurements.
    pub fn planned_points(
        &self,
        exp: &Experiment,
        base_engine: Option<&Table>,
    ) -> Option<Vec<Point>> {
        match &exp.profile {
            Profile::Grid => self.points_with(exp, base_engine, None).ok(),
            Profile::Batch { batch_sizes } => {
                let mut out = Vec::new();
                for b in batch_sizes {
                    out.extend(
                        self.points_with(exp, base_engine, Some(Load::Concurrency(*b)))
                            .ok()?,
                    );
                }
                Some(out)
            }
            Profile::Load { .. } | Profile::Capacity(_) => None,
        }
    }

    /// Every point of `exp` (one per combination of its axes) with `load`
    /// overriding the settings' load when given, on top of `base_engine`.
    pub fn points_with(
        &self,
        exp: &Experiment,
        base_engine: Option<&Table>,
        load: Option<Load>,
    ) -> Result<Vec<Point>, SpecError> {
        let map = SourceMap::new(&self.path, &self.text);
        let mut out = Vec::new();
        for combo in exp.combinations() {
            let point =
                self.build_point(exp, &combo, base_engine, load)
                    .map_err(|(field, message)| {
                        let at = exp.origin.get(&field).cloned().unwrap_or_else(|| {
                            // A nested field (`prompt_len.uniform.max`): locate its key.
                            let key = field.split(['.', '[']).next().unwrap_or(&field);
                            match exp.origin.get(key) {
                                Some(o) => format!("{o}{}", &field[key.len()..]),
                                None => format!("experiment[{}]", exp.index),
                            }
                        });
                        SpecError::Invalid(map.invalid_field(&at, message))
                    })?;
            out.push(point);
        }
        Ok(out)
    }

    fn build_point(
        &self,
        exp: &Experiment,
        combo: &Combination,
        base_engine: Option<&Table>,
        load: Option<Load>,
    ) -> Result<Point, Problem> {
        let s = &combo.values;
        let get = |k: &str| s.get(k);
        let int = |k: &str, default: Option<i64>| -> Result<i64, Problem> {
            match get(k) {
                Some(v) => v
                    .as_integer()
                    .ok_or_else(|| (k.into(), "must be an integer".into())),
                None => default.ok_or_else(|| (k.into(), "is required".into())),
            }
        };
        let u32_of = |k: &str, default: Option<i64>| -> Result<u32, Problem> {
            let v = int(k, default)?;
            u32::try_from(v)
                .map_err(|_| (k.to_string(), format!("must be in 0..=4294967295, got {v}")))
        };
        let float = |k: &str| -> Result<Option<f64>, Problem> {
            match get(k) {
                None => Ok(None),
                Some(Value::Float(f)) => Ok(Some(*f)),
                Some(Value::Integer(i)) => Ok(Some(*i as f64)),
                Some(_) => Err((k.into(), "must be a number".into())),
            }
        };
        let length = |k: &str| -> Result<LengthDist, Problem> {
            match get(k) {
                None => Err((k.into(), "is required".into())),
                Some(Value::Integer(n)) => u32::try_from(*n)
                    .map(LengthDist::Fixed)
                    .map_err(|_| (k.to_string(), format!("must be a length, got {n}"))),
                Some(v) => {
                    let mut dist: LengthDist = v
                        .clone()
                        .try_into()
                        .map_err(|e: toml::de::Error| (k.to_string(), e.message().to_string()))?;
                    if let LengthDist::List(list) = &mut dist {
                        let dir = self.path.parent().unwrap_or(Path::new("."));
                        list.resolve(dir)
                            .map_err(|e| (format!("{k}.list"), e.to_string()))?;
                    }
                    Ok(dist)
                }
            }
        };
        let table_of = |k: &str| -> Result<Option<Value>, Problem> {
            match get(k) {
                None => Ok(None),
                Some(v @ Value::Table(_)) => Ok(Some(v.clone())),
                Some(_) => Err((k.into(), "must be a table".into())),
            }
        };

        // Load: the profile's, else the settings'.
        let rate_arrival = |rate: f64| -> Result<Arrival, Problem> {
            match get("arrival").and_then(Value::as_str) {
                None | Some("poisson") => Ok(Arrival::Poisson { rate }),
                Some("gamma") => {
                    let burstiness = float("burstiness")?.ok_or_else(|| {
                        (
                            "burstiness".to_string(),
                            "is required by arrival = \"gamma\"".to_string(),
                        )
                    })?;
                    Ok(Arrival::Gamma { rate, burstiness })
                }
                Some(other) => Err((
                    "arrival".into(),
                    format!(
                        "a request rate needs arrival \"poisson\" or \"gamma\", got \"{other}\""
                    ),
                )),
            }
        };
        let mut axes = combo.axes.clone();
        let mut extra_label = Vec::new();
        let arrival = match load {
            Some(Load::Offline) => {
                extra_label.push("throughput".to_string());
                axes.insert("load".into(), "throughput".into());
                Arrival::Offline
            }
            Some(Load::Concurrency(n)) => {
                extra_label.push(format!("concurrency-{n}"));
                axes.insert("concurrency".into(), n.into());
                Arrival::Concurrency(n)
            }
            Some(Load::Rate(r)) => {
                let r = round_significant(r, RATE_DIGITS);
                extra_label.push(format!("rate-{}", label_value(&Value::Float(r))));
                axes.insert("rate".into(), serde_json::json!(r));
                rate_arrival(r)?
            }
            None => match (get("concurrency"), get("rate")) {
                (Some(_), Some(_)) => {
                    return Err((
                        "rate".into(),
                        "a point has either `concurrency` or `rate`, not both".into(),
                    ))
                }
                (Some(_), None) => Arrival::Concurrency(u32_of("concurrency", None)?),
                (None, Some(_)) => rate_arrival(float("rate")?.unwrap_or(0.0))?,
                (None, None) => match get("arrival").and_then(Value::as_str) {
                    None | Some("offline") => Arrival::Offline,
                    Some(other) => {
                        return Err((
                            "arrival".into(),
                            format!("arrival \"{other}\" needs a `rate`"),
                        ))
                    }
                },
            },
        };
        if load.is_some() {
            for k in ["concurrency", "rate"] {
                if s.contains_key(k) {
                    return Err((
                        k.into(),
                        format!("is set by the experiment's profile; remove `{k}`"),
                    ));
                }
            }
        }
        let requests_default = match load {
            Some(Load::Concurrency(b)) if matches!(exp.profile, Profile::Batch { .. }) => {
                Some(i64::from(b))
            }
            _ => None,
        };

        let mut engine = base_engine.cloned().unwrap_or_default();
        for (k, v) in s {
            if engine_knobs::is_knob(k) {
                engine.insert(k.clone(), v.clone());
            }
        }
        let sampling = SamplingSpec {
            temperature: float("temperature")?.unwrap_or(0.0) as f32,
            top_k: u32_of("top_k", Some(0))?,
            top_p: float("top_p")?.unwrap_or(1.0) as f32,
            ignore_eos: match get("ignore_eos") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| {
                    (
                        "ignore_eos".to_string(),
                        "must be true or false".to_string(),
                    )
                })?,
            },
        };
        let slo: Option<Slo> = table_of("slo")?
            .map(|v| {
                v.try_into()
                    .map_err(|e: toml::de::Error| ("slo".to_string(), e.message().to_string()))
            })
            .transpose()?;
        let prefix: Option<PrefixGroups> = table_of("prefix")?
            .map(|v| {
                v.try_into()
                    .map_err(|e: toml::de::Error| ("prefix".to_string(), e.message().to_string()))
            })
            .transpose()?;
        let thresholds: BTreeMap<String, f64> = table_of("thresholds")?
            .map(|v| {
                v.try_into().map_err(|e: toml::de::Error| {
                    ("thresholds".to_string(), e.message().to_string())
                })
            })
            .transpose()?
            .unwrap_or_default();
        let model = match get("model") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| {
                        (
                            "model".to_string(),
                            "must be a preset name or a directory".to_string(),
                        )
                    })?
                    .to_string(),
            ),
        };

        let mut labels: Vec<String> = combo.labels.clone();
        labels.extend(extra_label);
        let label = labels.join(".");
        let name = if label.is_empty() {
            format!("{}.{}", self.name, exp.name)
        } else {
            format!("{}.{}.{}", self.name, exp.name, label)
        };
        let spec = WorkloadSpec {
            name,
            description: format!(
                "sweep {} experiment {}{}",
                self.name,
                exp.name,
                if label.is_empty() {
                    String::new()
                } else {
                    format!(": {label}")
                }
            ),
            model,
            seed: int("seed", Some(0))? as u64,
            requests: u32_of("requests", requests_default)?,
            warmup_requests: u32_of("warmup_requests", Some(0))?,
            prompt_len: length("prompt_len")?,
            output_len: length("output_len")?,
            prefix,
            arrival,
            sampling,
            slo,
            thresholds,
            engine: (!engine.is_empty()).then_some(engine),
            // A sweep point's rejections are flagged like any workload's.
            expect_rejections: false,
        };
        if let Some((field, message)) = spec.problems_in_memory().into_iter().next() {
            // Spec fields map back to settings: arrival.* is the load,
            // sampling.* the flat sampling keys, engine.* the knobs.
            let field = match field.as_str() {
                f if f.starts_with("arrival.") => {
                    if f.ends_with("burstiness") {
                        "burstiness".into()
                    } else if f.ends_with("concurrency") {
                        "concurrency".into()
                    } else {
                        "rate".into()
                    }
                }
                f if f.starts_with("sampling.") => f["sampling.".len()..].to_string(),
                "name" => return Err((format!("experiment[{}].name", exp.index), message)),
                f => f.to_string(),
            };
            return Err((field, message));
        }
        let trials = self.trials;
        let id = point_id(&Point::definition(&spec, trials));
        Ok(Point {
            id,
            sweep: self.name.clone(),
            experiment: exp.name.clone(),
            tier: exp.tier,
            label,
            axes,
            spec,
            trials,
        })
    }
}

/// One combination of an experiment's axes.
#[derive(Debug, Clone)]
struct Combination {
    /// Every setting with a single value.
    values: Table,
    axes: BTreeMap<String, serde_json::Value>,
    labels: Vec<String>,
}

impl Experiment {
    /// The cartesian product of the list-valued settings (axes in key order,
    /// the last varying fastest).
    fn combinations(&self) -> Vec<Combination> {
        let mut combos = vec![Combination {
            values: Table::new(),
            axes: BTreeMap::new(),
            labels: Vec::new(),
        }];
        for (key, value) in &self.settings {
            match value {
                Value::Array(items) => {
                    let mut next = Vec::with_capacity(combos.len() * items.len());
                    for c in &combos {
                        for item in items {
                            let mut c = c.clone();
                            c.values.insert(key.clone(), item.clone());
                            c.axes.insert(key.clone(), toml_to_json(item));
                            c.labels.push(format!("{key}-{}", label_value(item)));
                            next.push(c);
                        }
                    }
                    combos = next;
                }
                v => {
                    for c in &mut combos {
                        c.values.insert(key.clone(), v.clone());
                    }
                }
            }
        }
        combos
    }

    /// The settings after overlaying `[fixed]` with the experiment's own.
    pub fn settings(&self) -> &Table {
        &self.settings
    }

    /// Number of grid combinations (product of axis lengths).
    pub fn combination_count(&self) -> usize {
        self.settings
            .values()
            .map(|v| match v {
                Value::Array(a) => a.len(),
                _ => 1,
            })
            .product()
    }
}

fn parse_experiment(
    index: usize,
    table: &Table,
    fixed: &Table,
    objectives: &BTreeMap<String, Objective>,
) -> Result<Experiment, Problem> {
    let at = |k: &str| format!("experiment[{index}].{k}");
    let name = match table.get("name") {
        Some(Value::String(s)) if is_identifier(s) => s.clone(),
        Some(_) => {
            return Err((
                at("name"),
                "must be lowercase letters, digits, `-`, `_` or `.`".into(),
            ))
        }
        None => return Err((format!("experiment[{index}]"), "needs a `name`".into())),
    };
    let mut settings = fixed.clone();
    let mut origin: BTreeMap<String, String> = fixed
        .keys()
        .map(|k| (k.clone(), format!("fixed.{k}")))
        .collect();
    for (key, value) in table {
        if EXPERIMENT_KEYS.contains(&key.as_str()) {
            continue;
        }
        check_setting(key, value, &at(key))?;
        settings.insert(key.clone(), value.clone());
        origin.insert(key.clone(), at(key));
    }
    let uint = |k: &str| -> Result<Option<u32>, Problem> {
        match table.get(k) {
            None => Ok(None),
            Some(Value::Integer(i)) => u32::try_from(*i)
                .map(Some)
                .map_err(|_| (at(k), format!("must be a non-negative integer, got {i}"))),
            Some(_) => Err((at(k), "must be an integer".into())),
        }
    };
    let num = |k: &str| -> Result<Option<f64>, Problem> {
        match table.get(k) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(Value::Float(f)) => Ok(Some(*f)),
            Some(_) => Err((at(k), "must be a number".into())),
        }
    };
    let tier = uint("tier")?.unwrap_or(0);
    let from = match table.get("from") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err((at("from"), "must name an objective".into())),
    };
    match (&from, tier) {
        (None, t) if t > 0 => {
            return Err((
                at("tier"),
                format!(
                    "tier {t} needs `from = \"<objective>\"` to pick the best lower-tier point"
                ),
            ))
        }
        (Some(_), 0) => {
            return Err((
                at("from"),
                "tier 0 has no lower tier to start from; set `tier`".into(),
            ))
        }
        (Some(o), _) if !objectives.contains_key(o) => {
            let known: Vec<&str> = objectives.keys().map(String::as_str).collect();
            return Err((
                at("from"),
                format!(
                    "no objective `{o}`; defined: {}",
                    if known.is_empty() {
                        "none (add [objective.NAME])".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        _ => {}
    }
    let profile_name = match table.get("profile") {
        None => "grid",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err((
                at("profile"),
                "must be \"grid\", \"batch\", \"load\" or \"capacity\"".into(),
            ))
        }
    };
    let only_for = |keys: &[&str], profile: &str| -> Result<(), Problem> {
        for k in keys {
            if table.contains_key(*k) && profile_name != profile {
                return Err((at(k), format!("is a setting of profile \"{profile}\"")));
            }
        }
        Ok(())
    };
    only_for(&["batch_sizes"], "batch")?;
    only_for(&["rates"], "load")?;
    only_for(
        &["search", "attainment", "start", "precision", "max_probes"],
        "capacity",
    )?;
    let profile = match profile_name {
        "grid" => Profile::Grid,
        "batch" => {
            let sizes = match table.get("batch_sizes") {
                Some(Value::Array(items)) if !items.is_empty() => items
                    .iter()
                    .map(|v| {
                        v.as_integer()
                            .and_then(|i| u32::try_from(i).ok())
                            .filter(|&b| b > 0)
                    })
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| (at("batch_sizes"), "must be batch sizes >= 1".to_string()))?,
                Some(Value::Array(_)) => {
                    return Err((at("batch_sizes"), "is an empty list".into()))
                }
                _ => {
                    return Err((
                        format!("experiment[{index}]"),
                        "profile \"batch\" needs `batch_sizes = [1, 2, 4, ...]`".into(),
                    ))
                }
            };
            Profile::Batch { batch_sizes: sizes }
        }
        "load" => {
            let rates = uint("rates")?.unwrap_or(5);
            if rates == 0 {
                return Err((at("rates"), "must be at least 1".into()));
            }
            Profile::Load { rates }
        }
        "capacity" => {
            let search = match table.get("search") {
                None => SearchAxis::Rate,
                Some(Value::String(s)) if s == "rate" => SearchAxis::Rate,
                Some(Value::String(s)) if s == "concurrency" => SearchAxis::Concurrency,
                Some(_) => {
                    return Err((at("search"), "must be \"rate\" or \"concurrency\"".into()))
                }
            };
            let attainment = num("attainment")?.unwrap_or(0.99);
            if !(attainment > 0.0 && attainment < 1.0) {
                return Err((
                    at("attainment"),
                    format!("must be a fraction in (0, 1), got {attainment}"),
                ));
            }
            let start = num("start")?.unwrap_or(1.0);
            if !(start.is_finite() && start > 0.0)
                || (search == SearchAxis::Concurrency && start < 1.0)
            {
                return Err((
                    at("start"),
                    format!("must be a positive rate or a concurrency >= 1, got {start}"),
                ));
            }
            let precision = num("precision")?.unwrap_or(0.1);
            if !(precision > 0.0 && precision < 1.0) {
                return Err((
                    at("precision"),
                    format!("must be a fraction in (0, 1), got {precision}"),
                ));
            }
            let max_probes = uint("max_probes")?.unwrap_or(12);
            if max_probes < 2 {
                return Err((at("max_probes"), "must be at least 2".into()));
            }
            let has_slo = settings
                .get("slo")
                .and_then(Value::as_table)
                .is_some_and(|t| !t.is_empty());
            if !has_slo {
                return Err((format!("experiment[{index}]"), "profile \"capacity\" needs `slo = { ttft_ms = ..., tpot_ms = ... }` (here or in [fixed])".into()));
            }
            Profile::Capacity(CapacitySearch {
                search,
                attainment,
                start,
                precision,
                max_probes,
            })
        }
        other => {
            return Err((
                at("profile"),
                format!("unknown profile \"{other}\"; profiles: grid, batch, load, capacity"),
            ))
        }
    };
    if matches!(profile, Profile::Load { .. } | Profile::Capacity(_)) {
        for (k, v) in &settings {
            if matches!(v, Value::Array(_))
                && !engine_knobs::is_knob(k)
                && !WORKLOAD_KEYS.contains(&k.as_str())
            {
                return Err((
                    origin[k].clone(),
                    format!(
                        "profile \"{profile_name}\" sets the load itself; `{k}` cannot be a list"
                    ),
                ));
            }
        }
    }
    Ok(Experiment {
        name,
        index,
        tier,
        from,
        profile,
        settings,
        origin,
    })
}

/// A setting's key must be known and a list must be non-empty and flat.
fn check_setting(key: &str, value: &Value, at: &str) -> Result<(), Problem> {
    let known =
        WORKLOAD_KEYS.contains(&key) || LOAD_KEYS.contains(&key) || engine_knobs::is_knob(key);
    if !known {
        return Err((
            at.to_string(),
            format!(
                "unknown setting `{key}`; engine knobs: {}; workload: {}; load: {}",
                engine_knobs::KNOBS.join(", "),
                WORKLOAD_KEYS.join(", "),
                LOAD_KEYS.join(", ")
            ),
        ));
    }
    if let Value::Array(items) = value {
        if items.is_empty() {
            return Err((
                at.to_string(),
                "is an empty list: an axis needs at least one value".into(),
            ));
        }
        if items.iter().any(|v| matches!(v, Value::Array(_))) {
            return Err((at.to_string(), "a list of lists is not an axis".into()));
        }
    }
    Ok(())
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn round_significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// A value as it appears in a point's label (lowercase, no spaces).
fn label_value(v: &Value) -> String {
    let raw = match v {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        other => {
            let json = toml_to_json(other).to_string();
            format!("h{}", &blake3::hash(json.as_bytes()).to_hex()[..8])
        }
    };
    raw.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn toml_to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"name = "s"
description = "test sweep"
trials = 1

[fixed]
model = "tiny"
seed = 3
requests = 4
prompt_len = 16
output_len = 8
ignore_eos = true
concurrency = [1, 2, 4]

[[experiment]]
name = "grid"
max_num_seqs = [4, 8]
max_num_batched_tokens = [64, 128]
"#;

    fn parse(text: &str) -> Result<SweepFile, String> {
        SweepFile::parse(text, Path::new("dir/s.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn grid_is_the_cartesian_product() {
        let f = parse(GOOD).unwrap();
        let exp = &f.experiments[0];
        assert_eq!(exp.combination_count(), 12);
        let points = f.static_points(exp).unwrap();
        assert_eq!(points.len(), 12);
        let mut ids: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 12, "ids are distinct");
        let p = &points[0];
        assert_eq!(p.spec.arrival, Arrival::Concurrency(1));
        assert_eq!(p.engine()["max_num_seqs"].as_integer(), Some(4));
        assert_eq!(p.spec.prompt_len, LengthDist::Fixed(16));
        assert!(p.spec.sampling.ignore_eos);
        assert_eq!(
            p.label,
            "concurrency-1.max_num_batched_tokens-64.max_num_seqs-4"
        );
        assert_eq!(p.spec.name, format!("s.grid.{}", p.label));
    }

    #[test]
    fn point_ids_depend_on_the_definition_only() {
        let a = parse(GOOD).unwrap();
        // Renaming the experiment and the sweep keeps the ids.
        let b = parse(
            &GOOD
                .replace("name = \"grid\"", "name = \"other\"")
                .replace("description = \"test sweep\"", "description = \"x\""),
        )
        .unwrap();
        let ids = |f: &SweepFile| -> Vec<String> {
            f.static_points(&f.experiments[0])
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect()
        };
        assert_eq!(ids(&a), ids(&b));
        // Changing a value changes them.
        let c = parse(&GOOD.replace("seed = 3", "seed = 4")).unwrap();
        assert_ne!(ids(&a), ids(&c));
        let d = parse(&GOOD.replace("trials = 1", "trials = 2")).unwrap();
        assert_ne!(ids(&a), ids(&d));
    }

    #[test]
    fn bad_files_name_file_line_and_field() {
        let cases = [
            // unknown knob
            (
                "max_num_seqs = [4, 8]",
                "max_num_seq = [4, 8]",
                16,
                "experiment[0].max_num_seq",
                "unknown setting",
            ),
            // empty list
            (
                "concurrency = [1, 2, 4]",
                "concurrency = []",
                12,
                "fixed.concurrency",
                "empty list",
            ),
            // a bad value inside a point
            (
                "output_len = 8",
                "output_len = 0",
                10,
                "fixed.output_len.fixed",
                "must be in",
            ),
        ];
        for (from, to, line, field, message) in cases {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(
                e.starts_with(&format!("dir/s.toml:{line}: field `{field}`"))
                    && e.contains(message),
                "{e}"
            );
        }
        let e = parse(&format!("{GOOD}\n[[experiment]]\nname = \"t1\"\ntier = 1\nfrom = \"best\"\nmax_num_seqs = [2]\n")).unwrap_err();
        assert!(
            e.starts_with("dir/s.toml:22: field `experiment[1].from`")
                && e.contains("no objective `best`"),
            "{e}"
        );
        let e = parse(&format!(
            "{GOOD}\n[[experiment]]\nname = \"t1\"\ntier = 1\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("experiment[1].tier") && e.contains("needs `from"),
            "{e}"
        );
    }

    #[test]
    fn tiers_and_objectives_parse() {
        let text = format!(
            "{GOOD}\n[objective.best]\nmaximize = \"output_tps_per_gpu\"\nsubject_to = {{ p99_ttft_ms = 200.0 }}\n\n[[experiment]]\nname = \"t1\"\ntier = 1\nfrom = \"best\"\nblock_size = [16, 32]\n"
        );
        let f = parse(&text).unwrap();
        assert_eq!(f.tiers(), vec![0, 1]);
        let o = &f.objectives["best"];
        assert!(o.maximize && o.subject_to["p99_ttft_ms"] == 200.0);
        let t1 = f.experiment("t1").unwrap();
        assert!(f.static_points(t1).is_none());
        let mut base = Table::new();
        base.insert("max_num_seqs".into(), Value::Integer(8));
        let points = f.planned_points(t1, Some(&base)).unwrap();
        assert_eq!(points.len(), 6);
        assert_eq!(points[0].engine()["max_num_seqs"].as_integer(), Some(8));
        assert_eq!(points[0].engine()["block_size"].as_integer(), Some(16));
    }

    #[test]
    fn profiles_make_their_load() {
        let text = r#"name = "p"
description = "profiles"
[fixed]
prompt_len = 16
output_len = 32
requests = 8
[[experiment]]
name = "b"
profile = "batch"
batch_sizes = [1, 2, 4]
[[experiment]]
name = "l"
profile = "load"
rates = 3
arrival = "gamma"
burstiness = 0.5
[[experiment]]
name = "c"
profile = "capacity"
slo = { ttft_ms = 200.0, tpot_ms = 20.0 }
"#;
        let f = parse(text).unwrap();
        let b = f.static_points(&f.experiments[0]).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[2].spec.arrival, Arrival::Concurrency(4));
        assert_eq!(b[2].spec.requests, 8, "`requests` from [fixed]");
        let only_batch = text.split("[[experiment]]\nname = \"l\"").next().unwrap();
        let f2 = parse(&only_batch.replace("requests = 8\n", "")).unwrap();
        let b = f2.static_points(&f2.experiments[0]).unwrap();
        assert_eq!(
            b[2].spec.requests, 4,
            "a batch point has B requests by default"
        );
        let l = &f.experiments[1];
        assert!(f.static_points(l).is_none());
        let p = f.points_with(l, None, Some(Load::Rate(3.333333))).unwrap();
        assert_eq!(
            p[0].spec.arrival,
            Arrival::Gamma {
                rate: 3.333,
                burstiness: 0.5
            }
        );
        assert_eq!(p[0].label, "rate-3.333");
        match &f.experiments[2].profile {
            Profile::Capacity(c) => assert_eq!((c.search, c.attainment), (SearchAxis::Rate, 0.99)),
            other => panic!("{other:?}"),
        }
        let e = parse(&text.replace("slo = { ttft_ms = 200.0, tpot_ms = 20.0 }", "")).unwrap_err();
        assert!(e.contains("needs `slo"), "{e}");
        let e = parse(&text.replace("rates = 3", "rates = 3\nconcurrency = 4")).unwrap_err();
        assert!(e.contains("set by the experiment's profile"), "{e}");
    }
}
