//! Fleet bundles (SPEC §14, docs/fleet.md): a `tar.gz` holding `manifest.toml` (revision,
//! created, labels), `gateway.toml` and the lists and inventories it names, with a detached
//! minisign signature whose trusted comment carries the bundle's name and revision.
//!
//! A gateway checks the signature over the archive's bytes first, with the keys of `[fleet]`,
//! before anything in the archive is read; then the revision (never older than the one in
//! force); then unpacks into a directory of its own, refusing anything but plain files with
//! plain relative paths, and at most `MAX_FILES` of them; then validates the configuration
//! composed of the bundle's `gateway.toml` under the gateway's own settings (`LOCAL_KEYS`).
//! No network here: `daemon::fleet` fetches and applies.

use std::{
    collections::BTreeMap,
    fmt,
    io::Read as _,
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::Config;

mod record;
pub use record::*;

/// The manifest's name in a bundle.
pub const MANIFEST: &str = "manifest.toml";
/// The configuration's name in a bundle.
pub const CONFIG: &str = "gateway.toml";
/// A bundle holds at most this many files.
pub const MAX_FILES: usize = 10_000;
/// A signature file is a few hundred bytes; more is refused unread.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// What the trusted comment of a bundle's signature starts with.
pub const COMMENT_TAG: &str = "gateway-bundle";
/// Settings a bundle never decides: the gateway's own file (and `[fleet] local`) gives them.
/// A dotted key is one key of a table; the others are whole tables.
pub const LOCAL_KEYS: &[&str] = &[
    "interface",
    "api",
    "fleet",
    "gateway.state_dir",
    "gateway.bpffs",
    // The gateway's identity on its metrics (id, site, group): its own, never a group's.
    "telemetry.labels",
];

/// Why a bundle was not taken: the `reason` label of `gateway_bundle_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// No answer: DNS, connection, timeout.
    Network,
    /// An HTTP status other than 200 or 304.
    Http,
    /// Larger than `[fleet] max_bytes` (or the signature than `MAX_SIGNATURE_BYTES`).
    Size,
    /// Missing, malformed, or not by a key of `[fleet] public_keys`; or its comment not a
    /// bundle's, or for another bundle.
    Signature,
    /// A revision older than the one in force, or the same one with other contents.
    Rollback,
    /// Not a gzip tar, or an entry that is not a plain file with a plain relative path.
    Archive,
    /// No or a bad manifest, or one that disagrees with the signature or the gateway's labels.
    Manifest,
    /// The configuration fails validation.
    Validation,
    /// Writing it into the kernel failed.
    Apply,
}

impl Failure {
    pub const ALL: [Failure; 9] = [
        Failure::Network,
        Failure::Http,
        Failure::Size,
        Failure::Signature,
        Failure::Rollback,
        Failure::Archive,
        Failure::Manifest,
        Failure::Validation,
        Failure::Apply,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Network => "network",
            Failure::Http => "http",
            Failure::Size => "size",
            Failure::Signature => "signature",
            Failure::Rollback => "rollback",
            Failure::Archive => "archive",
            Failure::Manifest => "manifest",
            Failure::Validation => "validation",
            Failure::Apply => "apply",
        }
    }
}

/// A bundle refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: Failure,
    pub message: String,
}

impl Refused {
    pub fn new(reason: Failure, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason.label())
    }
}

impl std::error::Error for Refused {}

/// What a verified signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    pub name: String,
    pub revision: u64,
}

/// The trusted comment to sign a bundle with.
pub fn trusted_comment(name: &str, revision: u64) -> String {
    format!("{COMMENT_TAG} name={name} revision={revision}")
}

/// Parses a trusted comment made by `trusted_comment` (the words in any order).
pub fn parse_trusted(comment: &str) -> Result<Trusted, Refused> {
    let bad = |why: &str| {
        Refused::new(
            Failure::Signature,
            format!(
                "the signature's trusted comment {comment:?} {why} (expected \"{}\")",
                trusted_comment("NAME", 1).replace('1', "REVISION")
            ),
        )
    };
    let mut words = comment.split_whitespace();
    if words.next() != Some(COMMENT_TAG) {
        return Err(bad("is not a gateway bundle's"));
    }
    let (mut name, mut revision) = (None, None);
    for w in words {
        match w.split_once('=') {
            Some(("name", v)) => name = Some(v.to_string()),
            Some(("revision", v)) => {
                revision = Some(v.parse::<u64>().map_err(|_| bad("has a bad revision"))?);
            }
            _ => {}
        }
    }
    match (name, revision) {
        (Some(name), Some(revision)) => Ok(Trusted { name, revision }),
        _ => Err(bad("lacks name= or revision=")),
    }
}

