//! A sweep against an OpenAI-compatible server (`cargo xtask sweep FILE
//! --target URL [--launch CMD]`): every point's trials go over HTTP.
//!
//! Engine knobs cannot reach a server someone else started, so a sweep
//! that varies them needs `--launch` with a `{knob}` placeholder for each
//! varied knob: the command is filled in with the point's values and the
//! server started (and stopped) per point, so a sweep over server settings
//! is one command. A `--launch` without placeholders starts one server for
//! the whole sweep.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use workloads::engine_knobs;
use workloads::sweep::{Point, SweepFile};

use crate::bench::{self, HttpFlags, HttpSetup};

/// How a sweep reaches its server.
pub struct SweepTarget {
    pub url: String,
    /// `--launch`, with `{knob}` placeholders when the server is started
    /// per point.
    pub launch: Option<String>,
    pub flags: HttpFlags,
    pub root: PathBuf,
    /// The server for the whole sweep (no placeholders), started by
    /// [`SweepTarget::start_shared`].
    shared: Option<HttpSetup>,
}

/// The knobs `template` names as `{knob}` (only engine knob names count,
/// so a shell's `${HOME}` or `{a,b}` stays as written).
pub fn placeholders(template: &str) -> BTreeSet<&'static str> {
    engine_knobs::KNOBS
        .iter()
        .copied()
        .filter(|k| template.contains(&format!("{{{k}}}")))
        .collect()
}

/// `template` with each `{knob}` replaced by the point's value.
pub fn render(template: &str, point: &Point) -> anyhow::Result<String> {
    let engine = point.spec.engine.clone().unwrap_or_default();
    let mut out = template.to_string();
    for knob in placeholders(template) {
        let value = engine.get(knob).with_context(|| {
            format!(
                "--launch names {{{knob}}}, but point {} ({}) sets no `{knob}`: set it in the \
                 sweep file (its [fixed] table or the experiment)",
                point.id, point.label
            )
        })?;
        out = out.replace(&format!("{{{knob}}}"), &knob_text(value));
    }
    Ok(out)
}

fn knob_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The engine knobs whose value differs between the file's points (a knob
/// some points leave unset counts as differing).
pub fn varied_knobs(file: &SweepFile) -> BTreeSet<String> {
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut points = Vec::new();
    for exp in &file.experiments {
        // Tiers above 0 start from a lower tier's best point, which varies
        // only where tier 0 does; their own axes show here.
        if let Ok(p) = file.points_with(exp, None, None) {
            points.extend(p);
        }
    }
    for p in &points {
        for (k, v) in p.spec.engine.iter().flatten() {
            values.entry(k.clone()).or_default().insert(knob_text(v));
        }
    }
    values
        .into_iter()
        .filter(|(k, vals)| {
            vals.len() > 1
                || points
                    .iter()
                    .any(|p| p.spec.engine.as_ref().is_none_or(|e| !e.contains_key(k)))
        })
        .map(|(k, _)| k)
        .collect()
}

