//! The layout check (`cargo xtask test` runs it first; `cargo xtask layout` prints the import
//! graph): every Rust file opens with a `//!` comment saying what it holds and stays under
//! `MAX_LINES`, the daemon crate's folders import one way only (`LAYERS`), and every relative
//! link of the README and docs/ resolves (the file, and the heading of a `#fragment`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

/// No source file is longer than this: a longer one splits along a seam it has.
pub const MAX_LINES: usize = 800;

/// The daemon crate's folders, lowest first, with what each may import besides itself and the
/// folders below it. `offline` stands beside `control`: neither imports the other, and of the
/// layers above only `cli` imports `offline`.
const LAYERS: &[(&str, u8)] = &[
    ("errors", 0),
    ("secret", 0),
    ("config", 1),
    ("kernel", 2),
    ("observe", 3),
    ("control", 4),
    ("offline", 4),
    ("daemon", 5),
    ("cli", 6),
    // Extra binaries (`gateway-docs`): entry points like `main.rs`, above everything.
    ("bin", 7),
];

/// Where the daemon crate's modules are, under the workspace root.
const DAEMON_SRC: &str = "gateway-user/src";

/// Folder -> the folders it imports.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// One thing the layout check found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.what)
    }
}

fn rank(folder: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == folder).map(|(_, r)| *r)
}

/// Whether a file of folder `from` may import folder `to`.
fn may_import(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    let (Some(a), Some(b)) = (rank(from), rank(to)) else {
        return false;
    };
    if to == "offline" {
        return from == "cli";
    }
    b < a
}

/// Every `.rs` file under `dir`, skipping build output and dependencies.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if e.file_type()?.is_dir() {
            if !matches!(
                name.as_ref(),
                "target" | "node_modules" | ".git" | "fuzz-target"
            ) && !name.starts_with('.')
            {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The text of a Rust file with its comments blanked (line structure kept) and its string
/// literals emptied, so that paths in prose or strings are not taken for imports.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut block = 0usize;
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if block > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                block += 1;
            } else if c == '\n' {
                out.push('\n');
            }
            continue;
        }
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_str = false;
                    out.push('"');
                }
                '\n' => out.push('\n'),
                _ => {}
            }
            continue;
        }
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                block = 1;
            }
            '"' => {
                in_str = true;
                out.push('"');
            }
            // A char literal holding a quote: '"'.
            '\'' if chars.peek() == Some(&'"') => {
                chars.next();
                out.push_str("'\"");
            }
            _ => out.push(c),
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segments of the items of a `{ ... }` group that starts `s` (nested groups
/// skipped), each with its offset in `s`.
fn group_heads(s: &str) -> Vec<(usize, &str)> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                item_start = depth == 1;
            }
            '}' => {
                if depth == 1 {
                    break;
                }
                depth = depth.saturating_sub(1);
            }
            ',' if depth == 1 => item_start = true,
            c if item_start && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                heads.push((i, ident_at(&s[i..])));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The top-level modules of the crate that `code` (of the module at `module`, a path of
/// folder and file names from the crate root) names, with the line of each mention.
fn crate_references(code: &str, module: &[String]) -> Vec<(usize, String)> {
    let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(found_at) = ["crate::", "super::"]
        .iter()
        .filter_map(|p| code[from..].find(p))
        .min()
    {
        let at = from + found_at;
        let prefix_ok = !code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == ':');
        let mut tail = &code[at..];
        if !prefix_ok {
            from = at + 7;
            continue;
        }
        let path: Vec<String> = if let Some(t) = tail.strip_prefix("crate::") {
            tail = t;
            Vec::new()
        } else {
            // `super` from a file's module is its parent; `mod.rs` is the folder itself.
            let mut path = module.to_vec();
            while let Some(t) = tail.strip_prefix("super::") {
                tail = t;
                path.pop();
            }
            path
        };
        let tail_at = code.len() - tail.len();
        if let Some(top) = path.first() {
            found.push((line_of(at), top.clone()));
        } else if tail.starts_with('{') {
            for (offset, head) in group_heads(tail) {
                found.push((line_of(tail_at + offset), head.to_string()));
            }
        } else {
            let id = ident_at(tail);
            if !id.is_empty() {
                found.push((line_of(at), id.to_string()));
            }
        }
        from = tail_at;
    }
    found
}

