//! SafeSearch (SPEC §15): the engines, the names each covers and its enforcement name, from a
//! data file (the built-in `safe_search.toml`, or `[safe_search] engines`); the resolver the
//! daemon asks for the enforcement names' addresses; each policy's `safe_search` switches; and
//! what one generation of the kernel maps holds for them. Pure.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use gateway_common::safe_search::{MAX_SAFE_TARGETS, SAFE_NAME_SLOTS, SafeName, SafeTarget};
use serde::Deserialize;
use toml::Spanned;

use super::{lists, locate::Locator};
use crate::errors::ConfigError;

/// The mapping shipped in the binary.
pub const BUILTIN_ENGINES: &str = include_str!("safe_search.toml");
/// How the built-in mapping is named in errors.
const BUILTIN_NAME: &str = "(built-in safe_search.toml)";

/// `[safe_search]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSafeSearch {
    /// `host:port` or an address (port 53) of the resolver the enforcement names are resolved
    /// through; default the system's (`/etc/resolv.conf`).
    pub(super) resolver: Option<Spanned<String>>,
    /// A mapping file of the built-in's form that replaces it.
    pub(super) engines: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngines {
    #[serde(rename = "engine")]
    engines: Vec<Spanned<RawEngine>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    name: Spanned<String>,
    target: Spanned<String>,
    #[serde(default)]
    names: Vec<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    domains: Vec<Spanned<String>>,
}

/// An engine: the names it covers and the enforcement name that answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    pub name: String,
    pub target: String,
    pub names: BTreeSet<String>,
}

/// `[safe_search]` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeSearch {
    /// The resolver for the enforcement names; `None`: the system's.
    pub resolver: Option<SocketAddr>,
    pub engines: Vec<Engine>,
}

/// Reads a mapping file (`file` names it in errors). Every error located, all at once.
pub fn parse_engines(text: &str, file: &Path) -> Result<Vec<Engine>, Vec<ConfigError>> {
    let loc = Locator::new(text, file);
    let raw: RawEngines = toml::from_str(text)
        .map_err(|e| vec![loc.error(e.span().map_or(0, |s| s.start), e.message().to_string())])?;
    let mut errors = Vec::new();
    let mut engines: Vec<Engine> = Vec::new();
    let mut targets = BTreeSet::new();
    for e in &raw.engines {
        let e = e.get_ref();
        let name = e.name.get_ref();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            errors.push(loc.at(
                &e.name,
                format!("engine \"{name}\": a name is letters, digits and '-'"),
            ));
        }
        if engines.iter().any(|x| &x.name == name) {
            errors.push(loc.at(&e.name, format!("engine \"{name}\" is defined twice")));
        }
        let target = match lists::normalised(e.target.get_ref()) {
            Ok(t) if SafeTarget::named(&t).is_some() => t,
            Ok(t) => {
                errors.push(loc.at(
                    &e.target,
                    format!(
                        "engine \"{name}\": target \"{t}\" is longer than {} bytes on the wire",
                        gateway_common::safe_search::MAX_TARGET_WIRE
                    ),
                ));
                continue;
            }
            Err(why) => {
                errors.push(loc.at(
                    &e.target,
                    format!(
                        "engine \"{name}\": target \"{}\" is not a domain: {why}",
                        e.target.get_ref()
                    ),
                ));
                continue;
            }
        };
        targets.insert(target.clone());
        let mut names = BTreeSet::new();
        let prefix = e.prefix.as_ref().map(|p| p.get_ref().trim_end_matches('.'));
        if !e.domains.is_empty() && prefix.is_none() {
            errors.push(loc.at(
                &e.domains[0],
                format!("engine \"{name}\": domains need a prefix (e.g. prefix = \"www\")"),
            ));
        }
        let whole = e.names.iter().map(|n| (n, n.get_ref().clone()));
        let under = e
            .domains
            .iter()
            .map(|d| (d, format!("{}.{}", prefix.unwrap_or(""), d.get_ref())));
        for (at, text) in whole.chain(under) {
            match lists::normalised(&text) {
                Ok(n) if n == target => {
                    errors.push(loc.at(at, format!("engine \"{name}\": \"{n}\" is its own target")))
                }
                Ok(n) => {
                    names.insert(n);
                }
                Err(why) => errors.push(loc.at(
                    at,
                    format!("engine \"{name}\": \"{text}\" is not a domain: {why}"),
                )),
            }
        }
        if names.is_empty() {
            errors.push(loc.at(&e.name, format!("engine \"{name}\": covers no names")));
        }
        engines.push(Engine {
            name: name.clone(),
            target,
            names,
        });
    }
    if targets.len() > MAX_SAFE_TARGETS as usize {
        errors.push(loc.error(
            0,
            format!(
                "{} enforcement names; at most {MAX_SAFE_TARGETS} are supported",
                targets.len()
            ),
        ));
    }
    let covered: usize = engines.iter().map(|e| e.names.len()).sum();
    if covered > (SAFE_NAME_SLOTS / 2) as usize {
        errors.push(loc.error(
            0,
            format!(
                "{covered} covered names; at most {} are supported",
                SAFE_NAME_SLOTS / 2
            ),
        ));
    }
    if errors.is_empty() {
        Ok(engines)
    } else {
        Err(errors)
    }
}

