//! What the pipeline asks of git — HEAD, the uncommitted changes, a
//! commit's time — through the `git` command. The git2 crate did the same
//! in process, but its libgit2 C build and its URL/ICU dependencies were
//! about a third of xtask's first build (140 of 438 CPU-seconds on 2
//! cores), which every fresh clone's first `cargo xtask bench` pays.

use std::path::Path;

/// HEAD and a hash of the working tree's changes against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitState {
    /// None on a repository without commits.
    pub commit: Option<String>,
    /// blake3 over the tracked changes against HEAD (staged and not, as a
    /// binary patch) and every untracked, not ignored file's path and
    /// bytes; None when there are none.
    pub diff_hash: Option<String>,
}

/// `git ARGS` run in `dir`: its stdout, or why it failed (git's own
/// message: not a repository, an unknown commit; or that git is missing).
fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = duct::cmd("git", args)
        .dir(dir)
        .env("GIT_OPTIONAL_LOCKS", "0") // reading must not take the index lock
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn git_text(dir: &Path, args: &[&str]) -> Result<String, String> {
    git(dir, args).map(|o| String::from_utf8_lossy(&o).trim().to_string())
}

/// HEAD and the uncommitted changes of the repository at or above `dir`;
/// None when there is none (a copied tree on the GPU machine) or git is
/// not installed.
pub(crate) fn state(dir: &Path) -> Option<GitState> {
    let top = repository(dir).ok()?;
    let top = top.as_path();
    let commit = git_text(top, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]).ok();
    let patch_args = ["--no-color", "--no-ext-diff", "--binary", "--full-index"];
    let mut tracked = Vec::new();
    if commit.is_some() {
        tracked.extend(git(top, &[&["diff", "HEAD"][..], &patch_args].concat()).ok()?);
    } else {
        // No HEAD to diff against: everything staged, then the work tree.
        tracked.extend(git(top, &[&["diff", "--cached"][..], &patch_args].concat()).ok()?);
        tracked.extend(git(top, &[&["diff"][..], &patch_args].concat()).ok()?);
    }
    let untracked = git(top, &["ls-files", "--others", "--exclude-standard", "-z"]).ok()?;
    let mut paths: Vec<&[u8]> = untracked
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .collect();
    paths.sort();
    if tracked.is_empty() && paths.is_empty() {
        return Some(GitState {
            commit,
            diff_hash: None,
        });
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&tracked);
    for path in paths {
        hasher.update(b"\0untracked\0");
        hasher.update(path);
        hasher.update(b"\0");
        let name = String::from_utf8_lossy(path);
        match std::fs::read(top.join(name.as_ref())) {
            Ok(bytes) => hasher.update(&bytes),
            // Gone or unreadable since git listed it: its name still counts.
            Err(_) => hasher.update(b"\0unreadable"),
        };
    }
    Some(GitState {
        commit,
        diff_hash: Some(hasher.finalize().to_hex().to_string()),
    })
}

/// The top of the repository at or above `dir`, or why there is none.
pub(crate) fn repository(dir: &Path) -> Result<std::path::PathBuf, String> {
    git_text(dir, &["rev-parse", "--show-toplevel"]).map(Into::into)
}

/// The committer time (Unix seconds) of `commit` in the repository at
/// `repo`; None when the repository does not have it (a shallow clone) or
/// `commit` is not a commit id.
pub(crate) fn commit_time(repo: &Path, commit: &str) -> Option<i64> {
    if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let spec = format!("{commit}^{{commit}}");
    git_text(repo, &["show", "-s", "--format=%ct", &spec])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::git as run_git;

    #[test]
    fn clean_changed_untracked_and_no_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Not a repository (git may still find one above the temp dir; this
        // checks only that a plain folder inside none gives None or that
        // repository's state, never a panic).
        let _ = state(dir);
        run_git(dir, &["init", "-q"], 0);
        // No commit yet: no HEAD, the untracked file is a change.
        std::fs::write(dir.join("a.txt"), "one\n").unwrap();
        let fresh = state(dir).unwrap();
        assert_eq!(fresh.commit, None);
        assert!(fresh.diff_hash.is_some());
        run_git(dir, &["add", "a.txt"], 0);
        run_git(dir, &["commit", "-q", "-m", "one"], 1_795_000_000);
        let clean = state(dir).unwrap();
        assert_eq!(clean.commit.as_ref().map(String::len), Some(40));
        assert_eq!(clean.diff_hash, None);
        // A subfolder finds the same repository.
        std::fs::create_dir(dir.join("sub")).unwrap();
        assert_eq!(state(&dir.join("sub")).unwrap(), clean);
        // A tracked change, then a different one: different hashes.
        std::fs::write(dir.join("a.txt"), "two\n").unwrap();
        let changed = state(dir).unwrap().diff_hash.unwrap();
        std::fs::write(dir.join("a.txt"), "three\n").unwrap();
        let changed_again = state(dir).unwrap().diff_hash.unwrap();
        assert_ne!(changed, changed_again);
        std::fs::write(dir.join("a.txt"), "one\n").unwrap();
        assert_eq!(state(dir).unwrap().diff_hash, None);
        // An untracked file counts with its content; an ignored one does not.
        std::fs::write(dir.join("new.txt"), "x").unwrap();
        let untracked = state(dir).unwrap().diff_hash.unwrap();
        std::fs::write(dir.join("new.txt"), "y").unwrap();
        assert_ne!(state(dir).unwrap().diff_hash.unwrap(), untracked);
        std::fs::remove_file(dir.join("new.txt")).unwrap();
        std::fs::write(dir.join(".git/info/exclude"), "ignored.txt\n").unwrap();
        std::fs::write(dir.join("ignored.txt"), "z").unwrap();
        assert_eq!(state(dir).unwrap().diff_hash, None);
    }

    #[test]
    fn commit_times_and_unknown_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        run_git(dir, &["init", "-q"], 0);
        run_git(
            dir,
            &["commit", "-q", "--allow-empty", "-m", "day"],
            1_795_086_400,
        );
        let head = state(dir).unwrap().commit.unwrap();
        assert_eq!(commit_time(dir, &head), Some(1_795_086_400));
        assert_eq!(commit_time(dir, &"0".repeat(40)), None);
        assert_eq!(commit_time(dir, "HEAD"), None, "only commit ids");
        assert_eq!(commit_time(dir, "--help"), None);
        assert!(repository(dir).is_ok());
    }
}
