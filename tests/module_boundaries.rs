//! The module layout's rules, checked on the source so they stay true (issue #20):
//!
//! - a role (`connectors/<role>`, `transform/<role>`, `sinks/<role>`) never refers to another
//!   role's modules: roles talk through Kafka, and share code only through neutral modules;
//! - a neutral module (anything that is not a role) refers to no role at all, so a change to one
//!   role reaches no other; only the wiring (the role table, the configuration, the command
//!   line, and the `mapping preview` command that runs the Pendo transformer's mapping) may;
//! - no import loop spans two top-level folders of `src/`.
//!
//! References are `crate::` paths (in `use` lines and inline) and `super::` paths, outside
//! comments. Needs no broker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The role folders, as module paths.
const ROLES: &[&str] = &[
    "connectors::pendo_poller",
    "connectors::pendo_webhook",
    "connectors::segment_webhook",
    "transform::pendo",
    "transform::segment",
    "sinks::segment",
    "sinks::pendo",
];

/// Files that wire roles together and may refer to them.
const WIRING: &[&str] = &[
    "lib.rs",
    "main.rs",
    "roles.rs",
    "config.rs",
    "cli.rs",
    "mapping_preview.rs",
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The module path of a file (`src/sinks/pendo/delivery.rs` -> `sinks::pendo::delivery`,
/// `src/sinks/pendo/mod.rs` -> `sinks::pendo`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// Module paths a line refers to: `crate::a::b` as `a::b`, `super::x` resolved from `module`,
/// `crate::a::{b, c}` as `a::b` and `a::c` (one level of braces).
fn references(line: &str, module: &[String]) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    // The longest `a::b::` prefix of `s` (identifiers and `::`).
    let prefix = |s: &str| -> usize {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(s.len())
    };
    let mut push = |base: String, rest: &str| {
        let n = prefix(rest);
        let path = rest[..n].trim_end_matches(':');
        let full = format!("{base}{path}");
        if let Some(inner) = rest[n..].strip_prefix('{') {
            let base = if path.is_empty() {
                base.clone()
            } else {
                format!("{full}::")
            };
            for name in inner.split('}').next().unwrap_or("").split(',') {
                let name = name.trim();
                let name = name[..prefix(name)].trim_end_matches(':');
                if !name.is_empty() {
                    out.push(format!("{base}{name}"));
                }
            }
        } else {
            out.push(full.trim_end_matches("::").to_string());
        }
    };
    for (i, _) in code.match_indices("crate::") {
        push(String::new(), &code[i + "crate::".len()..]);
    }
    for (i, _) in code.match_indices("super::") {
        // `module` of a `mod.rs` is its folder already, so `super::` is always one level up.
        let parent = &module[..module.len().saturating_sub(1)];
        let base = if parent.is_empty() {
            String::new()
        } else {
            format!("{}::", parent.join("::"))
        };
        if i >= 2 && &code[i - 2..i] == "::" {
            continue; // `super::super::`: counted from the first `super::`
        }
        push(base, &code[i + "super::".len()..]);
    }
    out
}

/// The role a module path belongs to, if any.
fn role_of(path: &str) -> Option<&'static str> {
    ROLES
        .iter()
        .copied()
        .find(|r| path == *r || path.starts_with(&format!("{r}::")))
}

struct Reference {
    file: String,
    line: usize,
    target: String,
}

fn all_references() -> Vec<(Vec<String>, Reference)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    for file in sources(&src) {
        let rel = file.strip_prefix(&src).unwrap().to_path_buf();
        let module = module_of(&rel);
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for target in references(line, &module) {
                out.push((
                    module.clone(),
                    Reference {
                        file: rel.display().to_string(),
                        line: n + 1,
                        target,
                    },
                ));
            }
        }
    }
    out
}

#[test]
fn module_paths_are_resolved_as_the_compiler_does() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        module_of(Path::new("sinks/pendo/delivery.rs")),
        m("sinks::pendo::delivery")
    );
    assert_eq!(
        module_of(Path::new("sinks/pendo/mod.rs")),
        m("sinks::pendo")
    );
    assert_eq!(
        references(
            "use crate::http::{backoff::Backoff, outcome};",
            &m("sinks::pendo::delivery")
        ),
        ["http::backoff::Backoff", "http::outcome"]
    );
    assert_eq!(
        references("use super::service::X;", &m("sinks::pendo::delivery")),
        ["sinks::pendo::service::X"]
    );
    assert_eq!(
        references("use super::segment::retry;", &m("sinks::pendo")),
        ["sinks::segment::retry"]
    );
    assert_eq!(
        references("    let x = 1; // crate::sinks::segment", &m("http")),
        Vec::<String>::new()
    );
    assert_eq!(role_of("sinks::segment::retry"), Some("sinks::segment"));
    assert_eq!(role_of("sinks::segment_x"), None);
    assert_eq!(role_of("sinks::queue"), None);
}

#[test]
fn roles_share_code_only_through_neutral_modules() {
    let refs = all_references();
    assert!(refs.len() > 500, "too few references found: {}", refs.len());
    let mut violations = Vec::new();
    for (module, r) in &refs {
        let from = role_of(&module.join("::"));
        let Some(to) = role_of(&r.target) else {
            continue;
        };
        let wiring = WIRING.contains(&r.file.as_str());
        match from {
            Some(from) if from != to => violations.push(format!(
                "{}:{}: role {from} refers to role {to} ({})",
                r.file, r.line, r.target
            )),
            None if !wiring => violations.push(format!(
                "{}:{}: neutral module refers to role {to} ({})",
                r.file, r.line, r.target
            )),
            _ => {}
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for w in WIRING {
        assert!(src.join(w).exists(), "WIRING names a missing file {w}");
    }
}

#[test]
fn no_import_loop_spans_two_top_level_folders() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let folders: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, r) in all_references() {
        let (Some(from), Some(to)) = (module.first(), r.target.split("::").next()) else {
            continue;
        };
        if from != to && folders.contains(from) && folders.contains(to) {
            edges
                .entry(from.clone())
                .or_default()
                .insert(to.to_string());
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for f in &folders {
        if let Some(cycle) = visit(f, &edges, &mut Vec::new(), &mut done) {
            panic!(
                "import loop across top-level folders: {}",
                cycle.join(" -> ")
            );
        }
    }
    assert!(
        edges.get("sinks").is_some_and(|e| e.contains("kafka")),
        "the folder graph was not read: {edges:?}"
    );
}