/// The built-in engines (the binary's own data: an error in it fails its tests).
pub fn builtin() -> Result<Vec<Engine>, Vec<ConfigError>> {
    parse_engines(BUILTIN_ENGINES, Path::new(BUILTIN_NAME))
}

/// Validates `[safe_search]`: the resolver, and the engines file (read here, relative to
/// `base`, and listed in `files` so that a change to it reloads).
pub(super) fn validate(
    raw: &RawSafeSearch,
    base: &Path,
    loc: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
    files: &mut Vec<PathBuf>,
) -> SafeSearch {
    let resolver = raw.resolver.as_ref().and_then(|r| match parse_resolver(r.get_ref()) {
        Some(a) => Some(a),
        None => {
            errors.push(loc.at(r, format!("safe_search.resolver: \"{}\" is not an address (expected e.g. 9.9.9.9, 192.0.2.53:5353 or [2001:db8::53]:53)", r.get_ref())));
            None
        }
    });
    let engines = match &raw.engines {
        None => builtin().unwrap_or_else(|e| {
            errors.extend(e);
            Vec::new()
        }),
        Some(p) => {
            let path = base.join(p.get_ref());
            files.push(path.clone());
            match std::fs::read_to_string(&path) {
                Ok(text) => parse_engines(&text, &path).unwrap_or_else(|e| {
                    errors.extend(e);
                    Vec::new()
                }),
                Err(e) => {
                    errors.push(loc.at(p, format!("safe_search.engines: {}: {e}", path.display())));
                    Vec::new()
                }
            }
        }
    };
    SafeSearch { resolver, engines }
}

/// `ip`, `ip:port` or `[ip6]:port` (port 53 unless given).
pub fn parse_resolver(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    s.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

/// A policy's `safe_search`: the engines' indexes. Unknown engines and two engines covering the
/// same name (`youtube-strict` and `youtube-moderate`) are located errors.
pub(super) fn policy_engines(
    listed: &[Spanned<String>],
    engines: &[Engine],
    policy: &str,
    loc: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for l in listed {
        let Some(i) = engines.iter().position(|e| &e.name == l.get_ref()) else {
            let known: Vec<&str> = engines.iter().map(|e| e.name.as_str()).collect();
            errors.push(loc.at(
                l,
                format!(
                    "policy \"{policy}\": safe_search: no engine \"{}\" (known: {})",
                    l.get_ref(),
                    known.join(", ")
                ),
            ));
            continue;
        };
        if out.contains(&i) {
            continue;
        }
        if let Some(&j) = out
            .iter()
            .find(|&&j| !engines[j].names.is_disjoint(&engines[i].names))
        {
            errors.push(loc.at(l, format!("policy \"{policy}\": safe_search: \"{}\" and \"{}\" cover the same names (choose one)", engines[i].name, engines[j].name)));
            continue;
        }
        out.push(i);
    }
    out
}

/// What one generation holds for SafeSearch: the targets in use (their index is their slot in
/// `SAFE_TARGETS`), and for every covered name, per policy, its target (+ 1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SafeImage {
    pub targets: Vec<String>,
    pub names: BTreeMap<String, SafeName>,
}

