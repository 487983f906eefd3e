//! The test binaries a guest runs: built on the host by cargo, one run per VM area of the
//! integration binary (exactly that area's tests) or per `[[test]]` binary.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::cargo::cargo;
use crate::test::{INTEGRATION, list_areas};

/// One run of a test binary built on the host: an area of the integration binary (its
/// executable and the area's tests, exactly) or a whole `[[test]]` binary (no tests named).
pub(crate) struct TestBinary {
    pub name: String,
    pub path: PathBuf,
    pub tests: Vec<String>,
}

/// `cargo test --no-run` for the test binaries of xmacvlan-tests (paths from cargo's JSON
/// messages), and one run per name: an area of the integration binary, or a binary.
pub(super) fn build_tests(names: &[String]) -> Result<Vec<TestBinary>> {
    // The tests run the programs a user runs (`xmacvlan run`, `xmacvlan-bench generate`).
    crate::cargo::run(
        &mut crate::cargo::build_test_programs(),
        "cargo build (the programs the VM tests run)",
    )?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "-p",
        "xmacvlan-tests",
        "--tests",
    ]);
    println!(
        "xtask: vm: building the test binaries for: {}",
        names.join(" ")
    );
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the VM test binaries failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut built = BTreeMap::new();
    for line in text.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"")
            || !line.contains("\"target\":{\"kind\":[\"test\"]")
        {
            continue;
        }
        if let (Some(target), Some(exe)) = (json_str(line, "\"target\":{", "name"), exe_of(line)) {
            built.insert(target, PathBuf::from(exe));
        }
    }
    let integration = built
        .get(INTEGRATION)
        .with_context(|| format!("cargo built no `{INTEGRATION}` test binary"))?;
    let areas = list_areas(integration)?;
    runs_of(names, &built, integration, &areas)
}

/// The run for each name: a binary of that name other than the integration binary itself, else
/// that area of the integration binary.
fn runs_of(
    names: &[String],
    built: &BTreeMap<String, PathBuf>,
    integration: &Path,
    areas: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<TestBinary>> {
    let mut runs = Vec::new();
    for n in names {
        let run = match (built.get(n), areas.get(n)) {
            (Some(path), _) if n != INTEGRATION => TestBinary {
                name: n.clone(),
                path: path.clone(),
                tests: Vec::new(),
            },
            (_, Some(tests)) if !n.is_empty() => TestBinary {
                name: n.clone(),
                path: integration.to_path_buf(),
                tests: tests.clone(),
            },
            _ => bail!(
                "no area `{n}` in the integration tests (a `mod {n};` in \
                 tests/integration/main.rs) and no test binary `{n}` in crate xmacvlan-tests: \
                 fix VM_TESTS in xtask/src/vm/mod.rs or the --test name"
            ),
        };
        runs.push(run);
    }
    Ok(runs)
}

/// The string value of `key` in the first JSON object that starts at `after` in `line`.
pub(crate) fn json_str(line: &str, after: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(after)? + after.len()..];
    let needle = format!("\"{key}\":\"");
    let rest = &rest[rest.find(&needle)? + needle.len()..];
    let value = &rest[..rest.find('"')?];
    (!value.contains('\\')).then(|| value.to_string())
}

pub(crate) fn exe_of(line: &str) -> Option<String> {
    let needle = "\"executable\":\"";
    let rest = &line[line.find(needle)? + needle.len()..];
    let value = &rest[..rest.find('"')?];
    (!value.contains('\\')).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_executables_in_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#xmacvlan-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"vm_vlan","src_path":"/w/tests/vm_vlan.rs","edition":"2024","doc":false,"doctest":false,"test":true},"profile":{},"features":[],"filenames":["/w/target/debug/deps/vm_vlan-1234"],"executable":"/w/target/debug/deps/vm_vlan-1234","fresh":true}"#;
        assert_eq!(
            json_str(line, "\"target\":{", "name").as_deref(),
            Some("vm_vlan")
        );
        assert_eq!(
            exe_of(line).as_deref(),
            Some("/w/target/debug/deps/vm_vlan-1234")
        );
        assert_eq!(exe_of(r#"{"executable":null}"#), None);
    }

    #[test]
    fn names_run_an_area_or_a_binary() {
        let integration = PathBuf::from("/w/deps/integration-1");
        let built: BTreeMap<String, PathBuf> = [
            (INTEGRATION.to_string(), integration.clone()),
            ("no_alloc".to_string(), PathBuf::from("/w/deps/no_alloc-1")),
        ]
        .into();
        let areas =
            crate::test::areas_of("vm_fastpath::x: test\nfastpath::y: test\nfastpath::z: test\n");
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let runs = runs_of(
            &names(&["fastpath", "no_alloc"]),
            &built,
            &integration,
            &areas,
        )
        .unwrap();
        assert_eq!(runs[0].path, integration);
        assert_eq!(runs[0].tests, ["fastpath::y", "fastpath::z"]);
        assert_eq!(runs[1].path, PathBuf::from("/w/deps/no_alloc-1"));
        assert!(runs[1].tests.is_empty(), "a whole binary");
        for bad in ["vlan", "integration", ""] {
            let err = runs_of(&names(&[bad]), &built, &integration, &areas)
                .err()
                .unwrap_or_else(|| panic!("`{bad}` is neither an area nor a binary"));
            assert!(err.to_string().contains("fix VM_TESTS"), "{err}");
        }
    }
}
