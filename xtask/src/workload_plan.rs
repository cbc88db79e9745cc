//! From the workloads catalogue to what the bench flow runs: the selected
//! specs, and for each its requests (generated for the model's vocabulary),
//! SLOs, concurrency and engine overrides.

use std::path::Path;

use anyhow::Context;
use workloads::catalogue::Catalogue;
use workloads::generate::{requests_hash, TokenSpace};
use workloads::spec::WorkloadSpec;
use workloads::suite::SuiteDevice;
use workloads::Request;

use crate::metrics::Slos;
use crate::model::Vocab;

/// The workloads a run measures, before the model is known.
#[derive(Debug, Clone)]
pub struct Selection {
    pub suite: Option<String>,
    /// Trials the suite asks for, if it does.
    pub suite_trials: Option<u32>,
    /// The device the suite is sized for, if it says.
    pub suite_device: Option<SuiteDevice>,
    pub specs: Vec<WorkloadSpec>,
}

/// The catalogue in `dir` (`specs/*.toml` + `suites.toml`). Invalid specs
/// are the workloads crate's errors (file, line, field).
pub fn load(dir: &Path) -> anyhow::Result<Catalogue> {
    Catalogue::load(dir)
        .with_context(|| format!("loading the workload catalogue {}", dir.display()))
}

/// `names` when given, else `suite`, else `default_suite`. Unknown names are
/// errors listing the known ones.
pub fn select(
    catalogue: &Catalogue,
    suite: Option<&str>,
    names: &[String],
    default_suite: &str,
) -> anyhow::Result<Selection> {
    if !names.is_empty() {
        let specs = names
            .iter()
            .map(|n| catalogue.workload(n).cloned())
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Selection {
            suite: None,
            suite_trials: None,
            suite_device: None,
            specs,
        });
    }
    let name = suite.unwrap_or(default_suite);
    let suite_spec = catalogue.suite(name)?;
    let specs = catalogue
        .suite_workloads(name)?
        .into_iter()
        .cloned()
        .collect();
    Ok(Selection {
        suite: Some(name.to_string()),
        suite_trials: suite_spec.trials,
        suite_device: suite_spec.device,
        specs,
    })
}

/// The model a workload runs on when neither `--model` nor its spec names one.
pub const DEFAULT_MODEL: &str = "tiny";

impl Selection {
    /// The specs grouped by the model they run on, in order of first
    /// appearance: `model_override` for all, else each spec's own model.
    /// A run has one fingerprint and so one model: each group is a run.
    pub fn by_model(&self, model_override: Option<&str>) -> Vec<(String, Vec<&WorkloadSpec>)> {
        let mut groups: Vec<(String, Vec<&WorkloadSpec>)> = Vec::new();
        for spec in &self.specs {
            let model = model_override
                .or(spec.model.as_deref())
                .unwrap_or(DEFAULT_MODEL);
            match groups.iter_mut().find(|(m, _)| m == model) {
                Some((_, specs)) => specs.push(spec),
                None => groups.push((model.to_string(), vec![spec])),
            }
        }
        groups
    }
}

/// One workload, resolved for a model.
#[derive(Debug, Clone)]
pub struct PlannedWorkload {
    pub name: String,
    /// The spec as JSON, stored in the run.
    pub spec_json: serde_json::Value,
    pub requests: Vec<Request>,
    /// blake3 of the requests file.
    pub requests_hash: String,
    pub slos: Slos,
    pub max_concurrency: Option<u32>,
    /// `[engine]` overrides, written into the trial's engine.toml.
    pub engine_overrides: toml::Table,
}

pub fn plan(spec: &WorkloadSpec, vocab: &Vocab) -> anyhow::Result<PlannedWorkload> {
    let space = TokenSpace {
        vocab_size: vocab.vocab_size,
        excluded: vocab.special.clone(),
    };
    let requests = spec
        .generate(&space)
        .with_context(|| format!("generating the requests of workload `{}`", spec.name))?;
    let slos = spec
        .slo
        .as_ref()
        .map(|s| Slos {
            ttft_ms: s.ttft_ms,
            tpot_ms: s.tpot_ms,
            e2el_ms: s.e2el_ms,
        })
        .unwrap_or_default();
    Ok(PlannedWorkload {
        name: spec.name.clone(),
        spec_json: serde_json::to_value(spec)?,
        requests_hash: requests_hash(&requests),
        requests,
        slos,
        max_concurrency: spec.max_concurrency(),
        engine_overrides: spec.engine.clone().unwrap_or_default(),
    })
}
