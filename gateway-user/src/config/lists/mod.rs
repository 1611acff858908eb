//! Category contents: list files (hosts, plain and wildcard domains, adblock / AdGuard DNS,
//! dnsmasq, RPZ; the format detected per file or forced by the configuration) and inline
//! domains, normalised and de-duplicated, with counts of what was skipped, by kind.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use gateway_common::{
    domain::{MAX_NAME, normalise},
    lists::{self, Format, Line, Parser, Scope},
};
use serde::Serialize;

/// How many lines of one skipped kind, and the first of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub lines: usize,
    /// Line number (from 1) of the first line of this kind.
    pub first_line: usize,
}

/// What one list file held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListStats {
    /// The file read (for a list by URL, its cached copy).
    pub path: String,
    /// A list by URL: where it is downloaded from (credentials and query removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A list by URL: when the copy read was downloaded (Unix seconds; `None`: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<i64>,
    pub format: &'static str,
    /// Whether the format was detected (`false`: the configuration's `format`).
    pub detected: bool,
    pub lines: usize,
    /// Block rules used (per name, before de-duplication).
    pub block: usize,
    /// Exceptions used (`@@`, dnsmasq `server=`, RPZ passthru, `$denyallow` names).
    pub allow: usize,
    /// Rules for one name only (`|d^`, an RPZ owner), not its subdomains.
    pub name_only: usize,
    /// Rules for the subdomains of a name only (`*.d`), not the name.
    pub subdomains_only: usize,
    /// `$important` rules, and exceptions they overrode.
    pub important: usize,
    /// `$badfilter` rules, and rules they cancelled.
    pub badfilter: usize,
    /// Lines skipped, by kind (`gateway_common::lists::Skip` labels).
    pub skipped: BTreeMap<&'static str, Skipped>,
    /// Names that are not valid domains: (line number, why), the first few kept.
    pub invalid: usize,
    pub invalid_examples: Vec<(usize, String)>,
}

impl ListStats {
    /// Lines skipped, every kind together.
    pub fn skipped_lines(&self) -> usize {
        self.skipped.values().map(|s| s.lines).sum()
    }
}

/// Domains a category blocks and allows: each name with its subdomains, and the rules of
/// a narrower scope apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Domains {
    pub block: BTreeSet<String>,
    pub allow: BTreeSet<String>,
    /// Rules for the name only (`|d^`, `@@|d^`, an RPZ owner); none of these is in `block` or
    /// `allow`.
    pub exact: Scoped,
    /// Rules for the names below it only (`*.d`); none of these is in `block` or `allow`.
    pub below: Scoped,
    /// Its `$badfilter` and `$important` rules, which act on the other lists of its category
    /// too (`across`).
    pub marks: Marks,
}

/// What a list's `$badfilter` and `$important` rules say, kept after they acted within it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    /// The rules cancelled: (exception, scope index as in `parse_text`, name).
    pub badfilter: Vec<(bool, usize, String)>,
    pub important_block: BTreeSet<String>,
    pub important_allow: BTreeSet<String>,
}

impl Marks {
    /// Adds `other`'s rules to these.
    fn absorb(&mut self, other: &Marks) {
        self.badfilter.extend(other.badfilter.iter().cloned());
        self.important_block
            .extend(other.important_block.iter().cloned());
        self.important_allow
            .extend(other.important_allow.iter().cloned());
    }
}

/// Whether an important block in `important_block` beats the exception `e`.
fn beaten(e: &str, important_block: &BTreeSet<String>, important_allow: &BTreeSet<String>) -> bool {
    !important_allow.contains(e)
        && std::iter::successors(Some(e), |n| n.split_once('.').map(|x| x.1))
            .any(|a| important_block.contains(a))
}

/// Blocks and exceptions of one narrower scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scoped {
    pub block: BTreeSet<String>,
    pub allow: BTreeSet<String>,
}

