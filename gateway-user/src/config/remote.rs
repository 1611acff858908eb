//! Lists by URL, on the configuration's side: a list entry resolved to the file that is read
//! (a list file, or the cached copy of a download under `<state_dir>/lists/`), what is known of
//! the last download (the `.json` beside the copy), and the guards a new download must pass
//! before it replaces the copy. Pure apart from reading those two files; the downloading is the
//! daemon's (`daemon/lists.rs`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use gateway_common::lists::Format;
use serde::{Deserialize, Serialize};

use super::{
    lists::{self, Domains, ListStats},
    raw::{RawList, RawRefresh},
};

/// How often a list by URL is fetched again unless its entry says (`refresh`).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// How much smaller (in rules, percent) a download may be than the copy in use (`max_shrink`).
pub const DEFAULT_MAX_SHRINK: u8 = 50;
/// The largest download accepted (after decompression): 64 MiB holds the largest public lists
/// (a few million names) several times over.
pub const MAX_LIST_BYTES: u64 = 64 << 20;
/// Where downloads are kept, under the state directory.
const LISTS_DIR: &str = "lists";

/// A list the daemon downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteList {
    /// As configured (it may hold credentials: log `shown()`, never this).
    pub url: String,
    /// The format it is read in (`None`: detected).
    pub format: Option<Format>,
    pub refresh: Duration,
    /// Percent of its rules a download may lose against the copy in use (100: any).
    pub max_shrink: u8,
    /// The fewest rules a download must give (0: an empty list is accepted).
    pub min_rules: usize,
    /// The copy in use: `<state_dir>/lists/<hash of the URL>.list`.
    pub cache: PathBuf,
}

impl RemoteList {
    /// The URL without credentials or query (what logs, metrics and reports show).
    pub fn shown(&self) -> String {
        redact(&self.url)
    }

    /// What is known of its downloads (the default if nothing was downloaded yet).
    pub fn meta(&self) -> Meta {
        Meta::read(&meta_path(&self.cache)).unwrap_or_default()
    }

    /// Whether a download that parsed to `new` may replace the copy in use, which gave
    /// `in_use` rules (`None`: there is none); else why not.
    pub fn admits(&self, new: &ListStats, in_use: Option<usize>) -> Result<(), String> {
        let rules = new.block + new.allow;
        if rules < self.min_rules {
            return Err(format!(
                "gives {rules} rules ({} lines read as {}), fewer than min_rules = {}: an error page, a wrong URL or a cut download?",
                new.lines, new.format, self.min_rules
            ));
        }
        if let Some(old) = in_use
            && self.max_shrink < 100
            && old > 0
            && (rules as u128) * 100 < (old as u128) * u128::from(100 - self.max_shrink)
        {
            return Err(format!(
                "gives {rules} rules where the copy in use gives {old}: shrunk by more than max_shrink = {}%",
                self.max_shrink
            ));
        }
        Ok(())
    }
}

/// The record beside a cached copy (`<hash>.json`): the validators of the copy in use (sent
/// back as `If-None-Match` / `If-Modified-Since`), and how its downloads went.
///
/// The validators are those of the copy *in use*: a download that is refused leaves them
/// alone, so the next request gets the whole list again rather than a 304 for a list that
/// was never taken (the OPA bundle downloader's issue #2220).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// The URL, redacted (to recognise the file by).
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// When the copy in use was downloaded (Unix seconds).
    pub fetched_at: Option<i64>,
    /// When the server was last asked.
    pub checked_at: Option<i64>,
    /// When the server last answered with a list taken or a 304.
    pub last_success: Option<i64>,
    /// Rules the copy in use gives.
    pub rules: usize,
    /// Attempts that failed or were refused since the last success.
    pub failures: u64,
    /// Attempts by outcome: `changed`, `unchanged`, `failed`, `refused`.
    pub results: BTreeMap<String, u64>,
    pub last_error: Option<String>,
}

impl Meta {
    /// The record at `path`, if there is a readable one.
    pub fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes it to `path` whole (a new file renamed over the old one).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_whole(path, &text)
    }
}

