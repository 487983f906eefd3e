//! The crate's layering, checked on its own source: no import cycle between the top-level
//! modules, and nothing but `cli` imports `cli` (the library never depends on the command
//! line). An edge is any `crate::MODULE` path (or `crate::{MODULE, ..}` group) in a module's
//! non-test code, comments left out.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that is not test code, without comments.
fn shipped_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules named right after `crate::` in `code`, braces included.
fn imported(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group[..group.find('}').unwrap_or(group.len())]
                .split(',')
                .map(|part| part.trim().split("::").next().unwrap_or(""))
                .collect(),
            None => vec![
                rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
                    .unwrap(),
            ],
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| modules.contains(*n))
                .map(String::from),
        );
    }
    found
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !["lib", "main", "bin", "layers"].contains(&name.as_str()) {
            modules.insert(name, path);
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, path)| {
            let mut files = Vec::new();
            if path.is_dir() {
                rust_files(path, &mut files);
            } else {
                files.push(path.clone());
            }
            let mut uses: BTreeSet<String> = files
                .iter()
                .flat_map(|f| imported(&shipped_code(f), &names))
                .collect();
            uses.remove(name);
            (name.clone(), uses)
        })
        .collect()
}

/// A cycle through `from`, if one exists (depth-first search for a path back to it).
fn cycle_through(g: &Graph, from: &str) -> Option<Vec<String>> {
    fn walk(
        g: &Graph,
        at: &str,
        goal: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in &g[at] {
            if next == goal {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, next, goal, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(g, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let g = graph();
    assert!(
        g.len() > 15 && g["daemon"].contains("dataplane"),
        "the scan sees the crate: {g:?}"
    );
    for module in g.keys() {
        if let Some(cycle) = cycle_through(&g, module) {
            panic!("import cycle: {} -> {module}", cycle.join(" -> "));
        }
    }
}

#[test]
fn only_the_cli_imports_the_cli() {
    for (module, uses) in graph() {
        assert!(
            module == "cli" || !uses.contains("cli"),
            "{module} imports crate::cli"
        );
    }
}

#[test]
fn the_scan_reads_paths_and_groups() {
    let modules: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    let code = "use crate::a::X;\nuse crate::{b::Y, std};\nlet _ = crate::zz::f();";
    assert_eq!(
        imported(code, &modules),
        ["a", "b"].map(String::from).into()
    );
    let g: Graph = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"])]
        .into_iter()
        .map(|(m, u)| (m.into(), u.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(cycle_through(&g, "a").unwrap(), ["a", "b", "c"]);
}
