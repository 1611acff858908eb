//! Category contents: list files (hosts, plain domains, adblock; the format detected per file)
//! and inline domains, normalised and de-duplicated, with counts of what was skipped.

use std::{collections::BTreeSet, path::Path};

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

/// The built-in `dns-bypass` category: DNS-over-HTTPS endpoints of public resolvers, so a
/// browser cannot resolve names around the filter. (Written for this project from the
/// resolvers' own documentation; extend it with a list file in the configuration.)
pub const DNS_BYPASS: &str = include_str!("dns-bypass.domains");

/// The contents of the built-in `dns-bypass` category.
pub fn dns_bypass() -> Domains {
    let mut d = Domains::default();
    for line in DNS_BYPASS.lines() {
        if let Line::Block(name) = lists::parse(line, Format::Domains)
            && let Ok(n) = normalised(name)
        {
            d.block.insert(n);
        }
    }
    d
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
    fn built_in_dns_bypass_category() {
        let d = dns_bypass();
        assert!(d.block.len() >= 30);
        assert!(d.block.contains("dns.google") && d.block.contains("cloudflare-dns.com"));
    }
}