/// Writes `bytes` to `path` through a temporary file renamed over it: a reader (the daemon's
/// watcher, `gateway check`) sees the old file or the new one, never part of one.
pub fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The record beside the cached copy `cache`.
pub fn meta_path(cache: &Path) -> PathBuf {
    cache.with_extension("json")
}

/// `url` without `user:password@` and with its query and fragment elided.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = match tail.find(['?', '#']) {
        Some(i) => format!("{}?…", &tail[..i]),
        None => tail.to_string(),
    };
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// A list entry of the configuration, resolved.
pub(super) struct ListEntry {
    /// The file read: the list file, or the cached copy of the download.
    pub(super) path: PathBuf,
    pub(super) format: Option<Format>,
    pub(super) remote: Option<RemoteList>,
}

/// Whether a list entry's string is a URL rather than a path.
fn is_url(s: &str) -> bool {
    s.contains("://")
}

/// Resolves a list entry: paths relative to `base`, downloads cached under `state_dir`.
pub(super) fn resolve(entry: &RawList, base: &Path, state_dir: &Path) -> Result<ListEntry, String> {
    let format = match entry.format() {
        None => None,
        Some(label) => Some(Format::from_label(label).ok_or_else(|| {
            let known: Vec<&str> = Format::ALL.iter().map(|f| f.label()).collect();
            format!("format \"{label}\" is not one of {}", known.join(", "))
        })?),
    };
    let (path, url) = match entry {
        RawList::Path(p) if is_url(p) => (None, Some(p.as_str())),
        RawList::Path(p) => (Some(p.as_str()), None),
        RawList::Table(t) => match (&t.path, &t.url) {
            (Some(_), Some(_)) => return Err("give path or url, not both".into()),
            (None, None) => return Err("give path = \"…\" or url = \"…\"".into()),
            (Some(p), None) if is_url(p) => {
                return Err(format!("\"{p}\" is a URL: write url = \"{p}\""));
            }
            (Some(p), None) => (Some(p.as_str()), None),
            (None, Some(u)) => (None, Some(u.as_str())),
        },
    };
    let Some(url) = url else {
        if let RawList::Table(t) = entry
            && (t.refresh.is_some() || t.max_shrink.is_some() || t.min_rules.is_some())
        {
            return Err("refresh, max_shrink and min_rules apply to lists by url only".into());
        }
        return Ok(ListEntry {
            path: base.join(path.unwrap_or_default()),
            format,
            remote: None,
        });
    };
    check_url(url)?;
    let (refresh, max_shrink, min_rules) = match entry {
        RawList::Table(t) => (t.refresh.as_ref(), t.max_shrink, t.min_rules),
        RawList::Path(_) => (None, None, None),
    };
    let refresh = match refresh {
        None => DEFAULT_REFRESH,
        Some(r) => parse_duration(r, "refresh")?,
    };
    let max_shrink = match max_shrink {
        None => DEFAULT_MAX_SHRINK,
        Some(n) => u8::try_from(n)
            .ok()
            .filter(|n| *n <= 100)
            .ok_or_else(|| format!("max_shrink = {n}: a percentage, 0 to 100"))?,
    };
    let min_rules = match min_rules {
        None => 1,
        Some(n) => usize::try_from(n).map_err(|_| format!("min_rules = {n}: 0 or more"))?,
    };
    let cache = cache_path(state_dir, url);
    Ok(ListEntry {
        path: cache.clone(),
        format,
        remote: Some(RemoteList {
            url: url.to_string(),
            format,
            refresh,
            max_shrink,
            min_rules,
            cache,
        }),
    })
}

/// Where the download of `url` is kept.
fn cache_path(state_dir: &Path, url: &str) -> PathBuf {
    let hash = blake3::hash(url.as_bytes()).to_hex();
    state_dir
        .join(LISTS_DIR)
        .join(format!("{}.list", &hash.as_str()[..16]))
}

/// An `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let shown = redact(url);
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("\"{shown}\" is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "\"{shown}\": lists are fetched over http:// or https:// only"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("\"{shown}\" names no host"));
    }
    Ok(())
}