impl Domains {
    /// Every name it has a rule for, whatever the scope.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.block
            .iter()
            .chain(&self.allow)
            .chain(&self.exact.block)
            .chain(&self.exact.allow)
            .chain(&self.below.block)
            .chain(&self.below.allow)
    }

    /// (block, allow) of the name `d` itself, and of the names below it.
    pub fn rules_of(&self, d: &str) -> [(bool, bool); 2] {
        let (block, allow) = (self.block.contains(d), self.allow.contains(d));
        [
            (
                block || self.exact.block.contains(d),
                allow || self.exact.allow.contains(d),
            ),
            (
                block || self.below.block.contains(d),
                allow || self.below.allow.contains(d),
            ),
        ]
    }

    /// Every rule applied to the name and its subdomains (for policy lists, whose entries the
    /// kernel matches that way).
    pub fn widened(self) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut block, mut allow) = (self.block, self.allow);
        for s in [self.exact, self.below] {
            block.extend(s.block);
            allow.extend(s.allow);
        }
        (block, allow)
    }

    /// The set a rule of this kind and scope index is in.
    fn set_mut(&mut self, allow: bool, scope: usize) -> &mut BTreeSet<String> {
        match (allow, scope) {
            (false, 0) => &mut self.block,
            (true, 0) => &mut self.allow,
            (false, 1) => &mut self.exact.block,
            (true, 1) => &mut self.exact.allow,
            (false, _) => &mut self.below.block,
            (true, _) => &mut self.below.allow,
        }
    }

    /// Applies `marks`: removes the cancelled rules and the exceptions an important block
    /// beats. Returns how many of each went.
    fn apply(&mut self, marks: &Marks) -> (usize, usize) {
        let mut cancelled = 0;
        for (allow, scope, d) in &marks.badfilter {
            cancelled += usize::from(self.set_mut(*allow, *scope).remove(d));
        }
        let mut overridden = 0;
        if !marks.important_block.is_empty() {
            for set in [
                &mut self.allow,
                &mut self.exact.allow,
                &mut self.below.allow,
            ] {
                let before = set.len();
                set.retain(|e| !beaten(e, &marks.important_block, &marks.important_allow));
                overridden += before - set.len();
            }
        }
        (cancelled, overridden)
    }

    /// Whether `apply(marks)` would change anything (without copying).
    fn affected_by(&self, marks: &Marks) -> bool {
        let has = |allow: bool, scope: usize, d: &String| match (allow, scope) {
            (false, 0) => self.block.contains(d),
            (true, 0) => self.allow.contains(d),
            (false, 1) => self.exact.block.contains(d),
            (true, 1) => self.exact.allow.contains(d),
            (false, _) => self.below.block.contains(d),
            (true, _) => self.below.allow.contains(d),
        };
        marks.badfilter.iter().any(|(a, s, d)| has(*a, *s, d))
            || (!marks.important_block.is_empty()
                && [&self.allow, &self.exact.allow, &self.below.allow]
                    .iter()
                    .any(|set| {
                        set.iter()
                            .any(|e| beaten(e, &marks.important_block, &marks.important_allow))
                    }))
    }

    /// Moves a name whose rule has both narrower scopes, or also the whole one, to the whole
    /// one, so that each name is in one set of a kind.
    fn merge_scopes(&mut self) {
        for allow in [false, true] {
            let (whole, exact, below) = if allow {
                (
                    &mut self.allow,
                    &mut self.exact.allow,
                    &mut self.below.allow,
                )
            } else {
                (
                    &mut self.block,
                    &mut self.exact.block,
                    &mut self.below.block,
                )
            };
            let both: Vec<String> = exact.intersection(below).cloned().collect();
            for d in both {
                exact.remove(&d);
                below.remove(&d);
                whole.insert(d);
            }
            exact.retain(|d| !whole.contains(d));
            below.retain(|d| !whole.contains(d));
        }
    }
}

/// Normalises `d`, or says why it is not a domain.
pub fn normalised(d: &str) -> Result<String, &'static str> {
    let mut out = [0u8; MAX_NAME];
    let n = normalise(d, &mut out)?;
    // `normalise` wrote ASCII only.
    Ok(out[..n].iter().map(|&b| char::from(b)).collect())
}

