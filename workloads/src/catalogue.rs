//! The catalogue: every workload spec in `workloads/specs/*.toml` and the
//! suites of `workloads/suites.toml`, loaded and validated together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::location::InvalidToml;
use crate::spec::{SpecError, WorkloadSpec};
use crate::suite::{parse_suites, Suite};
use crate::sweep::{Profile, SweepFile};

#[derive(Debug, Clone)]
pub struct Catalogue {
    workloads: BTreeMap<String, WorkloadSpec>,
    /// The file each workload was read from.
    paths: BTreeMap<String, PathBuf>,
    suites: BTreeMap<String, Suite>,
    /// `sweeps/*.toml`, by name.
    sweeps: BTreeMap<String, SweepFile>,
    /// The points of every sweep that knows them from the file alone, as
    /// workloads (named `<sweep>.<experiment>.<label>`), in file order.
    sweep_points: BTreeMap<String, Vec<WorkloadSpec>>,
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
        let (sweeps, sweep_points) = load_sweeps(&dir.join("sweeps"))?;
        let suites_path = dir.join("suites.toml");
        let text = std::fs::read_to_string(&suites_path).map_err(io(&suites_path))?;
        let known: Vec<&str> = workloads.keys().map(String::as_str).collect();
        // Only sweeps whose points are known from the file can be in a suite.
        let known_sweeps: Vec<&str> = sweep_points.keys().map(String::as_str).collect();
        let suites = parse_suites(&text, &suites_path, &known, &known_sweeps)
            .map_err(CatalogueError::Suites)?;
        Ok(Catalogue {
            workloads,
            paths: spec_paths,
            suites,
            sweeps,
            sweep_points,
        })
    }

    /// A workload spec, or a sweep point by its workload name.
    pub fn workload(&self, name: &str) -> Result<&WorkloadSpec, CatalogueError> {
        self.workloads
            .get(name)
            .or_else(|| {
                self.sweep_points
                    .values()
                    .flatten()
                    .find(|w| w.name == name)
            })
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

    /// The specs of a suite, in the suite's order: its workloads, then the
    /// points of its sweeps.
    pub fn suite_workloads(&self, name: &str) -> Result<Vec<&WorkloadSpec>, CatalogueError> {
        let suite = self.suite(name)?;
        let mut out = suite
            .workloads
            .iter()
            .map(|w| self.workload(w))
            .collect::<Result<Vec<_>, _>>()?;
        for sweep in &suite.sweeps {
            out.extend(self.sweep_points.get(sweep).into_iter().flatten());
        }
        Ok(out)
    }

    /// A sweep file of the catalogue (`sweeps/<name>.toml`).
    pub fn sweep(&self, name: &str) -> Option<&SweepFile> {
        self.sweeps.get(name)
    }

    /// Every sweep file, by name.
    pub fn sweeps(&self) -> impl Iterator<Item = &SweepFile> {
        self.sweeps.values()
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

type LoadedSweeps = (
    BTreeMap<String, SweepFile>,
    BTreeMap<String, Vec<WorkloadSpec>>,
);

/// `dir/*.toml` as sweep files (none when `dir` does not exist); each name
/// must equal its file's stem.
fn load_sweeps(dir: &Path) -> Result<LoadedSweeps, CatalogueError> {
    let mut sweeps = BTreeMap::new();
    let mut points = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((sweeps, points)),
        Err(source) => {
            return Err(CatalogueError::Io {
                path: dir.to_path_buf(),
                cause: source,
            })
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| CatalogueError::Io {
                path: dir.to_path_buf(),
                cause: source,
            })?
            .path();
        if path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        let file = SweepFile::load(&path)?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        if stem.as_deref() != Some(file.name.as_str()) {
            return Err(CatalogueError::Spec(SpecError::Invalid(
                file.invalid_field(
                    "name",
                    format!("`{}` must equal the file name's stem", file.name),
                ),
            )));
        }
        let static_only = file
            .experiments
            .iter()
            .all(|e| e.tier == 0 && matches!(e.profile, Profile::Grid | Profile::Batch { .. }));
        if static_only {
            let specs = file
                .experiments
                .iter()
                .filter_map(|e| file.static_points(e))
                .flatten()
                .map(|p| p.spec)
                .collect();
            points.insert(file.name.clone(), specs);
        }
        sweeps.insert(file.name.clone(), file);
    }
    Ok((sweeps, points))
}
