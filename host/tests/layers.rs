//! The layering rule of `host/src` (see `lib.rs`), checked on the source text: every
//! top-level module imports only modules of its own layer or below, and no two modules
//! import each other, directly or around a circle. A new arrow that runs upward fails here
//! with the file that adds it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the top; a module may import its own layer (without circles) and any below.
const LAYERS: &[&[&str]] = &[
    &["main", "cli"],
    &["server", "observability", "preload", "inventory", "archive"],
    &["mirror"],
    &["store", "upstream"],
    &["providers"],
    &[
        "config", "oci", "duration", "time", "metrics", "logging", "timefmt",
    ],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests` block.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let line = line.split(" //").next().unwrap_or(line);
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Top-level modules named after `crate::` in `code`, including `use crate::{a, b::c}`.
fn imported(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        found.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

#[test]
fn modules_import_downward_only_and_never_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    // module -> imported module -> files that import it
    let mut graph: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap_or(file);
        let first = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().to_string());
        let Some(first) = first else { continue };
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let from = layer_of(&module);
        if from.is_none() {
            problems.push(format!(
                "{module} ({}) has no layer in LAYERS",
                rel.display()
            ));
        }
        for dep in imported(&code_of(&text)) {
            if dep == module {
                continue;
            }
            match (from, layer_of(&dep)) {
                (Some(f), Some(t)) if t < f => problems.push(format!(
                    "{} imports {dep}, a layer above {module}",
                    rel.display()
                )),
                (_, None) => problems.push(format!(
                    "{} imports {dep}, which has no layer",
                    rel.display()
                )),
                _ => {}
            }
            graph
                .entry(module.clone())
                .or_default()
                .entry(dep)
                .or_default()
                .push(rel.display().to_string());
        }
    }
    // Circles: any module that reaches itself.
    for start in graph.keys() {
        let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path.last().cloned().unwrap_or_default();
            for next in graph
                .get(&last)
                .map(|d| d.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                if &next == start {
                    // Reported once, from the circle's smallest module.
                    if path.iter().all(|m| m >= start) {
                        problems.push(format!("circle: {} -> {start}", path.join(" -> ")));
                    }
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push(longer);
                }
            }
        }
    }
    let table: Vec<String> = graph
        .iter()
        .map(|(m, deps)| {
            format!(
                "{m} -> {}",
                deps.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    println!("{}", table.join("\n"));
    assert!(
        problems.is_empty(),
        "layering broken:\n{}\n\nimports:\n{}",
        problems.join("\n"),
        table.join("\n")
    );
}
