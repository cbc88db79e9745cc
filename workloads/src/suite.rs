//! Suites: named groups of workloads, all in one file (`workloads/suites.toml`).
//!
//! ```toml
//! [smoke]
//! description = "CPU check on the tiny preset"
//! device = "cpu"          # optional: cpu | cuda; the device the suite is sized for
//! trials = 3              # optional: the pipeline's default applies otherwise
//! workloads = ["smoke-offline", "smoke-closed-loop", "smoke-poisson"]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::location::{InvalidToml, SourceMap};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub description: String,
    #[serde(default)]
    pub device: Option<SuiteDevice>,
    #[serde(default)]
    pub trials: Option<u32>,
    #[serde(default)]
    pub workloads: Vec<String>,
    /// Sweep files (`sweeps/<name>.toml`) whose points run as workloads of
    /// the suite; each must know its points from the file alone (tier 0,
    /// grid or batch profiles).
    #[serde(default)]
    pub sweeps: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuiteDevice {
    Cpu,
    Cuda,
}

/// Parses a suites file; `known` are the workload names every suite may
/// list. Errors name the file, the line and the field.
pub(crate) fn parse_suites(
    text: &str,
    path: &Path,
    known: &[&str],
    known_sweeps: &[&str],
) -> Result<BTreeMap<String, Suite>, InvalidToml> {
    let map = SourceMap::new(path, text);
    let suites: BTreeMap<String, Suite> =
        toml::from_str(text).map_err(|e| map.invalid_from_toml(&e))?;
    if suites.is_empty() {
        return Err(map.invalid_document("defines no suites"));
    }
    for (name, suite) in &suites {
        if suite.workloads.is_empty() && suite.sweeps.is_empty() {
            return Err(map.invalid_field(
                &format!("{name}.workloads"),
                "lists no workloads (and no sweeps)",
            ));
        }
        for (i, sweep) in suite.sweeps.iter().enumerate() {
            if !known_sweeps.contains(&sweep.as_str()) {
                return Err(map.invalid_field(
                    &format!("{name}.sweeps[{i}]"),
                    format!(
                        "unknown sweep `{sweep}`; known (sweeps/*.toml): {}",
                        if known_sweeps.is_empty() {
                            "none".to_string()
                        } else {
                            known_sweeps.join(", ")
                        }
                    ),
                ));
            }
        }
        if suite.trials == Some(0) {
            return Err(map.invalid_field(&format!("{name}.trials"), "must be at least 1"));
        }
        for (i, workload) in suite.workloads.iter().enumerate() {
            if !known.contains(&workload.as_str()) {
                return Err(map.invalid_field(
                    &format!("{name}.workloads[{i}]"),
                    format!("unknown workload `{workload}`; known: {}", known.join(", ")),
                ));
            }
            if suite.workloads[..i].contains(workload) {
                return Err(map.invalid_field(
                    &format!("{name}.workloads[{i}]"),
                    format!("`{workload}` is listed twice"),
                ));
            }
        }
    }
    Ok(suites)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BTreeMap<String, Suite>, String> {
        parse_suites(text, Path::new("suites.toml"), &["a", "b"], &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn suites_parse() {
        let s = parse(
            "[x]\ndescription = \"d\"\ndevice = \"cpu\"\ntrials = 3\nworkloads = [\"a\", \"b\"]\n",
        )
        .unwrap();
        assert_eq!(s["x"].device, Some(SuiteDevice::Cpu));
        assert_eq!(s["x"].workloads, ["a", "b"]);
    }

    #[test]
    fn suites_may_list_sweeps_and_unknown_ones_are_named() {
        let parse_with = |text: &str| {
            parse_suites(text, Path::new("suites.toml"), &["a"], &["sw"]).map_err(|e| e.to_string())
        };
        let s = parse_with("[x]\ndescription = \"d\"\nsweeps = [\"sw\"]\n").unwrap();
        assert!(s["x"].workloads.is_empty() && s["x"].sweeps == ["sw"]);
        let e = parse_with("[x]\ndescription = \"d\"\nsweeps = [\"nope\"]\n").unwrap_err();
        assert!(
            e.starts_with("suites.toml:3: field `x.sweeps[0]`: unknown sweep `nope`"),
            "{e}"
        );
        let e = parse_with("[x]\ndescription = \"d\"\n").unwrap_err();
        assert!(e.contains("lists no workloads"), "{e}");
    }

    #[test]
    fn unknown_workloads_are_named_with_the_known_ones() {
        let e = parse("[x]\ndescription = \"d\"\nworkloads = [\"a\",\n  \"c\"]\n").unwrap_err();
        assert!(
            e.starts_with(
                "suites.toml:4: field `x.workloads[1]`: unknown workload `c`; known: a, b"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_suites_name_line_and_field() {
        let e = parse("[x]\ndescription = \"d\"\nworkloads = []\n").unwrap_err();
        assert!(e.starts_with("suites.toml:3: field `x.workloads`"), "{e}");
        let e = parse("[x]\ndescription = \"d\"\nworkload = [\"a\"]\n").unwrap_err();
        assert!(e.starts_with("suites.toml:3: field `x.workload`"), "{e}");
        let e =
            parse("[x]\ndescription = \"d\"\ndevice = \"tpu\"\nworkloads = [\"a\"]\n").unwrap_err();
        assert!(e.starts_with("suites.toml:3: field `x.device`"), "{e}");
        let e = parse("[x]\nworkloads = [\"a\"]\n").unwrap_err();
        assert!(e.starts_with("suites.toml:1: field `x.description`"), "{e}");
    }
}
