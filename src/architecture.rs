//! The architecture as rules checked on the source (`docs/architecture.md` draws them): where
//! SQL may be, what the pure core may import, which way the layers point, and no module cycles.
//! A rule that breaks names the file and what it found.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, with its comments removed (doc examples included: a rule is
/// about code, and an example in a comment is not an import).
fn sources() -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code: String = text
                    .lines()
                    .map(|l| match l.find("//") {
                        // `//` inside a string (a URL) is kept: only whole-line and trailing
                        // comments after code are cut, which is what the rules need.
                        Some(i) if !l[..i].contains('"') => &l[..i],
                        _ => l,
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                out.insert(
                    path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().to_path_buf(),
                    code,
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// The top-level module a file belongs to (`src/journal/store/bulk.rs` → `journal`), `None` for
/// the binary's files (`main.rs`, `cli/`) and the crate root.
fn top(path: &Path) -> Option<String> {
    let mut parts = path
        .components()
        .skip(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next()?;
    if first == "cli" || first == "main.rs" || first == "lib.rs" || first == "architecture.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The `crate::X` modules a file names.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // Not `breakerbox_crate::` or the like.
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn has_word(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn sql_lives_only_in_the_storage_layer() {
    let mut found = Vec::new();
    for (path, code) in sources() {
        if path.starts_with("src/journal") || path == Path::new("src/architecture.rs") {
            continue;
        }
        for word in ["sqlx", "rusqlite"] {
            if has_word(&code, word) {
                found.push(format!("{}: {word}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "SQL outside src/journal/: {found:#?}");
}

#[test]
fn the_core_is_pure() {
    // No runtime, storage, configuration, clock or I/O in the state machine and the simulator.
    let forbidden_modules = [
        "config", "actor", "journal", "replay", "alerts", "http", "demo", "tls", "clock",
    ];
    let forbidden_words = [
        "tokio",
        "actix",
        "actix_web",
        "sqlx",
        "rusqlite",
        "reqwest",
        "SystemTime",
        "Instant",
        "std::env",
        "std::fs",
    ];
    let mut found = Vec::new();
    for (path, code) in sources() {
        if !(path.starts_with("src/breaker") || path.starts_with("src/simulate")) {
            continue;
        }
        for m in crate_refs(&code) {
            if forbidden_modules.contains(&m.as_str()) {
                found.push(format!("{}: crate::{m}", path.display()));
            }
        }
        for w in forbidden_words {
            if has_word(&code, w) {
                found.push(format!("{}: {w}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "the core reaches out: {found:#?}");
}

/// Each top-level module's layer: a module may name only modules of a lower layer (and itself).
const LAYERS: [(&str, u8); 16] = [
    ("breaker", 0),
    ("duration", 0),
    ("clock", 0),
    ("tls", 0),
    ("knobs", 1),
    ("simulate", 2),
    ("config", 2),
    ("journal", 3),
    ("replay", 4),
    ("alerts", 4),
    ("actor", 5),
    ("demo", 6),
    ("http", 6),
    ("fuzzing", 6),
    ("proxy", 6),
    ("app", 7),
];

#[test]
fn dependencies_point_inward_only() {
    let layer = |m: &str| LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l);
    let mut found = Vec::new();
    for (path, code) in sources() {
        let Some(module) = top(&path) else { continue };
        let Some(own) = layer(&module) else {
            found.push(format!("{}: module {module} has no layer in LAYERS", path.display()));
            continue;
        };
        for m in crate_refs(&code) {
            if m == module {
                continue;
            }
            match layer(&m) {
                Some(l) if l < own => {}
                Some(l) => found.push(format!(
                    "{}: {module} (layer {own}) names crate::{m} (layer {l})",
                    path.display()
                )),
                None => found.push(format!("{}: crate::{m} has no layer in LAYERS", path.display())),
            }
        }
    }
    assert!(found.is_empty(), "dependencies pointing outward: {found:#?}");
}

/// The modules of one directory and which of their siblings each names (a sub-directory counts
/// as one module with its files).
fn sibling_graph(dir: &str, files: &BTreeMap<PathBuf, String>) -> BTreeMap<String, BTreeSet<String>> {
    let base = Path::new(dir);
    let module_of = |path: &Path| -> Option<String> {
        let rest = path.strip_prefix(base).ok()?;
        let first = rest.components().next()?.as_os_str().to_string_lossy().into_owned();
        (first != "mod.rs").then(|| first.trim_end_matches(".rs").to_owned())
    };
    let names: BTreeSet<String> = files.keys().filter_map(|p| module_of(p)).collect();
    let top = base.file_name().unwrap().to_string_lossy().into_owned();
    let mut graph: BTreeMap<String, BTreeSet<String>> = names.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
    for (path, code) in files {
        let Some(me) = module_of(path) else { continue };
        // Only a module directly in `dir` names siblings by `super::`; deeper files' `super::` is
        // their own parent.
        let direct = path.parent() == Some(base);
        let mut named = BTreeSet::new();
        let mut scan = |prefix: &str| {
            for (i, _) in code.match_indices(prefix) {
                let rest = &code[i + prefix.len()..];
                let items: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                    let end = group.find('}').unwrap_or(group.len());
                    group[..end]
                        .split(',')
                        .map(|s| s.trim().split("::").next().unwrap_or("").to_owned())
                        .collect()
                } else {
                    vec![rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()]
                };
                named.extend(items);
            }
        };
        if direct {
            scan("super::");
        }
        scan(&format!("crate::{top}::"));
        for n in named {
            if n != me && names.contains(&n) {
                graph.get_mut(&me).unwrap().insert(n);
            }
        }
    }
    graph
}

fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        path.push(n.to_owned());
        for m in &graph[n] {
            match state.get(m.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| p == m).unwrap();
                    let mut c = path[start..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, graph, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_cycles() {
    let files = sources();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for path in files.keys() {
        let mut p = path.parent();
        while let Some(d) = p {
            if d.starts_with("src") && d != Path::new("src") && !d.starts_with("src/cli") {
                dirs.insert(d.to_string_lossy().into_owned());
            }
            p = d.parent();
        }
    }
    let mut found = Vec::new();
    for dir in &dirs {
        let in_dir: BTreeMap<PathBuf, String> = files
            .iter()
            .filter(|(p, _)| p.starts_with(dir))
            .map(|(p, c)| (p.clone(), c.clone()))
            .collect();
        if let Some(c) = cycle(&sibling_graph(dir, &in_dir)) {
            found.push(format!("{dir}: {}", c.join(" → ")));
        }
    }
    // The top-level modules: the layer rule makes them acyclic; checked here too.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, code) in &files {
        if let Some(m) = top(path) {
            let refs: Vec<String> = crate_refs(code)
                .into_iter()
                .filter(|r| *r != m && LAYERS.iter().any(|(n, _)| n == r))
                .collect();
            graph.entry(m).or_default().extend(refs);
        }
    }
    for refs in graph.clone().values() {
        for r in refs {
            graph.entry(r.clone()).or_default();
        }
    }
    if let Some(c) = cycle(&graph) {
        found.push(format!("src: {}", c.join(" → ")));
    }
    assert!(found.is_empty(), "module cycles: {found:#?}");
}

#[test]
fn the_rules_see_what_they_check() {
    // The checks above would pass on an empty tree: make sure they read this one.
    let files = sources();
    assert!(files.contains_key(Path::new("src/journal/store.rs")));
    assert!(has_word(&files[Path::new("src/journal/store.rs")], "sqlx"));
    assert!(crate_refs(&files[Path::new("src/actor/registry.rs")]).contains("journal"));
    let journal = sibling_graph(
        "src/journal",
        &files
            .iter()
            .filter(|(p, _)| p.starts_with("src/journal"))
            .map(|(p, c)| (p.clone(), c.clone()))
            .collect(),
    );
    assert!(journal["writer"].contains("store"), "{journal:?}");
    let looped: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert!(cycle(&looped).is_some());
}