/// Checks made before anything runs: varied knobs need `--launch` with a
/// placeholder each.
pub fn check(file: &SweepFile, url: &str, launch: Option<&str>) -> anyhow::Result<()> {
    let varied = varied_knobs(file);
    if varied.is_empty() {
        return Ok(());
    }
    let list = varied.iter().cloned().collect::<Vec<_>>().join(", ");
    let example = varied
        .iter()
        .map(|k| format!("--{} {{{k}}}", k.replace('_', "-")))
        .collect::<Vec<_>>()
        .join(" ");
    let Some(launch) = launch else {
        bail!(
            "{}: the sweep varies engine knobs ({list}), which cannot reach a server at \
             --target {url}: start the server per point with --launch and a placeholder per \
             knob, e.g. --launch \"my-server --port PORT {example}\" (see docs/SWEEPS.md)",
            file.path.display()
        );
    };
    let named = placeholders(launch);
    let missing: Vec<&String> = varied
        .iter()
        .filter(|k| !named.contains(k.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: the sweep varies {}, but --launch has no {}: every point would measure the \
             same server; add the placeholders (e.g. {example})",
            file.path.display(),
            missing
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            missing
                .iter()
                .map(|k| format!("{{{k}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The ledger folder of an HTTP sweep (instead of the device): the server
/// is what is measured, so its points never mix with in-process ones or
/// another server's.
pub fn ledger_label(url: &str, launch: Option<&str>) -> anyhow::Result<String> {
    let (base, _) = crate::http::client::clean_url(url)?;
    let host: String = base
        .trim_start_matches("http://")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(match launch {
        Some(cmd) => format!(
            "http-{host}-{}",
            &blake3::hash(crate::http::server::redact(cmd).as_bytes()).to_hex()[..8]
        ),
        None => format!("http-{host}"),
    })
}

impl SweepTarget {
    pub fn new(url: &str, launch: Option<&str>, flags: HttpFlags, root: &Path) -> SweepTarget {
        SweepTarget {
            url: url.to_string(),
            launch: launch.map(str::to_string),
            flags,
            root: root.to_path_buf(),
            shared: None,
        }
    }

    /// Whether each point starts its own server.
    pub fn per_point(&self) -> bool {
        self.launch
            .as_deref()
            .is_some_and(|l| !placeholders(l).is_empty())
    }

    /// Connects to (or starts) the one server of the whole sweep; nothing
    /// when each point starts its own.
    pub fn start_shared(&mut self) -> anyhow::Result<()> {
        if !self.per_point() {
            self.shared = Some(bench::connect(
                &self.url,
                self.launch.as_deref(),
                &self.flags,
                &self.root,
            )?);
        }
        Ok(())
    }

    pub fn stop_shared(&mut self) {
        if let Some(s) = self.shared.as_mut() {
            s.stop();
        }
    }

    /// Runs `f` with the point's server: the shared one, or one started
    /// with the point's knobs in the launch command and stopped after.
    pub fn with_server<T>(
        &self,
        point: &Point,
        f: impl FnOnce(&HttpSetup) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if let Some(shared) = &self.shared {
            return f(shared);
        }
        let launch = match &self.launch {
            Some(template) => Some(render(template, point)?),
            None => None,
        };
        let mut setup = bench::connect(&self.url, launch.as_deref(), &self.flags, &self.root)?;
        let result = f(&setup);
        setup.stop();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> SweepFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        SweepFile::load(&path).unwrap()
    }

    const HEAD: &str =
        "name = \"s\"\ndescription = \"d\"\n[fixed]\nrequests = 2\nprompt_len = 4\noutput_len = 4\n";

    #[test]
    fn varied_knobs_need_launch_placeholders() {
        let f = file(&format!(
            "{HEAD}max_model_len = 64\n[[experiment]]\nname = \"e\"\nmax_num_seqs = [1, 2]\n"
        ));
        assert_eq!(
            varied_knobs(&f).into_iter().collect::<Vec<_>>(),
            ["max_num_seqs"]
        );
        let e = check(&f, "http://h:1", None).unwrap_err().to_string();
        assert!(
            e.contains("varies engine knobs (max_num_seqs)") && e.contains("--launch"),
            "{e}"
        );
        let e = check(&f, "http://h:1", Some("srv --port 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no {max_num_seqs}"), "{e}");
        check(&f, "http://h:1", Some("srv --max-num-seqs {max_num_seqs}")).unwrap();

        let points = f.points_with(&f.experiments[0], None, None).unwrap();
        let cmd = render(
            "srv --seqs {max_num_seqs} --len {max_model_len} ${HOME}",
            &points[1],
        )
        .unwrap();
        assert_eq!(cmd, "srv --seqs 2 --len 64 ${HOME}");
        let e = render("srv {num_threads}", &points[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sets no `num_threads`"), "{e}");
    }

    #[test]
    fn fixed_knobs_do_not_vary_and_ledgers_name_the_server() {
        let f = file(&format!(
            "{HEAD}max_num_seqs = 4\n[[experiment]]\nname = \"e\"\nconcurrency = [1, 2]\n"
        ));
        assert!(varied_knobs(&f).is_empty());
        check(&f, "http://h:1", None).unwrap();
        assert_eq!(
            ledger_label("http://u:p@127.0.0.1:8000/v1", None).unwrap(),
            "http-127_0_0_1_8000"
        );
        let a = ledger_label("http://h:1", Some("srv --api-key a")).unwrap();
        let b = ledger_label("http://h:1", Some("srv --api-key b")).unwrap();
        let c = ledger_label("http://h:1", Some("other")).unwrap();
        assert_eq!(a, b, "keys are redacted before hashing");
        assert_ne!(a, c);
    }
}
