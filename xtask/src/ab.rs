//! Interleaved A/B on one machine in one sitting (`cargo xtask bench
//! --against REV`, `--a-engine-bin`, per-side `--a-env`/`--b-env` and
//! `--a-set`/`--b-set`): the default for pull requests.
//!
//! Why: two runs made one after the other differ by more than their trials
//! suggest (clocks, temperature, placement, neighbours), so a verdict
//! between separate runs mistakes that drift for a change. Here both sides
//! warm up, then their trials alternate in randomized balanced blocks (one
//! trial of each side per block, AB or BA, as many of each order), each
//! trial a fresh engine process. The verdict tests the blocks' paired log
//! ratios (`compare::stats::LogComparison::paired`): whatever drifts during
//! the session moves both trials of a block and cancels.
//!
//! Both sides are stored as ordinary runs that carry the session's id
//! (`RunRecord::interleaved`) and each trial's block, so `cargo xtask
//! compare A B` finds the pairing again later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::bench::{exit_code, store_partial, trial_line, TrialRunner};
use crate::cli::BenchArgs;
use crate::compare::verdict::Policy;
use crate::compare::{compare_runs, report, varied_by_session};
use crate::fingerprint::{self, BuildInfo};
use crate::progress::Progress;
use crate::run_record::{AbSide, Interleaved, RunRecord, SourceFingerprint};
use crate::side::short_id;
use crate::store::Store;
use crate::trial::{self, TrialFiles};
use crate::workload_plan::PlannedWorkload;

/// One side of a session before it runs.
#[derive(Debug, Clone)]
pub(crate) struct SidePlan {
    pub label: String,
    /// None: the bench's own engine (the candidate's).
    pub engine: Option<PathBuf>,
    /// None: the candidate's source fingerprint.
    pub source: Option<SourceFingerprint>,
    pub env: BTreeMap<String, String>,
    pub overrides: toml::Table,
}

/// What an interleaved session will run.
#[derive(Debug, Clone)]
pub(crate) struct AbPlan {
    pub a: SidePlan,
    pub b: SidePlan,
    pub seed: u64,
    pub warmup: u32,
}

impl AbPlan {
    /// The plan the flags ask for, or None for an ordinary bench. Builds the
    /// base revision of `--against` (a git worktree, the shared target
    /// directory) before anything runs, so a base that does not build fails
    /// in minutes, not after the candidate's trials.
    pub(crate) fn from_args(args: &BenchArgs, root: &Path) -> anyhow::Result<Option<AbPlan>> {
        let wanted = args.ab
            || args.against.is_some()
            || args.a_engine_bin.is_some()
            || !args.a_env.is_empty()
            || !args.b_env.is_empty()
            || !args.a_set.is_empty()
            || !args.b_set.is_empty();
        if !wanted {
            return Ok(None);
        }
        let (a_engine, a_source, a_label) = match (&args.against, &args.a_engine_bin) {
            (Some(rev), _) => {
                let base = build_base(root, rev)?;
                (Some(base.engine), Some(base.source), base.label)
            }
            (None, Some(bin)) => {
                if !bin.is_file() {
                    bail!("--a-engine-bin {}: no such file", bin.display());
                }
                let build = side_a_build(
                    bin,
                    args.a_engine_profile.as_deref(),
                    args.engine.engine_profile.as_deref(),
                );
                (
                    Some(bin.clone()),
                    Some(fingerprint::source(root, bin, &build)),
                    format!("engine {}", bin.display()),
                )
            }
            (None, None) => (None, None, "the same engine".to_string()),
        };
        let seed = args.ab_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(Some(AbPlan {
            a: SidePlan {
                label: args.a_label.clone().unwrap_or(a_label),
                engine: a_engine,
                source: a_source,
                env: parse_env("--a-env", &args.a_env)?,
                overrides: parse_overrides("--a-set", &args.a_set)?,
            },
            b: SidePlan {
                label: args.b_label.clone().unwrap_or_else(|| "head".to_string()),
                engine: None,
                source: None,
                env: parse_env("--b-env", &args.b_env)?,
                overrides: parse_overrides("--b-set", &args.b_set)?,
            },
            seed,
            warmup: args.ab_warmup,
        }))
    }
}