/// The module path of a file of the daemon crate: `config/mod.rs` is `[config]`,
/// `observe/history/store.rs` is `[observe, history, store]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The folder-to-folder imports of the daemon crate (importer -> imported), and the import
/// problems, for the crate at `src`.
pub fn imports(src: &Path) -> anyhow::Result<(Graph, Vec<Problem>)> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    let mut graph = Graph::new();
    let mut problems = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let module = module_path(rel);
        let Some(folder) = module.first().cloned() else {
            continue;
        };
        if folder == "main" || folder == "lib" {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&file)?);
        if rank(&folder).is_none() {
            problems.push(Problem {
                file: file.clone(),
                line: 1,
                what: format!(
                    "module `{folder}` is in no layer (add it to LAYERS in xtask/src/layout.rs)"
                ),
            });
            continue;
        }
        for (line, to) in crate_references(&code, &module) {
            if to == folder || rank(&to).is_none() {
                continue;
            }
            graph.entry(folder.clone()).or_default().insert(to.clone());
            if !may_import(&folder, &to) {
                problems.push(Problem {
                    file: file.clone(),
                    line,
                    what: format!(
                        "`{folder}` imports `{to}`: imports go down the layers only (cli -> daemon -> control | offline -> observe -> kernel -> config -> errors, secret)"
                    ),
                });
            }
        }
    }
    Ok((graph, problems))
}

/// Every file under `root` opens with `//!` and is at most `MAX_LINES` long.
pub fn files(root: &Path) -> anyhow::Result<Vec<Problem>> {
    let mut all = Vec::new();
    rust_files(root, &mut all)?;
    let mut problems = Vec::new();
    for file in all {
        let text = std::fs::read_to_string(&file)?;
        let first = text.lines().next().unwrap_or("");
        if !first.starts_with("//!") || first.trim_start_matches("//!").trim().is_empty() {
            problems.push(Problem {
                file: file.clone(),
                line: 1,
                what: "no `//!` line saying what the module holds".into(),
            });
        }
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(Problem {
                file,
                line: lines,
                what: format!("{lines} lines, more than {MAX_LINES}: split it along a seam"),
            });
        }
    }
    Ok(problems)
}

/// The anchor GitHub gives a Markdown heading: lower case, spaces to dashes, punctuation
/// other than dashes and underscores dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of the headings of a Markdown text (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// Every relative link of `README.md` and `docs/*.md` under `root` resolves: the file exists,
/// and a `#fragment` names one of its headings.
pub fn links(root: &Path) -> anyhow::Result<Vec<Problem>> {
    let mut pages = vec![root.join("README.md")];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        let mut docs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        docs.sort();
        pages.extend(docs);
    }
    let mut problems = Vec::new();
    for page in pages.iter().filter(|p| p.exists()) {
        let text = std::fs::read_to_string(page)?;
        let mut fenced = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            if fenced {
                continue;
            }
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                let tail = &rest[at + 2..];
                let Some(end) = tail.find(')') else { break };
                let target = &tail[..end];
                rest = &tail[end..];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, fragment) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target, None),
                };
                let dest = if file.is_empty() {
                    page.clone()
                } else {
                    page.parent().unwrap_or(root).join(file)
                };
                let problem = if !dest.exists() {
                    Some(format!("link to {target}: no such file"))
                } else if let Some(a) = fragment {
                    let text = std::fs::read_to_string(&dest).unwrap_or_default();
                    (!anchors(&text).contains(a))
                        .then(|| format!("link to {target}: no heading #{a} there"))
                } else {
                    None
                };
                if let Some(what) = problem {
                    problems.push(Problem {
                        file: page.clone(),
                        line: n + 1,
                        what,
                    });
                }
            }
        }
    }
    Ok(problems)
}

/// The whole check on the workspace at `root`.
pub fn check(root: &Path) -> anyhow::Result<(Graph, Vec<Problem>)> {
    let mut problems = files(root)?;
    problems.extend(links(root)?);
    let (graph, import_problems) = imports(&root.join(DAEMON_SRC))?;
    problems.extend(import_problems);
    Ok((graph, problems))
}

/// The import graph as lines (`daemon -> config, control, kernel, observe`), lowest layer first.
pub fn render(graph: &Graph) -> String {
    let mut out = String::new();
    for (name, _) in LAYERS.iter().rev() {
        if let Some(to) = graph.get(*name) {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            out.push_str(&format!("{name} -> {}\n", to.join(", ")));
        }
    }
    out
}

