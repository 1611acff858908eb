//! Category contents: list files (hosts, plain and wildcard domains, adblock / AdGuard DNS,
//! dnsmasq, RPZ; the format detected per file or forced by the configuration) and inline
//! domains, normalised and de-duplicated, with counts of what was skipped, by kind.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
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
    /// Rules that cover one name only (`|d^`, an RPZ owner) or its subdomains only (`*.d`),
    /// applied to the name and its subdomains (the kernel matches those).
    pub widened: usize,
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

/// Domains a category blocks and allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Domains {
    pub block: BTreeSet<String>,
    pub allow: BTreeSet<String>,
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
        widened: 0,
        important: 0,
        badfilter: 0,
        skipped: BTreeMap::new(),
        invalid: 0,
        invalid_examples: Vec::new(),
    };
    // Collected, then sorted into sets at once (a bulk build: inserting a million names one by
    // one into a B-tree took most of a parse).
    let mut block: Vec<String> = Vec::new();
    let mut allow: Vec<String> = Vec::new();
    // `$important` blocks and exceptions, `$badfilter`ed (allow, name) pairs: applied once the
    // whole list is read (a rule may come before or after what it acts on).
    let mut important_block: HashSet<String> = HashSet::new();
    let mut important_allow: HashSet<String> = HashSet::new();
    let mut cancelled: Vec<(bool, String)> = Vec::new();
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
            if rule.badfilter {
                stats.badfilter += 1;
                cancelled.push((rule.allow, d));
                continue;
            }
            if rule.scope != Scope::Subtree {
                stats.widened += 1;
            }
            if rule.important {
                stats.important += 1;
                if rule.allow {
                    important_allow.insert(d.clone());
                } else {
                    important_block.insert(d.clone());
                }
            }
            for denied in rule.denied() {
                if let Some(e) = valid(denied, &mut stats)
                    && within(&e, &d)
                {
                    stats.allow += 1;
                    allow.push(e);
                }
            }
            if rule.allow {
                stats.allow += 1;
                allow.push(d);
            } else {
                stats.block += 1;
                block.push(d);
            }
        }
    }
    let mut list = Domains {
        block: block.into_iter().collect(),
        allow: allow.into_iter().collect(),
    };
    for (allow, d) in cancelled {
        let set = if allow {
            &mut list.allow
        } else {
            &mut list.block
        };
        if set.remove(&d) {
            stats.badfilter += 1;
        }
    }
    if !important_block.is_empty() {
        // An important block beats the exceptions at or below it that are not important.
        let before = list.allow.len();
        list.allow.retain(|e| {
            important_allow.contains(e)
                || !std::iter::successors(Some(e.as_str()), |n| n.split_once('.').map(|x| x.1))
                    .any(|a| important_block.contains(a))
        });
        stats.important += before - list.allow.len();
    }
    if into.block.is_empty() && into.allow.is_empty() {
        *into = list;
    } else {
        into.block.extend(list.block);
        into.allow.extend(list.allow);
    }
    stats
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
mod tests {
    use super::*;

    fn corpus(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/corpus/lists")
            .join(name)
    }

    fn skipped(s: &ListStats) -> Vec<(&'static str, usize)> {
        s.skipped.iter().map(|(k, v)| (*k, v.lines)).collect()
    }

    #[test]
    fn hosts_list_from_the_corpus() {
        let mut d = Domains::default();
        let s = read(&corpus("blocklistproject-basic.hosts"), None, &mut d).expect("readable");
        assert_eq!((s.format, s.detected, s.lines), ("hosts", true, 76_049));
        // The file says "Entries: 76,036".
        assert_eq!((s.block, s.allow, s.invalid), (76_036, 0, 0), "{s:?}");
        assert_eq!(skipped(&s), [], "{s:?}");
        assert_eq!(d.block.len(), 76_036);
        assert!(d.block.contains("0-app.com"));
    }

    #[test]
    fn adblock_list_from_the_corpus() {
        let mut d = Domains::default();
        let s = read(&corpus("1hosts-lite.adblock"), None, &mut d).expect("readable");
        assert_eq!((s.format, s.lines), ("adblock", 52_596));
        // The file says "Blocked: 52,577 domains".
        assert_eq!((s.block, s.allow, s.invalid), (52_577, 0, 0), "{s:?}");
        assert_eq!(skipped(&s), [], "{s:?}");
        assert_eq!(d.block.len(), 52_577);
        assert!(d.block.contains("media-d.global.abb"));
    }

    #[test]
    fn domains_list_from_the_corpus() {
        let mut d = Domains::default();
        let s =
            read(&corpus("hagezi-doh-vpn-proxy-bypass.domains"), None, &mut d).expect("readable");
        assert_eq!((s.format, s.lines), ("domains", 1_216));
        // The file says "Domains: 1205".
        assert_eq!((s.block, s.invalid), (1205, 0), "{s:?}");
        assert!(d.block.contains("1dot1dot1dot1.cloudflare-dns.com"));
    }