/// Whether `name` is `ancestor` or below it.
fn within(name: &str, ancestor: &str) -> bool {
    name == ancestor
        || name
            .strip_suffix(ancestor)
            .is_some_and(|head| head.ends_with('.'))
}

/// Reads the list file at `path` into `into`, in `format` or the one its content shows.
pub fn read(path: &Path, format: Option<Format>, into: &mut Domains) -> std::io::Result<ListStats> {
    let bytes = std::fs::read(path)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    Ok(parse_text(&text, &path.display().to_string(), format, into))
}

/// Parses the text of one list (`source` names it in the stats) into `into`.
pub fn parse_text(
    text: &str,
    source: &str,
    format: Option<Format>,
    into: &mut Domains,
) -> ListStats {
    let detected = format.is_none();
    let format = format.unwrap_or_else(|| lists::detect(text.lines()));
    let mut stats = ListStats {
        path: source.to_string(),
        url: None,
        fetched_at: None,
        format: format.label(),
        detected,
        lines: 0,
        block: 0,
        allow: 0,
        name_only: 0,
        subdomains_only: 0,
        important: 0,
        badfilter: 0,
        skipped: BTreeMap::new(),
        invalid: 0,
        invalid_examples: Vec::new(),
    };
    // Collected, then sorted into sets at once (a bulk build: inserting a million names one by
    // one into a B-tree took most of a parse).
    // By scope (`scope_index`), blocks and exceptions.
    let mut block: [Vec<String>; 3] = Default::default();
    let mut allow: [Vec<String>; 3] = Default::default();
    // `$important` blocks and exceptions, `$badfilter`ed (allow, scope, name): applied once the
    // whole list is read (a rule may come before or after what it acts on).
    let mut marks = Marks::default();
    let mut parser = Parser::new(format);
    for (i, line) in text.lines().enumerate() {
        stats.lines += 1;
        let rule = match parser.line(line) {
            Line::Comment => continue,
            Line::Skip(kind) => {
                stats
                    .skipped
                    .entry(kind.label())
                    .and_modify(|s| s.lines += 1)
                    .or_insert(Skipped {
                        lines: 1,
                        first_line: i + 1,
                    });
                continue;
            }
            Line::Rule(r) => r,
        };
        let valid = |name: &str, stats: &mut ListStats| match normalised(name) {
            Ok(d) => Some(d),
            Err(why) => {
                stats.invalid += 1;
                if stats.invalid_examples.len() < 5 {
                    stats
                        .invalid_examples
                        .push((i + 1, format!("\"{name}\": {why}")));
                }
                None
            }
        };
        for name in rule.names() {
            let Some(d) = valid(name, &mut stats) else {
                continue;
            };
            let scope = scope_index(rule.scope);
            if rule.badfilter {
                stats.badfilter += 1;
                marks.badfilter.push((rule.allow, scope, d));
                continue;
            }
            match rule.scope {
                Scope::Subtree => {}
                Scope::Exact => stats.name_only += 1,
                Scope::Below => stats.subdomains_only += 1,
            }
            if rule.important {
                stats.important += 1;
                if rule.allow {
                    marks.important_allow.insert(d.clone());
                } else {
                    marks.important_block.insert(d.clone());
                }
            }
            for denied in rule.denied() {
                if let Some(e) = valid(denied, &mut stats)
                    && within(&e, &d)
                {
                    stats.allow += 1;
                    allow[0].push(e);
                }
            }
            if rule.allow {
                stats.allow += 1;
                allow[scope].push(d);
            } else {
                stats.block += 1;
                block[scope].push(d);
            }
        }
    }
    let [block, block_exact, block_below] = block.map(|v| v.into_iter().collect());
    let [allow, allow_exact, allow_below] = allow.map(|v| v.into_iter().collect());
    let mut list = Domains {
        block,
        allow,
        exact: Scoped {
            block: block_exact,
            allow: allow_exact,
        },
        below: Scoped {
            block: block_below,
            allow: allow_below,
        },
        marks: Marks::default(),
    };
    let (cancelled, overridden) = list.apply(&marks);
    stats.badfilter += cancelled;
    stats.important += overridden;
    list.marks = marks;
    list.merge_scopes();
    if *into == Domains::default() {
        *into = list;
    } else {
        into.block.extend(list.block);
        into.allow.extend(list.allow);
        for (to, from) in [(&mut into.exact, list.exact), (&mut into.below, list.below)] {
            to.block.extend(from.block);
            to.allow.extend(from.allow);
        }
        into.marks.absorb(&list.marks);
        into.merge_scopes();
    }
    stats
}

