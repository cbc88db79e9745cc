//! The catalogue: every workload spec in `workloads/specs/*.toml` and the
//! suites of `workloads/suites.toml`, loaded and validated together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::location::InvalidToml;
use crate::spec::{SpecError, WorkloadSpec};
use crate::suite::{parse_suites, Suite};

#[derive(Debug, Clone)]
pub struct Catalogue {
    workloads: BTreeMap<String, WorkloadSpec>,
    /// The file each workload was read from.
    paths: BTreeMap<String, PathBuf>,
    suites: BTreeMap<String, Suite>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Suites(InvalidToml),
    #[error("{} holds no workload specs (*.toml)", dir.display())]
    NoSpecs { dir: PathBuf },
    #[error("unknown workload `{name}`; known workloads: {}", known.join(", "))]
    UnknownWorkload { name: String, known: Vec<String> },
    #[error("unknown suite `{name}`; known suites: {}", known.join(", "))]
    UnknownSuite { name: String, known: Vec<String> },
}

impl Catalogue {
    /// The catalogue shipped in this repository (`workloads/`).
    pub fn builtin_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// Loads `dir/specs/*.toml` and `dir/suites.toml`.
    pub fn load(dir: &Path) -> Result<Self, CatalogueError> {
        let specs_dir = dir.join("specs");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CatalogueError::Io {
                path,
                cause: source,
            }
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&specs_dir).map_err(io(&specs_dir))? {
            let path = entry.map_err(io(&specs_dir))?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(CatalogueError::NoSpecs { dir: specs_dir });
        }
        paths.sort();
        let mut workloads = BTreeMap::new();
        let mut spec_paths = BTreeMap::new();
        for path in paths {
            // `load` checks that the name is the file's stem, so names are unique.
            let spec = WorkloadSpec::load(&path)?;
            spec_paths.insert(spec.name.clone(), path);
            workloads.insert(spec.name.clone(), spec);
        }
        let suites_path = dir.join("suites.toml");
        let text = std::fs::read_to_string(&suites_path).map_err(io(&suites_path))?;
        let known: Vec<&str> = workloads.keys().map(String::as_str).collect();
        let suites = parse_suites(&text, &suites_path, &known).map_err(CatalogueError::Suites)?;
        Ok(Catalogue {
            workloads,
            paths: spec_paths,
            suites,
        })
    }

    pub fn workload(&self, name: &str) -> Result<&WorkloadSpec, CatalogueError> {
        self.workloads
            .get(name)
            .ok_or_else(|| CatalogueError::UnknownWorkload {
                name: name.to_string(),
                known: self.workloads.keys().cloned().collect(),
            })
    }

    /// The spec file of workload `name`, for errors that name its lines.
    pub fn spec_path(&self, name: &str) -> Option<&Path> {
        self.paths.get(name).map(PathBuf::as_path)
    }

    pub fn suite(&self, name: &str) -> Result<&Suite, CatalogueError> {
        self.suites
            .get(name)
            .ok_or_else(|| CatalogueError::UnknownSuite {
                name: name.to_string(),
                known: self.suites.keys().cloned().collect(),
            })
    }

    /// The specs of a suite, in the suite's order.
    pub fn suite_workloads(&self, name: &str) -> Result<Vec<&WorkloadSpec>, CatalogueError> {
        self.suite(name)?
            .workloads
            .iter()
            .map(|w| self.workload(w))
            .collect()
    }

    /// Every workload, by name.
    pub fn workloads(&self) -> impl Iterator<Item = &WorkloadSpec> {
        self.workloads.values()
    }

    /// Every suite with its name.
    pub fn suites(&self) -> impl Iterator<Item = (&str, &Suite)> {
        self.suites.iter().map(|(n, s)| (n.as_str(), s))
    }
}