/// A duration setting (`key`: a list's `refresh`, `[telemetry] interval`): seconds, or a
/// duration such as `"6h"`, `"30m"`, `"1d"`; at least a second.
pub(super) fn parse_duration(r: &RawRefresh, key: &str) -> Result<Duration, String> {
    let d = match r {
        RawRefresh::Seconds(s) => u64::try_from(*s)
            .map(Duration::from_secs)
            .map_err(|_| format!("{key} = {s}: seconds, 1 or more"))?,
        RawRefresh::Text(t) => t
            .parse::<jiff::Span>()
            .ok()
            .and_then(|s| {
                s.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
                    .ok()
            })
            .and_then(|d| Duration::try_from(d).ok())
            .ok_or_else(|| {
                format!(
                    "{key} = \"{t}\" is not a duration (expected e.g. \"24h\", \"30m\", \"1d\")"
                )
            })?,
    };
    if d < Duration::from_secs(1) {
        return Err(format!("{key}: at least 1 second"));
    }
    Ok(d)
}

/// Reads a resolved entry: a list file as `lists::read_shared` does; a download from its
/// cached copy, or as an empty list (with a warning) if there is none yet — a list that could
/// not be fetched never stops the rest of the configuration from loading.
pub(super) fn read(entry: &ListEntry) -> std::io::Result<(Arc<Domains>, ListStats)> {
    let Some(remote) = &entry.remote else {
        return lists::read_shared(&entry.path, entry.format);
    };
    let (domains, mut stats) = match lists::read_shared(&entry.path, entry.format) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(list = %remote.shown(), "not downloaded yet: empty until the daemon fetches it");
            let mut stats = lists::parse_text(
                "",
                &entry.path.display().to_string(),
                entry.format,
                &mut Domains::default(),
            );
            stats.format = entry.format.map_or("none", Format::label);
            (Arc::new(Domains::default()), stats)
        }
        Err(e) => return Err(e),
    };
    stats.url = Some(remote.shown());
    stats.fetched_at = remote.meta().fetched_at;
    Ok((domains, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(max_shrink: u8, min_rules: usize) -> RemoteList {
        RemoteList {
            url: "https://lists.example/a.txt".into(),
            format: None,
            refresh: DEFAULT_REFRESH,
            max_shrink,
            min_rules,
            cache: PathBuf::from("/nonexistent/a.list"),
        }
    }

    fn stats(block: usize) -> ListStats {
        let text: String = (0..block).map(|i| format!("n{i}.example\n")).collect();
        lists::parse_text(&text, "t", None, &mut Domains::default())
    }

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        assert_eq!(
            redact("https://user:secret@lists.example:8443/a/b.txt?token=abc#x"),
            "https://lists.example:8443/a/b.txt?…"
        );
        assert_eq!(redact("http://lists.example"), "http://lists.example");
        assert_eq!(redact("http://h/x#frag"), "http://h/x?…");
    }

    #[test]
    fn guards_refuse_empty_and_shrunk_downloads() {
        let l = list(50, 1);
        assert!(
            l.admits(&stats(0), None)
                .expect_err("empty")
                .contains("min_rules")
        );
        assert!(l.admits(&stats(10), None).is_ok());
        assert!(l.admits(&stats(50), Some(100)).is_ok(), "half is allowed");
        let why = l.admits(&stats(49), Some(100)).expect_err("shrunk");
        assert!(
            why.contains("49 rules where the copy in use gives 100"),
            "{why}"
        );
        assert!(list(100, 1).admits(&stats(1), Some(100)).is_ok());
        assert!(list(0, 0).admits(&stats(0), None).is_ok());
        assert!(list(0, 0).admits(&stats(99), Some(100)).is_err());
    }

    #[test]
    fn refresh_durations() {
        let ok = |r: RawRefresh| parse_duration(&r, "refresh").expect("duration");
        assert_eq!(ok(RawRefresh::Text("24h".into())), DEFAULT_REFRESH);
        assert_eq!(ok(RawRefresh::Text("1d".into())), DEFAULT_REFRESH);
        assert_eq!(
            ok(RawRefresh::Text("1h 30m".into())),
            Duration::from_secs(5400)
        );
        assert_eq!(ok(RawRefresh::Seconds(90)), Duration::from_secs(90));
        for bad in [
            RawRefresh::Text("soon".into()),
            RawRefresh::Seconds(0),
            RawRefresh::Seconds(-5),
        ] {
            assert!(parse_duration(&bad, "refresh").is_err());
        }
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(check_url("https://lists.example/a.txt").is_ok());
        assert!(
            check_url("ftp://lists.example/a.txt")
                .expect_err("ftp")
                .contains("http")
        );
        assert!(check_url("https:///a.txt").is_err());
        let a = cache_path(Path::new("/s"), "https://a.example/x");
        assert_eq!(a, cache_path(Path::new("/s"), "https://a.example/x"));
        assert_ne!(a, cache_path(Path::new("/s"), "https://a.example/y"));
        assert!(a.starts_with("/s/lists"));
    }

    /// A list by URL in a configuration: read from its cached copy, or empty (and the
    /// configuration still valid) before the first download; entries that mix the forms or
    /// carry bad options are located errors.
    #[test]
    fn url_entries_read_their_cached_copy() {
        let dir = std::env::temp_dir().join(format!("gw-remote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let toml = |entry: &str| {
            format!(
                "[gateway]\nstate_dir = \"state\"\n[[category]]\nname = \"c\"\nlists = [{entry}]\n[[policy]]\nname = \"p\"\nblock_categories = [\"c\"]\nblock_lists = [{entry}]\n"
            )
        };
        let t = dir.join("t.toml");
        let url = "https://user:pw@lists.example/ads.txt?key=1";
        let c = crate::config::Config::parse(&toml(&format!("\"{url}\"")), &t).expect("valid");
        assert_eq!(c.remote_lists.len(), 1, "one download for both uses");
        let r = &c.remote_lists[0];
        assert_eq!(
            (r.refresh, r.max_shrink, r.min_rules),
            (DEFAULT_REFRESH, 50, 1)
        );
        assert!(r.cache.starts_with(dir.join("state/lists")));
        let l = &c.categories[0].lists[0];
        assert_eq!(l.url.as_deref(), Some("https://lists.example/ads.txt?…"));
        assert_eq!((l.lines, l.block, l.fetched_at), (0, 0, None));
        assert!(
            c.files.contains(&r.cache),
            "the watcher sees the copy arrive"
        );

        write_whole(&r.cache, b"||ads.example^\n@@||ok.ads.example^\n").expect("copy");
        Meta {
            fetched_at: Some(1_700_000_000),
            ..Meta::default()
        }
        .write(&meta_path(&r.cache))
        .expect("meta");
        let c = crate::config::Config::parse(
            &toml(&format!(
                "{{ url = \"{url}\", refresh = \"6h\", max_shrink = 90, min_rules = 0 }}"
            )),
            &t,
        )
        .expect("valid");
        let r = &c.remote_lists[0];
        assert_eq!(
            (r.refresh, r.max_shrink, r.min_rules),
            (Duration::from_secs(6 * 3600), 90, 0)
        );
        let l = &c.categories[0].lists[0];
        assert_eq!(
            (l.format, l.block, l.allow, l.fetched_at),
            ("adblock", 1, 1, Some(1_700_000_000))
        );
        assert!(c.categories[0].blocks("ads.example"));
        assert!(
            c.policies
                .iter()
                .any(|p| p.block.contains("ads.example") && p.allow.contains("ok.ads.example"))
        );

        for (entry, says) in [
            (
                "{ path = \"a.txt\", url = \"https://x.example/\" }",
                "not both",
            ),
            ("{ format = \"hosts\" }", "give path"),
            ("{ path = \"a.txt\", refresh = \"1h\" }", "by url only"),
            ("{ path = \"https://x.example/a\" }", "write url ="),
            (
                "{ url = \"https://x.example/\", refresh = \"often\" }",
                "not a duration",
            ),
            (
                "{ url = \"https://x.example/\", max_shrink = 150 }",
                "0 to 100",
            ),
            ("\"ftp://x.example/a\"", "http:// or https://"),
        ] {
            let e = crate::config::Config::parse(&toml(entry), &t)
                .expect_err(entry)
                .to_string();
            assert!(e.contains("t.toml:5:") && e.contains(says), "{entry}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