    #[test]
    fn a_forced_format_is_used_as_given() {
        let mut d = Domains::default();
        // Read as domains, a hosts file's lines are still hosts lines (real lists mix them).
        let s = read(
            &corpus("blocklistproject-basic.hosts"),
            Some(Format::Domains),
            &mut d,
        )
        .expect("readable");
        assert_eq!((s.format, s.detected, s.block), ("domains", false, 76_036));
        // Read as RPZ, an adblock list gives nothing it does not say.
        let mut d = Domains::default();
        let s = read(&corpus("1hosts-lite.adblock"), Some(Format::Rpz), &mut d).expect("readable");
        assert_eq!((s.format, s.block), ("rpz", 0), "{s:?}");
        assert!(d.block.is_empty());
    }

    /// EasyList and EasyPrivacy as Debian ships them (`cargo xtask setup` installs
    /// `webext-ublock-origin-chromium`): their `||domain^` rules must all be read.
    #[test]
    fn easylist_from_debian() {
        let dir =
            Path::new("/usr/share/chromium/extensions/ublock-origin/assets/thirdparties/easylist");
        let Ok(entries) = std::fs::read_dir(dir) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{}: missing (cargo xtask setup installs webext-ublock-origin-chromium)",
                dir.display()
            );
            return;
        };
        let mut seen = 0;
        for e in entries.flatten() {
            let path = e.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".txt") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            // What a plain `||name^` line (no options) says, counted independently.
            let plain = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("||")?.strip_suffix('^'))
                .filter(|n| {
                    n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                })
                .filter(|n| n.contains('.') && normalised(n).is_ok())
                // Addresses are not names (`||192.0.2.1^` is skipped as an address rule).
                .filter(|n| !n.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())))
                .count();
            let mut d = Domains::default();
            let s = read(&path, None, &mut d).expect("readable");
            eprintln!("{name}: {s:?}");
            assert_eq!(s.format, "adblock", "{name}");
            assert!(
                s.block >= plain,
                "{name}: {} of {plain} plain rules",
                s.block
            );
            // A floor: each list has tens of thousands of them (Debian's 2024 copies: ~40k).
            assert!(s.block >= 10_000, "{name}: only {} domain rules", s.block);
            for kind in ["cosmetic", "path", "browser_option"] {
                assert!(
                    s.skipped.contains_key(kind),
                    "{name}: no {kind} lines? {s:?}"
                );
            }
            seen += 1;
        }
        assert!(seen >= 2, "EasyList and EasyPrivacy in {}", dir.display());
    }

    fn parsed(text: &str) -> (Domains, ListStats) {
        let mut d = Domains::default();
        let s = parse_text(text, "test", None, &mut d);
        (d, s)
    }

    #[test]
    fn mixed_adblock_counts_what_it_skips() {
        let (d, s) = parsed(
            "! title\n||Ads.Example.com^\n@@||ok.ads.example.com^\nexample.com##.banner\n||bad..example^\n||x.example^$third-party\n/ads[0-9]/\n",
        );
        assert_eq!((s.block, s.allow, s.invalid), (1, 1, 1), "{s:?}");
        assert_eq!(
            skipped(&s),
            [("browser_option", 1), ("cosmetic", 1), ("regex", 1)],
            "{s:?}"
        );
        assert_eq!(s.skipped["cosmetic"].first_line, 4);
        assert_eq!(s.skipped["regex"].first_line, 7);
        assert!(d.block.contains("ads.example.com") && d.allow.contains("ok.ads.example.com"));
        assert_eq!(s.invalid_examples[0].0, 5);
    }

    #[test]
    fn important_and_badfilter_within_a_list() {
        let (d, s) = parsed(
            "||a.example^$important\n@@||x.a.example^\n@@||y.a.example^$important\n||b.example^\n||b.example^$badfilter\n@@||c.example^\n@@||c.example^$badfilter\n||d.example^$denyallow=ok.d.example|other.example\n",
        );
        assert!(d.block.contains("a.example"));
        // The important block beats the plain exception, not the important one.
        assert!(!d.allow.contains("x.a.example") && d.allow.contains("y.a.example"));
        // Cancelled, whichever comes first.
        assert!(!d.block.contains("b.example") && !d.allow.contains("c.example"));
        // `$denyallow` names below the rule's become its exceptions; others mean nothing here.
        assert!(d.block.contains("d.example") && d.allow.contains("ok.d.example"));
        assert!(!d.allow.contains("other.example"));
        assert_eq!(s.badfilter, 4, "{s:?}");
    }

    #[test]
    fn every_format_by_content() {
        let cases: &[(&str, &str, &[&str], &[&str])] = &[
            (
                "0.0.0.0 a.example b.example\n127.0.0.1 localhost\n",
                "hosts",
                &["a.example", "b.example"],
                &[],
            ),
            (
                "*.a.example\n*.b.example\nc.example\n",
                "wildcard",
                &["a.example", "b.example", "c.example"],
                &[],
            ),
            (
                "address=/a.example/0.0.0.0\nserver=/ok.example/#\nlocal=/l.example/\n",
                "dnsmasq",
                &["a.example", "l.example"],
                &["ok.example"],
            ),
            (
                "$TTL 60\n@ SOA a. b. 1 2 3 4 5\nbad.example CNAME .\n*.bad.example CNAME .\nok.example CNAME rpz-passthru.\n",
                "rpz",
                &["bad.example"],
                &["ok.example"],
            ),
        ];
        for (text, format, block, allow) in cases {
            let (d, s) = parsed(text);
            assert_eq!(s.format, *format, "{text}");
            assert_eq!(
                d.block.iter().map(String::as_str).collect::<Vec<_>>(),
                *block,
                "{text}"
            );
            assert_eq!(
                d.allow.iter().map(String::as_str).collect::<Vec<_>>(),
                *allow,
                "{text}"
            );
        }
    }

    #[test]
    fn not_utf8_is_an_error_naming_the_byte() {
        let dir = std::env::temp_dir().join(format!("gw-lists-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("bin.txt");
        std::fs::write(&f, b"a.example\n\xff\xfe\n").expect("write");
        let e = read(&f, None, &mut Domains::default()).expect_err("binary");
        assert!(e.to_string().contains("byte 10"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_list_file_is_parsed_again_only_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("gw-lists-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("l.domains");
        std::fs::write(&f, "a.example\nb.example\n").expect("write");
        let (first, _) = read_shared(&f, None).expect("read");
        let (again, stats) = read_shared(&f, None).expect("read");
        assert!(Arc::ptr_eq(&first, &again), "unchanged file parsed again");
        assert_eq!(stats.block, 2);
        // Same length, new content: a new version all the same.
        std::fs::write(&f, "a.example\nc.example\n").expect("write");
        let (changed, _) = read_shared(&f, None).expect("read");
        assert!(!Arc::ptr_eq(&first, &changed));
        assert!(changed.block.contains("c.example") && !changed.block.contains("b.example"));
        // Replaced by rename, as list updaters do.
        let tmp = dir.join("l.tmp");
        std::fs::write(&tmp, "d.example\n").expect("write");
        std::fs::rename(&tmp, &f).expect("rename");
        let (renamed, _) = read_shared(&f, None).expect("read");
        assert_eq!(renamed.block.len(), 1);
        // Nobody holds it any more: the entry goes, and the next read parses the file.
        let weak = Arc::downgrade(&renamed);
        drop((first, again, changed, renamed));
        assert!(weak.upgrade().is_none());
        assert_eq!(read_shared(&f, None).expect("read").0.block.len(), 1);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn built_in_dns_bypass_category() {
        let d = dns_bypass();
        assert!(d.block.len() >= 30);
        assert!(d.block.contains("dns.google") && d.block.contains("cloudflare-dns.com"));
    }

    #[test]
    fn a_list_entry_may_force_its_format() {
        let dir = std::env::temp_dir().join(format!("gw-format-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // Bare names only: detected as domains, read as dnsmasq they say nothing.
        std::fs::write(dir.join("l.txt"), "a.example\nb.example\n").expect("write");
        let toml = |entry: &str| {
            format!(
                "[[category]]\nname = \"c\"\nlists = [{entry}]\n[[policy]]\nname = \"p\"\nblock_categories = [\"c\"]\n"
            )
        };
        let t = dir.join("t.toml");
        let c = crate::config::Config::parse(&toml("\"l.txt\""), &t).expect("detected");
        assert_eq!(
            (
                c.categories[0].lists[0].format,
                c.categories[0].lists[0].detected
            ),
            ("domains", true)
        );
        let c =
            crate::config::Config::parse(&toml("{ path = \"l.txt\", format = \"dnsmasq\" }"), &t)
                .expect("forced");
        let l = &c.categories[0].lists[0];
        assert_eq!((l.format, l.detected, l.block), ("dnsmasq", false, 0));
        assert_eq!(l.skipped["directive"].lines, 2);
        let e = crate::config::Config::parse(&toml("{ path = \"l.txt\", format = \"zone\" }"), &t)
            .expect_err("unknown format")
            .to_string();
        assert!(
            e.contains("t.toml:3:")
                && e.contains(": category \"c\": list: ")
                && e.contains(
                    "format \"zone\" is not one of rpz, dnsmasq, adblock, hosts, wildcard, domains"
                ),
            "{e}"
        );
        let e = crate::config::Config::parse(&toml("{ file = \"l.txt\" }"), &t)
            .expect_err("no path")
            .to_string();
        assert!(
            e.contains("t.toml:3:") && e.contains("a path or URL, or a table"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
