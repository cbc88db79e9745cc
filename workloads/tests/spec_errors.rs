//! Bad specs give errors that name the file, the line and the field.

use std::path::Path;

use workloads::WorkloadSpec;

const GOOD: &str = r#"name = "w"
description = "d"
seed = 1
requests = 4
warmup_requests = 1
prompt_len = { uniform = { min = 8, max = 16 } }
output_len = { fixed = 4 }

[arrival.gamma]
rate = 2.0
burstiness = 0.5

[sampling]
temperature = 0.5
"#;

/// Writes `text` as `<dir>/w.toml` and loads it; returns the error text.
fn load_err(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(&path, text).unwrap();
    match WorkloadSpec::load(&path) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e
            .to_string()
            .replace(&format!("{}/", dir.path().display()), ""),
    }
}

fn assert_located(text: &str, line: usize, field: &str) -> String {
    let e = load_err(text);
    let want = format!("w.toml:{line}: field `{field}`: ");
    assert!(e.starts_with(&want), "want `{want}…`, got `{e}`");
    e
}

#[test]
fn the_base_spec_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(&path, GOOD).unwrap();
    WorkloadSpec::load(&path).unwrap();
}

#[test]
fn unknown_fields() {
    let e = assert_located(&GOOD.replace("seed = 1", "seed = 1\nsed = 2"), 4, "sed");
    assert!(e.contains("unknown field `sed`"), "{e}");
    assert_located(
        &GOOD.replace("temperature", "temprature"),
        14,
        "sampling.temprature",
    );
    assert_located(
        &GOOD.replace("burstiness", "burst"),
        11,
        "arrival.gamma.burst",
    );
    assert_located(
        &GOOD.replace("min = 8,", "min = 8, mean = 3,"),
        6,
        "prompt_len.uniform.mean",
    );
    let e = assert_located(
        &GOOD.replace("{ fixed = 4 }", "{ constant = 4 }"),
        7,
        "output_len.constant",
    );
    assert!(e.contains("unknown variant `constant`"), "{e}");
}

#[test]
fn wrong_types() {
    let e = assert_located(
        &GOOD.replace("requests = 4", "requests = \"four\""),
        4,
        "requests",
    );
    assert!(e.contains("invalid type"), "{e}");
    assert_located(
        &GOOD.replace("rate = 2.0", "rate = \"fast\""),
        10,
        "arrival.gamma.rate",
    );
    assert_located(
        &GOOD.replace("max = 16", "max = 1.5"),
        6,
        "prompt_len.uniform.max",
    );
    assert_located(
        &GOOD.replace("temperature = 0.5", "temperature = true"),
        14,
        "sampling.temperature",
    );
    assert_located(&GOOD.replace("seed = 1", "seed = -1"), 3, "seed");
}

#[test]
fn missing_fields() {
    let e = assert_located(
        &GOOD.replace("burstiness = 0.5\n", ""),
        9,
        "arrival.gamma.burstiness",
    );
    assert!(e.contains("missing field"), "{e}");
    assert_located(&GOOD.replace("max = 16 ", ""), 6, "prompt_len.uniform.max");
    let e = load_err(&GOOD.replace("seed = 1\n", ""));
    assert!(
        e.starts_with("w.toml") && e.contains("field `seed`") && e.contains("missing field"),
        "{e}"
    );
}

#[test]
fn ambiguous_kinds() {
    let two = GOOD.replace(
        "[arrival.gamma]",
        "[arrival.poisson]\nrate = 1.0\n[arrival.gamma]",
    );
    let e = assert_located(&two, 9, "arrival");
    assert!(e.contains("exactly 1"), "{e}");
}

#[test]
fn bad_values() {
    assert_located(
        &GOOD.replace("rate = 2.0", "rate = 0.0"),
        10,
        "arrival.gamma.rate",
    );
    assert_located(
        &GOOD.replace("burstiness = 0.5", "burstiness = -1.0"),
        11,
        "arrival.gamma.burstiness",
    );
    let e = assert_located(
        &GOOD.replace("min = 8", "min = 20"),
        6,
        "prompt_len.uniform.max",
    );
    assert!(e.contains("must be >= min (20)"), "{e}");
    assert_located(
        &GOOD.replace("{ fixed = 4 }", "{ fixed = 0 }"),
        7,
        "output_len.fixed",
    );
    assert_located(
        &GOOD.replace("temperature = 0.5", "temperature = -0.5"),
        14,
        "sampling.temperature",
    );
    assert_located(
        &format!("{GOOD}[prefix]\ngroups = 0\nlength = 2\n"),
        16,
        "prefix.groups",
    );
    assert_located(&format!("{GOOD}[slo]\ne2el_ms = 0.0\n"), 16, "slo.e2el_ms");
    assert_located(
        &GOOD.replace("name = \"w\"", "name = \"Bad Name\""),
        1,
        "name",
    );
    assert_located(
        &GOOD.replace("warmup_requests = 1", "warmup_requests = 4294967295"),
        5,
        "warmup_requests",
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let e = load_err(&GOOD.replace("rate = 2.0", "rate = "));
    assert!(e.starts_with("w.toml:10: "), "{e}");
}

#[test]
fn lengths_files_resolve_relative_to_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lens")).unwrap();
    std::fs::write(dir.path().join("lens/p.txt"), "# lengths\n9 10\n11\n").unwrap();
    std::fs::write(dir.path().join("lens/bad.txt"), "9\nten\n").unwrap();
    let path = dir.path().join("w.toml");
    let text = GOOD.replace(
        "{ uniform = { min = 8, max = 16 } }",
        "{ list = \"lens/p.txt\" }",
    );
    std::fs::write(&path, &text).unwrap();
    let spec = WorkloadSpec::load(&path).unwrap();
    assert_eq!(spec.prompt_len.bounds(), Some((9, 11)));

    std::fs::write(&path, text.replace("p.txt", "bad.txt")).unwrap();
    let e = WorkloadSpec::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("w.toml:6: field `prompt_len.list`")
            && e.contains("bad.txt:2:")
            && e.contains("`ten`"),
        "{e}"
    );

    std::fs::write(&path, text.replace("p.txt", "none.txt")).unwrap();
    let e = WorkloadSpec::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("w.toml:6: field `prompt_len.list`") && e.contains("none.txt"),
        "{e}"
    );
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let e = WorkloadSpec::load(Path::new("/nonexistent/x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.toml"), "{e}");
}