/// Checks `signature` (a minisign signature file's text) over `archive` with each of `keys`
/// (base64 public keys) and returns what its trusted comment says. Nothing of the archive is
/// read but its bytes; legacy (non-prehashed) signatures are refused.
pub fn verify(archive: &[u8], signature: &str, keys: &[String]) -> Result<Trusted, Refused> {
    let sig = minisign_verify::Signature::decode(signature).map_err(|e| {
        Refused::new(
            Failure::Signature,
            format!("not a minisign signature ({e})"),
        )
    })?;
    let mut last = String::from("no public key configured");
    for key in keys {
        let pk = match minisign_verify::PublicKey::from_base64(key) {
            Ok(pk) => pk,
            Err(e) => {
                last = format!("a public key does not parse: {e}");
                continue;
            }
        };
        match pk.verify(archive, &sig, false) {
            Ok(()) => return parse_trusted(sig.trusted_comment()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(Refused::new(
        Failure::Signature,
        format!(
            "not signed by any of the {} key(s) of [fleet] public_keys ({last})",
            keys.len()
        ),
    ))
}

/// `manifest.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Grows with every bundle published.
    pub revision: u64,
    /// When it was built (RFC 3339).
    pub created: String,
    /// Free labels, such as the group of gateways it is for.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A path inside a bundle: relative, made of plain names only.
fn plain(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Unpacks `archive` (gzip tar) into the new directory `dest`, refusing links, devices, paths
/// that are absolute or climb (`..`), duplicates, more than `MAX_FILES` files or more than
/// `max_bytes` unpacked; returns the manifest. On refusal nothing is left at `dest`.
pub fn unpack(archive: &[u8], dest: &Path, max_bytes: u64) -> Result<Manifest, Refused> {
    let result = unpack_into(archive, dest, max_bytes);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

fn unpack_into(archive: &[u8], dest: &Path, max_bytes: u64) -> Result<Manifest, Refused> {
    let bad = |m: String| Refused::new(Failure::Archive, m);
    let io = |what: &str, e: std::io::Error| Refused::new(Failure::Archive, format!("{what}: {e}"));
    std::fs::create_dir_all(dest).map_err(|e| io(&dest.display().to_string(), e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut files = std::collections::BTreeSet::new();
    let mut total = 0u64;
    for entry in tar.entries().map_err(|e| io("not a gzip tar", e))? {
        let mut entry = entry.map_err(|e| io("a damaged or truncated archive", e))?;
        let path = entry
            .path()
            .map_err(|e| io("an entry's path", e))?
            .into_owned();
        let Some(rel) = plain(&path) else {
            return Err(bad(format!(
                "{}: not a plain relative path inside the bundle",
                path.display()
            )));
        };
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(dest.join(&rel))
                    .map_err(|e| io(&rel.display().to_string(), e))?;
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => {
                return Err(bad(format!(
                    "{}: a {other:?} entry (only plain files are allowed)",
                    rel.display()
                )));
            }
        }
        if !files.insert(rel.clone()) {
            return Err(bad(format!("{}: twice in the archive", rel.display())));
        }
        if files.len() > MAX_FILES {
            return Err(bad(format!("more than {MAX_FILES} files")));
        }
        let size = entry.size();
        total = total.saturating_add(size);
        if total > max_bytes {
            return Err(Refused::new(
                Failure::Size,
                format!("more than {max_bytes} bytes unpacked"),
            ));
        }
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(&rel.display().to_string(), e))?;
        }
        let mut out =
            std::fs::File::create(&target).map_err(|e| io(&rel.display().to_string(), e))?;
        let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
            .map_err(|e| io(&format!("{} (truncated?)", rel.display()), e))?;
        if copied != size {
            return Err(bad(format!("{}: truncated", rel.display())));
        }
    }
    let text = std::fs::read_to_string(dest.join(MANIFEST))
        .map_err(|_| Refused::new(Failure::Manifest, format!("no {MANIFEST} in the bundle")))?;
    let manifest: Manifest = toml::from_str(&text)
        .map_err(|e| Refused::new(Failure::Manifest, format!("{MANIFEST}: {}", e.message())))?;
    if !files.contains(Path::new(CONFIG)) {
        return Err(Refused::new(
            Failure::Manifest,
            format!("no {CONFIG} in the bundle"),
        ));
    }
    Ok(manifest)
}

/// The manifest agrees with the signature (same revision) and is for this gateway: every
/// label it shares with `labels` (`[fleet] labels`) has the same value.
pub fn check_manifest(
    manifest: &Manifest,
    trusted: &Trusted,
    labels: &BTreeMap<String, String>,
) -> Result<(), Refused> {
    if manifest.revision != trusted.revision {
        return Err(Refused::new(
            Failure::Manifest,
            format!(
                "{MANIFEST} says revision {} but the signature {}",
                manifest.revision, trusted.revision
            ),
        ));
    }
    for (k, v) in &manifest.labels {
        if let Some(own) = labels.get(k)
            && own != v
        {
            return Err(Refused::new(
                Failure::Manifest,
                format!("the bundle is for {k}={v}; this gateway is {k}={own}"),
            ));
        }
    }
    Ok(())
}

/// Takes `key` (dotted: a key of a table) out of `table`.
fn take_key(table: &mut toml::Table, key: &str) -> Option<toml::Value> {
    match key.split_once('.') {
        None => table.remove(key),
        Some((t, k)) => table.get_mut(t)?.as_table_mut()?.remove(k),
    }
}

/// Puts `value` at `key` (dotted) in `table`.
fn put_key(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((t, k)) => {
            let entry = table
                .entry(t.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(inner) = entry.as_table_mut() {
                inner.insert(k.to_string(), value);
            }
        }
    }
}

/// The `LOCAL_KEYS` of the TOML file `path`, with relative paths made absolute (they are
/// relative to that file, and the composed configuration is read from the bundle).
fn local_keys(path: &Path) -> anyhow::Result<Vec<(&'static str, toml::Value)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let absolute = |v: &mut toml::Value| {
        if let toml::Value::String(s) = v
            && Path::new(s.as_str()).is_relative()
        {
            *s = base.join(s.as_str()).to_string_lossy().into_owned();
        }
    };
    let mut out = Vec::new();
    for key in LOCAL_KEYS {
        if let Some(mut v) = take_key(&mut table, key) {
            match *key {
                "gateway.state_dir" | "gateway.bpffs" => absolute(&mut v),
                "api" | "fleet" => {
                    for path_key in ["token_file", "local", "ca_file"] {
                        if let Some(p) = v.as_table_mut().and_then(|t| t.get_mut(path_key)) {
                            absolute(p);
                        }
                    }
                }
                _ => {}
            }
            out.push((*key, v));
        }
    }
    Ok(out)
}

/// The configuration in force with the bundle unpacked at `bundle`: its `gateway.toml` under
/// the `LOCAL_KEYS` of the gateway's own file `main` (then of its `[fleet] local` file). The
/// bundle's file is validated alone first, so its errors name its own lines.
pub fn compose(main: &Path, bundle: &Path) -> anyhow::Result<Config> {
    let file = bundle.join(CONFIG);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    Config::parse(&text, &file)?;
    let mut central: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message()))?;
    for key in LOCAL_KEYS {
        if take_key(&mut central, key).is_some() {
            tracing::warn!(
                key,
                "the bundle sets a key the gateway's own file decides; ignored"
            );
        }
    }
    let mut local = local_keys(main)?;
    let extra = local
        .iter()
        .find(|(k, _)| *k == "fleet")
        .and_then(|(_, v)| v.get("local"))
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    if let Some(extra) = extra {
        for (k, v) in local_keys(&extra)? {
            if k == "fleet" {
                continue;
            }
            local.retain(|(have, _)| *have != k);
            local.push((k, v));
        }
    }
    for (k, v) in local {
        put_key(&mut central, k, v);
    }
    let merged = toml::to_string(&central).context("composing the configuration")?;
    let mut config = Config::parse(&merged, &file)?;
    config.files.push(main.to_path_buf());
    Ok(config)
}

/// Builds a bundle of revision `revision` from `dir` (its `gateway.toml` and every file that
/// names inside `dir`) into `out`, after checking the configuration as `gateway check` does;
/// returns the trusted comment to sign it with.
pub fn build(
    dir: &Path,
    revision: u64,
    labels: BTreeMap<String, String>,
    out: &Path,
) -> anyhow::Result<String> {
    let file = dir.join(CONFIG);
    let config = Config::load(&file)?;
    let root = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot open", dir.display()))?;
    let caches: Vec<&PathBuf> = config.remote_lists.iter().map(|r| &r.cache).collect();
    let mut members = BTreeMap::new();
    for f in &config.files {
        if caches.contains(&f) {
            continue;
        }
        let real = f
            .canonicalize()
            .with_context(|| format!("{}: cannot open", f.display()))?;
        let Ok(rel) = real.strip_prefix(&root) else {
            bail!(
                "{}: outside {} (a bundle holds only files inside its directory)",
                f.display(),
                dir.display()
            );
        };
        members.insert(rel.to_path_buf(), real.clone());
    }
    if members.len() > MAX_FILES {
        bail!(
            "{} files: a bundle holds at most {MAX_FILES}",
            members.len()
        );
    }
    let manifest = Manifest {
        revision,
        created: jiff::Timestamp::now().to_string(),
        labels,
    };
    let manifest_text = toml::to_string(&manifest).context("writing the manifest")?;
    let tmp = out.with_extension("partial");
    let write = || -> anyhow::Result<()> {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&tmp)?,
            flate2::Compression::best(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut add = |name: &Path, bytes: &[u8]| -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            tar.append_data(&mut h, name, bytes)
        };
        add(Path::new(MANIFEST), manifest_text.as_bytes())?;
        for (rel, real) in &members {
            add(rel, &std::fs::read(real)?)?;
        }
        tar.into_inner()?.finish()?.sync_all()?;
        std::fs::rename(&tmp, out)?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", out.display())));
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(trusted_comment(&name, revision))
}

#[cfg(test)]
mod tests;
