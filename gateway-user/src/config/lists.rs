//! Category contents: list files (hosts, plain domains, adblock; the format detected per file)
//! and inline domains, normalised and de-duplicated, with counts of what was skipped.

use std::{
    collections::{BTreeSet, HashMap},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use gateway_common::{
    domain::{MAX_NAME, normalise},
    lists::{self, Format, Line},
};
use serde::Serialize;

/// What one list file held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListStats {
    pub path: String,
    pub format: &'static str,
    /// Block rules read (before de-duplication).
    pub block: usize,
    /// Allow (`@@`) rules read.
    pub allow: usize,
    /// Lines in syntax that does not apply at the DNS level (counted, not errors).
    pub unsupported: usize,
    /// Lines whose domain is not a valid name: (line number, why), the first few kept.
    pub invalid: usize,
    pub invalid_examples: Vec<(usize, String)>,
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
    Ok(String::from_utf8_lossy(&out[..n]).into_owned())
}

/// Reads the list file at `path` into `into`.
pub fn read(path: &Path, into: &mut Domains) -> std::io::Result<ListStats> {
    let text = std::fs::read_to_string(path)?;
    let format = lists::detect(text.lines());
    let mut stats = ListStats {
        path: path.display().to_string(),
        format: format.label(),
        block: 0,
        allow: 0,
        unsupported: 0,
        invalid: 0,
        invalid_examples: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let (names, allow) = match lists::parse(line, format) {
            Line::Comment => continue,
            Line::Unsupported => {
                stats.unsupported += 1;
                continue;
            }
            Line::Block(names) => (names, false),
            Line::Allow(names) => (names, true),
        };
        // Hosts lines may carry several names.
        let names: Vec<&str> = if format == Format::Hosts {
            names.split_whitespace().collect()
        } else {
            vec![names]
        };
        for name in names {
            match normalised(name) {
                Ok(d) => {
                    if allow {
                        stats.allow += 1;
                        into.allow.insert(d);
                    } else {
                        stats.block += 1;
                        into.block.insert(d);
                    }
                }
                Err(why) => {
                    stats.invalid += 1;
                    if stats.invalid_examples.len() < 5 {
                        stats
                            .invalid_examples
                            .push((i + 1, format!("\"{name}\": {why}")));
                    }
                }
            }
        }
    }
    Ok(stats)
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
    /// Weak: the entry lives as long as some configuration holds the list, no longer.
    domains: Weak<Domains>,
    stats: ListStats,
}

/// List files read by this process, by path.
static READ: Mutex<Option<HashMap<PathBuf, Parsed>>> = Mutex::new(None);

/// Reads the list file at `path`, or returns what an earlier read of the same version of the
/// file gave, shared: a reload whose list files did not change does not parse them again, and
/// `apply` sees by pointer that their domains are the same.
pub fn read_shared(path: &Path) -> std::io::Result<(Arc<Domains>, ListStats)> {
    let version = FileVersion::of(path)?;
    {
        let read = READ
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = read.as_ref().and_then(|r| r.get(path))
            && p.version == version
            && let Some(d) = p.domains.upgrade()
        {
            return Ok((d, p.stats.clone()));
        }
    }
    // Read after the version was taken: a write in between gives a newer version next time,
    // so the file is read again then, never skipped.
    let mut d = Domains::default();
    let stats = read(path, &mut d)?;
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
                if let Line::Block(name) = lists::parse(line, Format::Domains)
                    && let Ok(n) = normalised(name)
                {
                    d.block.insert(n);
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

    #[test]
    fn hosts_list_from_the_corpus() {
        let mut d = Domains::default();
        let s = read(&corpus("blocklistproject-basic.hosts"), &mut d).expect("readable");
        assert_eq!(s.format, "hosts");
        // The file says "Entries: 76,036".
        assert_eq!(s.block, 76_036, "{s:?}");
        assert_eq!(s.invalid, 0, "{s:?}");
        assert_eq!(d.block.len(), 76_036);
        assert!(d.block.contains("0-app.com"));
    }

    #[test]
    fn adblock_list_from_the_corpus() {
        let mut d = Domains::default();
        let s = read(&corpus("1hosts-lite.adblock"), &mut d).expect("readable");
        assert_eq!(s.format, "adblock");
        // The file says "Blocked: 52,577 domains".
        assert_eq!(
            (s.block, s.allow, s.unsupported, s.invalid),
            (52_577, 0, 0, 0),
            "{s:?}"
        );
        assert_eq!(d.block.len(), 52_577);
        assert!(d.block.contains("media-d.global.abb"));
    }

    #[test]
    fn domains_list_from_the_corpus() {
        let mut d = Domains::default();
        let s = read(&corpus("hagezi-doh-vpn-proxy-bypass.domains"), &mut d).expect("readable");
        assert_eq!(s.format, "domains");
        // The file says "Domains: 1205".
        assert_eq!((s.block, s.invalid), (1205, 0), "{s:?}");
        assert!(d.block.contains("1dot1dot1dot1.cloudflare-dns.com"));
    }

    #[test]
    fn mixed_adblock_counts_what_it_skips() {
        let dir = std::env::temp_dir().join(format!("gw-lists-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("mixed.txt");
        std::fs::write(&f, "! title\n||Ads.Example.com^\n@@||ok.ads.example.com^\nexample.com##.banner\n||bad domain^\n||x.example^$third-party\n").expect("write");
        let mut d = Domains::default();
        let s = read(&f, &mut d).expect("readable");
        assert_eq!(
            (s.block, s.allow, s.unsupported, s.invalid),
            (1, 1, 2, 1),
            "{s:?}"
        );
        assert!(d.block.contains("ads.example.com") && d.allow.contains("ok.ads.example.com"));
        assert_eq!(s.invalid_examples[0].0, 5);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_list_file_is_parsed_again_only_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("gw-lists-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("l.domains");
        std::fs::write(&f, "a.example\nb.example\n").expect("write");
        let (first, _) = read_shared(&f).expect("read");
        let (again, stats) = read_shared(&f).expect("read");
        assert!(Arc::ptr_eq(&first, &again), "unchanged file parsed again");
        assert_eq!(stats.block, 2);
        // Same length, new content: a new version all the same.
        std::fs::write(&f, "a.example\nc.example\n").expect("write");
        let (changed, _) = read_shared(&f).expect("read");
        assert!(!Arc::ptr_eq(&first, &changed));
        assert!(changed.block.contains("c.example") && !changed.block.contains("b.example"));
        // Replaced by rename, as list updaters do.
        let tmp = dir.join("l.tmp");
        std::fs::write(&tmp, "d.example\n").expect("write");
        std::fs::rename(&tmp, &f).expect("rename");
        let (renamed, _) = read_shared(&f).expect("read");
        assert_eq!(renamed.block.len(), 1);
        // Nobody holds it any more: the entry goes, and the next read parses the file.
        let weak = Arc::downgrade(&renamed);
        drop((first, again, changed, renamed));
        assert!(weak.upgrade().is_none());
        assert_eq!(read_shared(&f).expect("read").0.block.len(), 1);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn built_in_dns_bypass_category() {
        let d = dns_bypass();
        assert!(d.block.len() >= 30);
        assert!(d.block.contains("dns.google") && d.block.contains("cloudflare-dns.com"));
    }
}