/// Side A's build as the fingerprint records it: `--a-engine-profile`,
/// else the `--engine-profile` given for side B (two prebuilt binaries are
/// usually built alike, and a profile on one side only would leave the
/// sides in different fingerprint classes, without a verdict), else what
/// the binary's path says.
fn side_a_build(bin: &Path, a_profile: Option<&str>, b_profile: Option<&str>) -> BuildInfo {
    BuildInfo::prebuilt_as(bin, a_profile.or(b_profile))
}

/// `KEY=VALUE` pairs for the engine's environment.
pub(crate) fn parse_env(flag: &str, pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => bail!("{flag} {pair}: expected KEY=VALUE"),
        })
        .collect()
}

/// `KEY=VALUE` engine config keys; VALUE is read as TOML (`1`, `true`,
/// `"text"`), else taken as a string.
pub(crate) fn parse_overrides(flag: &str, pairs: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("{flag} {pair}: expected KEY=VALUE (an engine.toml key)");
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("{flag} {pair}: `{key}` is not an engine.toml key");
        }
        let parsed = format!("v = {}", value.trim())
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.trim().to_string()));
        table.insert(key.to_string(), parsed);
    }
    Ok(table)
}

/// The base revision, built.
struct BaseBuild {
    engine: PathBuf,
    source: SourceFingerprint,
    label: String,
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = duct::cmd("git", args)
        .dir(root)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .with_context(|| format!("cannot run git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Checks out `rev` in a worktree under `target/ab/` and builds its engine
/// in release with the workspace's target directory (dependencies are
/// shared), then copies the binary aside, since the candidate's build
/// writes the same path.
fn build_base(root: &Path, rev: &str) -> anyhow::Result<BaseBuild> {
    let commit = git(
        root,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("--against {rev}: not a revision of {}", root.display()))?;
    let short = short_id(&commit).to_string();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let ab_dir = target.join("ab");
    let worktree = ab_dir.join(format!("base-{short}"));
    let reusable = worktree.join(".git").exists()
        && git(&worktree, &["rev-parse", "HEAD"]).is_ok_and(|h| h == commit)
        && git(&worktree, &["status", "--porcelain"]).is_ok_and(|s| s.is_empty());
    if !reusable {
        if worktree.exists() {
            eprintln!(
                "removing {}, a worktree left behind by an earlier A/B run",
                worktree.display()
            );
            let _ = git(
                root,
                &["worktree", "remove", "--force", &worktree.to_string_lossy()],
            );
            if worktree.exists() {
                std::fs::remove_dir_all(&worktree)
                    .with_context(|| format!("removing {}", worktree.display()))?;
            }
        }
        git(root, &["worktree", "prune"])?;
        std::fs::create_dir_all(&ab_dir)
            .with_context(|| format!("creating {}", ab_dir.display()))?;
        git(
            root,
            &[
                "worktree",
                "add",
                "--detach",
                &worktree.to_string_lossy(),
                &commit,
            ],
        )
        .with_context(|| format!("checking out {rev} ({short})"))?;
    }
    eprintln!(
        "building the base revision {rev} ({short}) in {}",
        worktree.display()
    );
    let built = crate::build::build_engine_into(&worktree, &target).with_context(|| {
        format!("the base revision {rev} ({short}) does not build; its errors are above")
    })?;
    let engine = ab_dir.join(format!("engine-{short}"));
    std::fs::copy(&built.binary, &engine)
        .with_context(|| format!("copying the base engine to {}", engine.display()))?;
    let mut source = fingerprint::source(&worktree, &engine, &built.info);
    // The worktree is the commit, whatever DYNO_GIT_COMMIT says of the head.
    source.git_commit = Some(commit.clone());
    source.git_dirty = false;
    source.git_diff_hash = None;
    Ok(BaseBuild {
        engine,
        source,
        label: format!("base {short} ({rev})"),
    })
}

/// Block orders: `blocks` entries, as many AB as BA (one more AB when
/// odd), shuffled by the seeded generator.
pub(crate) fn block_orders(blocks: u32, rng: &mut ChaCha8Rng) -> Vec<[AbSide; 2]> {
    let mut orders: Vec<[AbSide; 2]> = (0..blocks)
        .map(|i| {
            if i % 2 == 0 {
                [AbSide::A, AbSide::B]
            } else {
                [AbSide::B, AbSide::A]
            }
        })
        .collect();
    orders.shuffle(rng);
    orders
}

/// What a session stored.
pub(crate) struct AbOutcome {
    pub b_id: String,
    pub b_run: RunRecord,
    pub code: i32,
}

/// Runs the session for one model: `base` is the candidate's runner (the
/// bench's engine, device and trial count), `header` its run record
/// without workloads.
pub(crate) fn run_session(
    plan: &AbPlan,
    base: &TrialRunner,
    header: RunRecord,
    planned: &[PlannedWorkload],
    store: &Store,
) -> anyhow::Result<AbOutcome> {
    let session = blake3::hash(
        format!(
            "{}|{}|{}|{}",
            header.created_at,
            std::process::id(),
            plan.seed,
            header.fingerprint.model_hash
        )
        .as_bytes(),
    )
    .to_hex()[..16]
        .to_string();
    let side_runner = |side: &SidePlan, name: &str| {
        let mut r = base.clone();
        if let Some(engine) = &side.engine {
            r.engine = engine.clone();
        }
        r.env = side.env.clone();
        r.engine_overrides = side.overrides.clone();
        r.work_dir = base.work_dir.join(name);
        r
    };
    let runner_a = side_runner(&plan.a, "A");
    let runner_b = side_runner(&plan.b, "B");
    let side_run = |side: &SidePlan, which: AbSide| {
        let mut run = header.clone();
        if let Some(source) = &side.source {
            run.fingerprint.source = source.clone();
        }
        // The side's own switches over those the header recorded as
        // inherited from this process's environment.
        run.fingerprint.engine_env = fingerprint::engine_env_from(&side.env, |name| {
            header.fingerprint.engine_env.get(name).cloned()
        });
        run.interleaved = Some(Interleaved {
            session: session.clone(),
            side: which,
            label: side.label.clone(),
            seed: plan.seed,
            env: side.env.clone(),
            engine_overrides: side
                .overrides
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
        });
        run
    };
    let mut run_a = side_run(&plan.a, AbSide::A);
    let mut run_b = side_run(&plan.b, AbSide::B);

    let blocks = base.trials;
    println!(
        "interleaved A/B session {session}: A = {}, B = {}; {} workload(s) x {blocks} blocks (AB/BA balanced, seed {}), {} warm-up trial(s) a side",
        plan.a.label,
        plan.b.label,
        planned.len(),
        plan.seed,
        plan.warmup
    );
    let progress = Progress::trials(2 * u64::from(blocks) * planned.len() as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    for (wi, w) in planned.iter().enumerate() {
        let bench_a = runner_a.prepare(w, &mut run_a)?;
        let bench_b = runner_b.prepare(w, &mut run_b)?;
        if wi == 0 {
            for (runner, bench, name) in [(&runner_a, &bench_a, "A"), (&runner_b, &bench_b, "B")] {
                for i in 0..plan.warmup {
                    let files = TrialFiles::in_dir(&runner.work_dir.join(format!("warmup-{i}")));
                    let _ = std::fs::remove_dir_all(&files.dir);
                    let outcome = trial::run_engine(bench, &files, runner.timeout);
                    if let trial::ProcessOutcome::Failed { reason, .. } = &outcome {
                        eprintln!("warm-up of side {name} failed: {reason}");
                    }
                }
            }
        }
        for (block, order) in block_orders(blocks, &mut rng).into_iter().enumerate() {
            let block = block as u32;
            for side in order {
                let (runner, bench, run) = match side {
                    AbSide::A => (&runner_a, &bench_a, &mut run_a),
                    AbSide::B => (&runner_b, &bench_b, &mut run_b),
                };
                progress.start_trial(&format!("{} [{side:?}]", w.name), block, blocks);
                let (mut summary, _) = match runner.trial(w, bench, block, store) {
                    Ok(t) => t,
                    Err(err) => {
                        progress.done();
                        let err = store_partial(store, &run_a, err);
                        return Err(store_partial(store, &run_b, err));
                    }
                };
                summary.block = Some(block);
                progress.finish_trial(trial_line(
                    &format!("{} [{side:?}]", w.name),
                    &summary,
                    blocks,
                ));
                if let Some(last) = run.workloads.last_mut() {
                    last.trials.push(summary);
                }
            }
        }
    }
    progress.done();
    let a_id = store.add_run(&run_a).context("storing side A")?;
    let b_id = store.add_run(&run_b).context("storing side B")?;
    crate::report::print_summary(&run_a, &a_id);
    crate::report::print_summary(&run_b, &b_id);
    println!(
        "\nstored side A as run {a_id}, side B as run {b_id}; `cargo xtask compare {} {}` repeats the verdict",
        short_id(&a_id),
        short_id(&b_id)
    );
    let comparison = compare_runs(
        (&a_id, &run_a),
        (&b_id, &run_b),
        &varied_by_session(&run_a, &run_b),
        &Policy::default(),
    )?;
    println!();
    report::print_out(&report::terminal(&comparison))?;
    report::append_step_summary(&comparison).context("appending to $GITHUB_STEP_SUMMARY")?;
    let code = exit_code(&run_a)
        .max(exit_code(&run_b))
        .max(comparison.exit_code());
    Ok(AbOutcome {
        b_id,
        b_run: run_b,
        code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_orders_are_balanced_and_seeded() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let orders = block_orders(6, &mut rng);
        let ab = orders.iter().filter(|o| o[0] == AbSide::A).count();
        assert_eq!(ab, 3);
        let again = block_orders(6, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(orders, again);
        assert_eq!(block_orders(5, &mut rng).len(), 5);
    }

    #[test]
    fn side_a_profile_comes_from_its_flag_then_side_b_then_the_path() {
        let carried = Path::new("/tmp/carry/engine_a");
        let cargo = Path::new("/w/target/release/engine");
        assert_eq!(side_a_build(carried, None, None).profile, "unknown");
        assert_eq!(
            side_a_build(carried, None, Some("release")).profile,
            "release"
        );
        assert_eq!(
            side_a_build(carried, Some("dev"), Some("release")).profile,
            "dev"
        );
        assert_eq!(side_a_build(cargo, None, None).profile, "release");
    }

    #[test]
    fn env_and_override_flags_are_checked() {
        let env = parse_env("--b-env", &["DYNO_CUDA_PDL=0".into()]).unwrap();
        assert_eq!(env["DYNO_CUDA_PDL"], "0");
        assert!(parse_env("--b-env", &["NOEQUALS".into()]).is_err());
        assert!(parse_env("--b-env", &["=1".into()]).is_err());
        let o = parse_overrides(
            "--b-set",
            &[
                "max_num_seqs=1".into(),
                "cuda_graphs=false".into(),
                "x=abc".into(),
            ],
        )
        .unwrap();
        assert_eq!(o["max_num_seqs"], toml::Value::Integer(1));
        assert_eq!(o["cuda_graphs"], toml::Value::Boolean(false));
        assert_eq!(o["x"], toml::Value::String("abc".into()));
        let err = parse_overrides("--a-set", &["bad key=1".into()]).unwrap_err();
        assert!(err.to_string().contains("--a-set"), "{err}");
    }
}
