//! `[fleet]`: where a gateway pulls its signed policy bundle from, which keys may sign it, how
//! often it asks, and what stays the gateway's own (SPEC §14, docs/fleet.md).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::locate::Locator;
use crate::errors::ConfigError;

/// Bundles larger than this (the archive as downloaded) are refused unless `max_bytes` says.
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 128 << 20;

/// `[fleet]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    bundle_url: Spanned<String>,
    signature_url: Option<Spanned<String>>,
    public_keys: Spanned<Vec<Spanned<String>>>,
    poll: Option<RawPoll>,
    local: Option<Spanned<PathBuf>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    max_bytes: Option<Spanned<i64>>,
    ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    min: Spanned<i64>,
    max: Spanned<i64>,
}

/// A validated `[fleet]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub bundle_url: String,
    /// The detached minisign signature: `bundle_url` + `.minisig` unless given.
    pub signature_url: String,
    /// The minisign public keys (base64, as on the second line of a `.pub` file) any of which
    /// may sign a bundle: more than one while keys are rotated.
    pub public_keys: Vec<String>,
    /// A poll is made after a delay drawn uniformly between these.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// A file of the gateway's own settings laid over every bundle (`bundle::LOCAL_KEYS`).
    pub local: Option<PathBuf>,
    /// The gateway's identity: a bundle whose manifest gives one of these labels another value
    /// is not for it.
    pub labels: BTreeMap<String, String>,
    pub max_bytes: u64,
    /// PEM certificates of the CAs an https origin's certificate must chain to, instead of
    /// Mozilla's roots (a private PKI).
    pub ca_file: Option<PathBuf>,
}

impl Fleet {
    /// The name a bundle's signature must carry: the last path segment of its URL.
    pub fn bundle_name(&self) -> &str {
        name_of(&self.bundle_url)
    }
}

/// The last path segment of `url`, without query or fragment.
pub fn name_of(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// The default signature URL of a bundle at `url`: its path with `.minisig` appended, before
/// any query (a pre-signed URL needs `signature_url` of its own).
fn signature_of(url: &str) -> String {
    let at = url.find(['?', '#']).unwrap_or(url.len());
    format!("{}.minisig{}", &url[..at], &url[at..])
}

/// Validates `[fleet]`; errors are located in `loc`'s file and added to `errors`.
pub(super) fn validate(
    raw: &RawFleet,
    base: &Path,
    loc: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Fleet> {
    let before = errors.len();
    let url = raw.bundle_url.get_ref();
    let is_url = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    if !is_url(url) || name_of(url).is_empty() {
        errors.push(loc.at(
            &raw.bundle_url,
            format!(
                "fleet.bundle_url: \"{}\" is not an http(s) URL of a file (expected e.g. https://cdn.example/fleet/buses.tar.gz)",
                crate::config::remote::redact(url)
            ),
        ));
    }
    if let Some(s) = &raw.signature_url
        && !is_url(s.get_ref())
    {
        errors.push(loc.at(s, "fleet.signature_url: not an http(s) URL".to_string()));
    }
    if raw.public_keys.get_ref().is_empty() {
        errors.push(loc.at(
            &raw.public_keys,
            "fleet.public_keys: empty (expected at least one minisign public key)".to_string(),
        ));
    }
    for k in raw.public_keys.get_ref() {
        if let Err(e) = minisign_verify::PublicKey::from_base64(k.get_ref().trim()) {
            errors.push(loc.at(
                k,
                format!("fleet.public_keys: not a minisign public key ({e}; expected the base64 line of a .pub file, e.g. RWQ…)"),
            ));
        }
    }
    let (poll_min, poll_max) = match &raw.poll {
        None => (60, 120),
        Some(p) => {
            let (min, max) = (*p.min.get_ref(), *p.max.get_ref());
            if !(1..=86_400).contains(&min) {
                errors.push(loc.at(
                    &p.min,
                    format!("fleet.poll.min: {min} is out of range (1 to 86400 seconds)"),
                ));
            }
            if max < min || max > 86_400 {
                errors.push(loc.at(
                    &p.max,
                    format!(
                        "fleet.poll.max: {max} is out of range ({min}, poll.min, to 86400 seconds)"
                    ),
                ));
            }
            (min, max)
        }
    };
    let max_bytes = match &raw.max_bytes {
        None => DEFAULT_MAX_BUNDLE_BYTES,
        Some(m) if (1024..=(4i64 << 30)).contains(m.get_ref()) => *m.get_ref() as u64,
        Some(m) => {
            errors.push(loc.at(
                m,
                format!(
                    "fleet.max_bytes: {} is out of range (1024 to 4 GiB)",
                    m.get_ref()
                ),
            ));
            DEFAULT_MAX_BUNDLE_BYTES
        }
    };
    let ca_file =
        super::telemetry::ca_file(raw.ca_file.as_ref(), "fleet.ca_file", base, loc, errors);
    if errors.len() > before {
        return None;
    }
    Some(Fleet {
        bundle_url: url.clone(),
        signature_url: raw
            .signature_url
            .as_ref()
            .map_or_else(|| signature_of(url), |s| s.get_ref().clone()),
        public_keys: raw
            .public_keys
            .get_ref()
            .iter()
            .map(|k| k.get_ref().trim().to_string())
            .collect(),
        poll_min: Duration::from_secs(poll_min as u64),
        poll_max: Duration::from_secs(poll_max as u64),
        local: raw.local.as_ref().map(|l| base.join(l.get_ref())),
        labels: raw.labels.clone(),
        max_bytes,
        ca_file,
    })
}