/// `cargo xtask test`'s first step: fails with every problem found.
pub fn run(root: &Path, print_graph: bool) -> anyhow::Result<()> {
    let (graph, problems) = check(root)?;
    if print_graph {
        print!("{}", render(&graph));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        anyhow::bail!("the layout check found {} problem(s)", problems.len());
    }
    eprintln!(
        "layout: every file documented and under {MAX_LINES} lines; imports go down the layers; every README and docs/ link resolves"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch crate: `files` are (path under src, text).
    fn tree(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-layout-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let p = dir.join(DAEMON_SRC).join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
            std::fs::write(p, text).expect("write");
        }
        dir
    }

    fn found(dir: &Path) -> Vec<String> {
        let (_, problems) = check(dir).expect("check");
        let _ = std::fs::remove_dir_all(dir);
        problems.iter().map(|p| p.what.clone()).collect()
    }

    #[test]
    fn a_clean_tree_passes() {
        let dir = tree(
            "clean",
            &[
                ("lib.rs", "//! Root.\npub mod config;\npub mod kernel;\n"),
                (
                    "config/mod.rs",
                    "//! Config.\nuse crate::errors::BadInput;\n",
                ),
                (
                    "kernel/mod.rs",
                    "//! Kernel.\nuse crate::{config::Config, secret};\nuse super::kernel::x;\n",
                ),
                ("cli/mod.rs", "//! Cli.\nuse crate::offline::replay;\n"),
            ],
        );
        assert_eq!(found(&dir), Vec::<String>::new());
    }

    #[test]
    fn an_upward_import_fails_in_every_form() {
        for (tag, code) in [
            ("use", "use crate::kernel::Maps;"),
            ("group", "use crate::{errors::BadInput, daemon::run};"),
            (
                "nested",
                "use crate::{\n    observe::{\n        stats,\n    },\n};",
            ),
            ("path", "fn f() { crate::control::http::serve(); }"),
            ("super", "use super::super::super::cli::main;"),
        ] {
            let dir = tree(
                tag,
                &[
                    ("config/mod.rs", "//! Config.\n"),
                    ("config/x/y.rs", &format!("//! Y.\n{code}\n")),
                ],
            );
            let problems = found(&dir);
            assert_eq!(problems.len(), 1, "{tag}: {problems:?}");
            assert!(
                problems[0].contains("`config` imports"),
                "{tag}: {problems:?}"
            );
        }
    }

    #[test]
    fn offline_and_control_stay_apart() {
        let dir = tree(
            "beside",
            &[
                (
                    "control/mod.rs",
                    "//! Control.\nuse crate::offline::check;\n",
                ),
                (
                    "offline/mod.rs",
                    "//! Offline.\nuse crate::control::views;\n",
                ),
                (
                    "daemon/mod.rs",
                    "//! Daemon.\nuse crate::offline::replay;\n",
                ),
            ],
        );
        assert_eq!(found(&dir).len(), 3);
    }

    #[test]
    fn comments_and_strings_are_not_imports() {
        let dir = tree(
            "prose",
            &[(
                "config/mod.rs",
                "//! Config, read by `crate::daemon`.\n/* crate::cli */\nconst S: &str = \"crate::kernel\";\n",
            )],
        );
        assert_eq!(found(&dir), Vec::<String>::new());
    }

    #[test]
    fn broken_links_fail() {
        let dir = tree("links", &[("lib.rs", "//! Root.\n")]);
        std::fs::create_dir_all(dir.join("docs")).expect("docs");
        std::fs::write(
            dir.join("README.md"),
            "# Gateway\n[a](docs/a.md) [b](docs/a.md#the-part-two) [c](docs/gone.md) [d](#gateway) [e](https://x.invalid/y)\n```\n[f](docs/none.md)\n```\n",
        )
        .expect("readme");
        std::fs::write(
            dir.join("docs/a.md"),
            "# A\n## The part (two)\n[back](../README.md#nowhere)\n",
        )
        .expect("a");
        let problems = found(&dir);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("docs/gone.md: no such file"))
        );
        assert!(problems.iter().any(|p| p.contains("no heading #nowhere")));
    }

    #[test]
    fn undocumented_long_and_unlayered_files_fail() {
        let long = format!("//! Long.\n{}", "fn f() {}\n".repeat(MAX_LINES));
        let dir = tree(
            "files",
            &[
                ("config/mod.rs", "use std::fs;\n"),
                ("config/long.rs", &long),
                ("misc/mod.rs", "//! Misc.\n"),
            ],
        );
        let problems = found(&dir);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("no `//!`")));
        assert!(problems.iter().any(|p| p.contains("more than 800")));
        assert!(problems.iter().any(|p| p.contains("in no layer")));
    }
}