impl SafeImage {
    /// `policies[id]` lists the engines (indexes into `engines`) of policy `id`.
    pub fn compile(engines: &[Engine], policies: &[&[usize]]) -> Self {
        let mut image = Self::default();
        for (id, list) in policies.iter().enumerate().take(64) {
            for &e in list.iter() {
                let Some(engine) = engines.get(e) else {
                    continue;
                };
                let t = match image.targets.iter().position(|t| t == &engine.target) {
                    Some(t) => t,
                    None => {
                        image.targets.push(engine.target.clone());
                        image.targets.len() - 1
                    }
                };
                for n in &engine.names {
                    image.names.entry(n.clone()).or_default().targets[id] = (t + 1) as u8;
                }
            }
        }
        image
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_mapping_covers_every_engine() {
        let engines = builtin().expect("the built-in mapping is valid");
        let by = |n: &str| engines.iter().find(|e| e.name == n).expect(n);
        let google = by("google");
        assert_eq!(google.target, "forcesafesearch.google.com");
        // Google's country domains, each as www.google.X.
        assert!(google.names.len() >= 180, "{}", google.names.len());
        for n in [
            "www.google.com",
            "www.google.de",
            "www.google.co.uk",
            "www.google.com.br",
            "www.google.co.jp",
            "www.google.cat",
        ] {
            assert!(google.names.contains(n), "{n}");
        }
        assert!(google.names.iter().all(|n| n.starts_with("www.google.")));
        for (engine, target) in [
            ("youtube-strict", "restrict.youtube.com"),
            ("youtube-moderate", "restrictmoderate.youtube.com"),
        ] {
            let e = by(engine);
            assert_eq!(e.target, target);
            let want: BTreeSet<String> = [
                "www.youtube.com",
                "m.youtube.com",
                "youtubei.googleapis.com",
                "youtube.googleapis.com",
                "www.youtube-nocookie.com",
            ]
            .map(String::from)
            .into();
            assert_eq!(e.names, want);
        }
        assert_eq!(by("bing").target, "strict.bing.com");
        assert!(by("bing").names.contains("www.bing.com"));
        assert_eq!(by("duckduckgo").target, "safe.duckduckgo.com");
        assert!(by("duckduckgo").names.contains("duckduckgo.com"));
        assert_eq!(by("ecosia").target, "strict-safe-search.ecosia.org");
        assert_eq!(by("pixabay").target, "safesearch.pixabay.com");
        let yandex = by("yandex");
        assert_eq!(yandex.target, "familysearch.yandex.ru");
        assert!(yandex.names.contains("yandex.ru") && yandex.names.contains("www.yandex.com.tr"));
    }

    #[test]
    fn mapping_errors_are_located() {
        let text = "[[engine]]\nname = \"x\"\ntarget = \"safe.example\"\nnames = [\"a..b\"]\n\n[[engine]]\nname = \"x\"\ntarget = \"bad target\"\ndomains = [\"example\"]\n";
        let e = parse_engines(text, Path::new("m.toml")).expect_err("invalid");
        let lines: Vec<String> = e
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("4:10:") && l.contains("\"a..b\" is not a domain")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("7:8:") && l.contains("defined twice")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("8:10:") && l.contains("not a domain")),
            "{lines:?}"
        );
        let e = parse_engines("[[engine]]\nname = 3\n", Path::new("m.toml")).expect_err("type");
        assert_eq!(e[0].line, 2);
        let e = parse_engines(
            "[[engine]]\nname = \"x\"\ntarget = \"t.example\"\ndomains = [\"a.example\"]\n",
            Path::new("m.toml"),
        )
        .expect_err("prefix");
        assert!(e[0].message.contains("need a prefix"), "{e:?}");
    }

    #[test]
    fn images_give_each_policy_its_target() {
        let engines = builtin().expect("valid");
        let idx = |n: &str| engines.iter().position(|e| e.name == n).expect(n);
        let a = [idx("google"), idx("youtube-strict")];
        let b = [idx("youtube-moderate")];
        let image = SafeImage::compile(&engines, &[&a, &[], &b]);
        assert_eq!(
            image.targets,
            [
                "forcesafesearch.google.com",
                "restrict.youtube.com",
                "restrictmoderate.youtube.com"
            ]
        );
        let yt = image.names.get("www.youtube.com").expect("covered");
        assert_eq!(&yt.targets[..3], &[2, 0, 3]);
        let g = image.names.get("www.google.fr").expect("covered");
        assert_eq!(&g.targets[..3], &[1, 0, 0]);
        assert!(!image.names.contains_key("www.bing.com"));
    }

    #[test]
    fn resolvers_take_a_port_or_53() {
        assert_eq!(
            parse_resolver("9.9.9.9"),
            Some("9.9.9.9:53".parse().expect("addr"))
        );
        assert_eq!(
            parse_resolver("[::1]:5353"),
            Some("[::1]:5353".parse().expect("addr"))
        );
        assert_eq!(
            parse_resolver("2001:db8::53"),
            Some("[2001:db8::53]:53".parse().expect("addr"))
        );
        assert_eq!(parse_resolver("resolver.example"), None);
    }
}