/// Applies each source's `$badfilter` and `$important` rules to the other sources of its
/// category, as AdGuard Home applies them across all its filter lists (a rule in a local list
/// can cancel one of a subscribed list). A source they change is replaced by a changed copy.
/// Returns how many rules they removed.
pub fn across(sources: &mut [Arc<Domains>]) -> usize {
    if sources.len() < 2 || sources.iter().all(|s| s.marks == Marks::default()) {
        return 0;
    }
    let mut all = Marks::default();
    for s in sources.iter() {
        all.absorb(&s.marks);
    }
    let mut removed = 0;
    for s in sources.iter_mut() {
        if s.affected_by(&all) {
            let mut changed = Domains::clone(s);
            let (cancelled, overridden) = changed.apply(&all);
            removed += cancelled + overridden;
            *s = Arc::new(changed);
        }
    }
    removed
}

/// Where a rule of `scope` is collected in `parse_text`.
fn scope_index(scope: Scope) -> usize {
    match scope {
        Scope::Subtree => 0,
        Scope::Exact => 1,
        Scope::Below => 2,
    }
}

/// What identifies one version of a file without reading it: a file rewritten in place or
/// replaced (the usual `mv new old` of a list updater) changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileVersion {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

struct Parsed {
    version: FileVersion,
    format: Option<Format>,
    /// Weak: the entry lives as long as some configuration holds the list, no longer.
    domains: Weak<Domains>,
    stats: ListStats,
}

/// List files read by this process, by path.
static READ: Mutex<Option<HashMap<PathBuf, Parsed>>> = Mutex::new(None);

/// Reads the list file at `path`, or returns what an earlier read of the same version of the
/// file gave, shared: a reload whose list files did not change does not parse them again, and
/// `apply` sees by pointer that their domains are the same.
pub fn read_shared(
    path: &Path,
    format: Option<Format>,
) -> std::io::Result<(Arc<Domains>, ListStats)> {
    let version = FileVersion::of(path)?;
    {
        let read = READ
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = read.as_ref().and_then(|r| r.get(path))
            && p.version == version
            && p.format == format
            && let Some(d) = p.domains.upgrade()
        {
            return Ok((d, p.stats.clone()));
        }
    }
    // Read after the version was taken: a write in between gives a newer version next time,
    // so the file is read again then, never skipped.
    let mut d = Domains::default();
    let stats = read(path, format, &mut d)?;
    let d = Arc::new(d);
    let mut read = READ
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let map = read.get_or_insert_with(HashMap::new);
    map.retain(|_, p| p.domains.strong_count() > 0);
    map.insert(
        path.to_path_buf(),
        Parsed {
            version,
            format,
            domains: Arc::downgrade(&d),
            stats: stats.clone(),
        },
    );
    Ok((d, stats))
}

/// The built-in `dns-bypass` category: DNS-over-HTTPS endpoints of public resolvers, so a
/// browser cannot resolve names around the filter. (Written for this project from the
/// resolvers' own documentation; extend it with a list file in the configuration.)
pub const DNS_BYPASS: &str = include_str!("dns-bypass.domains");

/// The contents of the built-in `dns-bypass` category (parsed once per process, shared).
pub fn dns_bypass() -> Arc<Domains> {
    static PARSED: std::sync::OnceLock<Arc<Domains>> = std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| {
            let mut d = Domains::default();
            for line in DNS_BYPASS.lines() {
                if let Line::Rule(r) = Parser::new(Format::Domains).line(line) {
                    d.block.extend(r.names().filter_map(|n| normalised(n).ok()));
                }
            }
            Arc::new(d)
        })
        .clone()
}

#[cfg(test)]
mod tests;
