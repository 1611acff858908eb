//! What leaves the gateway for the centre (SPEC §14, docs/shipping.md): `[telemetry]`, the
//! metrics pushed with Prometheus remote-write, and `[history] ship`, the decision history
//! shipped as RFC 5424 syslog — destinations, intervals, identity, credentials, limits. Pure:
//! `observe::ship` sends.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::{locate::Locator, raw::RawHistory, raw::RawRefresh};
use crate::errors::ConfigError;

/// Metrics are pushed this often unless `interval` says.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The remote-write spool takes at most this much of the state directory unless
/// `spool_megabytes` says.
pub const DEFAULT_SPOOL_MEGABYTES: i64 = 64;

/// `[telemetry]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    remote_write_url: Spanned<String>,
    interval: Option<Spanned<RawRefresh>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    bearer_token_file: Option<Spanned<PathBuf>>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
    spool_megabytes: Option<Spanned<i64>>,
}

/// How the gateway proves itself to the remote-write receiver.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer` with the token in this file.
    Bearer(PathBuf),
    /// HTTP basic authentication, the password in this file.
    Basic {
        username: String,
        password_file: PathBuf,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: the secrets are read when the pipeline starts and never kept here.
        match self {
            Auth::Bearer(p) => write!(f, "Bearer({})", p.display()),
            Auth::Basic { username, .. } => write!(f, "Basic({username})"),
        }
    }
}

impl Auth {
    /// The `Authorization` header's value, read from the secret's file now.
    pub fn header(&self) -> Result<String, String> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        match self {
            Auth::Bearer(p) => Ok(format!("Bearer {}", read(p)?)),
            Auth::Basic {
                username,
                password_file,
            } => {
                use base64::Engine as _;
                let pair = format!("{username}:{}", read(password_file)?);
                Ok(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
        }
    }
}

/// A validated `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    pub remote_write_url: String,
    pub interval: Duration,
    /// The gateway's identity, added to every series (`id`, `site`, `group`, …; the
    /// gateway's own file and `[fleet] local` decide them, never a bundle).
    pub labels: BTreeMap<String, String>,
    pub auth: Option<Auth>,
    /// PEM certificates of the CAs an https receiver's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// What the spool under the state directory may hold; the oldest samples go beyond it.
    pub spool_bytes: u64,
}

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RFC 6587 octet-counted frames over TCP.
    Tcp,
    /// The same over TLS (RFC 5425), through rustls.
    Tls,
}

/// A validated `[history] ship`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ship {
    /// `tcp://host:port` or `tls://host:port`, as written.
    pub url: String,
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    /// `ship_only = "blocked"`: only decisions that blocked (or would have, in monitor mode).
    pub only_blocked: bool,
    /// `ship_ca_file`: PEM certificates of the CAs a TLS receiver must chain to, instead of
    /// Mozilla's roots.
    pub ca_file: Option<PathBuf>,
}

/// A secret's file must exist and be readable by its owner only.
fn check_secret(path: &Path, key: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{key}: {} is readable by others (mode {mode:o}; expected 600: chmod 600 {})",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// A `ca_file` setting (`key`): the PEM file of CA certificates, relative to `base`, which must
/// hold one; an error is located at the setting.
pub(super) fn ca_file(
    setting: Option<&Spanned<PathBuf>>,
    key: &str,
    base: &Path,
    loc: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<PathBuf> {
    let spanned = setting?;
    let path = base.join(spanned.get_ref());
    let problem = match std::fs::read_to_string(&path) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => None,
        Ok(_) => Some(format!(
            "{key}: {} holds no PEM certificate",
            path.display()
        )),
        Err(e) => Some(format!("{key}: cannot read {}: {e}", path.display())),
    };
    if let Some(p) = problem {
        errors.push(loc.at(spanned, p));
    }
    Some(path)
}

/// A Prometheus label name that is not reserved (`__…`).
fn label_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Validates `[telemetry]`; errors are located in `loc`'s file and added to `errors`.
pub(super) fn validate(
    raw: &RawTelemetry,
    base: &Path,
    loc: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Telemetry> {
    let before = errors.len();
    let url = raw.remote_write_url.get_ref();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        errors.push(loc.at(
            &raw.remote_write_url,
            format!(
                "telemetry.remote_write_url: \"{}\" is not an http(s) URL (expected e.g. https://metrics.example/api/v1/write)",
                super::remote::redact(url)
            ),
        ));
    }
    let interval = match &raw.interval {
        None => DEFAULT_INTERVAL,
        Some(i) => match super::remote::parse_duration(i.get_ref(), "telemetry.interval") {
            Ok(d) if d <= Duration::from_secs(3600) => d,
            Ok(_) => {
                errors.push(loc.at(i, "telemetry.interval: at most 1 hour".to_string()));
                DEFAULT_INTERVAL
            }
            Err(e) => {
                errors.push(loc.at(i, e));
                DEFAULT_INTERVAL
            }
        },
    };
    let labels = raw
        .labels
        .as_ref()
        .map(|l| l.get_ref().clone())
        .unwrap_or_default();
    for (name, value) in &labels {
        let at = raw
            .labels
            .as_ref()
            .map_or(raw.remote_write_url.span().start, |l| l.span().start);
        if !label_name_ok(name) {
            errors.push(loc.error(
                at,
                format!("telemetry.labels: \"{name}\" is not a label name (letters, digits and _, not starting with a digit or __)"),
            ));
        }
        if value.is_empty() {
            errors.push(loc.error(
                at,
                format!("telemetry.labels.{name}: empty (a label without a value is no label)"),
            ));
        }
    }
    let secret = |p: &Spanned<PathBuf>, key: &str, errors: &mut Vec<ConfigError>| {
        let path = base.join(p.get_ref());
        if let Err(e) = check_secret(&path, key) {
            errors.push(loc.at(p, e));
        }
        path
    };
    let auth = match (&raw.bearer_token_file, &raw.username, &raw.password_file) {
        (None, None, None) => None,
        (Some(t), None, None) => Some(Auth::Bearer(secret(
            t,
            "telemetry.bearer_token_file",
            errors,
        ))),
        (None, Some(u), Some(p)) => Some(Auth::Basic {
            username: u.get_ref().clone(),
            password_file: secret(p, "telemetry.password_file", errors),
        }),
        (Some(t), _, _) => {
            errors.push(loc.at(
                t,
                "telemetry.bearer_token_file: give either a bearer token or username and password_file, not both".to_string(),
            ));
            None
        }
        (None, Some(u), None) => {
            errors.push(loc.at(u, "telemetry.username: needs password_file".to_string()));
            None
        }
        (None, None, Some(p)) => {
            errors.push(loc.at(p, "telemetry.password_file: needs username".to_string()));
            None
        }
    };
    let ca_file = ca_file(raw.ca_file.as_ref(), "telemetry.ca_file", base, loc, errors);
    let spool_bytes = match &raw.spool_megabytes {
        None => DEFAULT_SPOOL_MEGABYTES,
        Some(m) if (1..=100_000).contains(m.get_ref()) => *m.get_ref(),
        Some(m) => {
            errors.push(loc.at(
                m,
                format!(
                    "telemetry.spool_megabytes: {} is out of range (1 to 100000)",
                    m.get_ref()
                ),
            ));
            DEFAULT_SPOOL_MEGABYTES
        }
    } as u64
        * (1 << 20);
    (errors.len() == before).then(|| Telemetry {
        remote_write_url: url.clone(),
        interval,
        labels,
        auth,
        ca_file,
        spool_bytes,
    })
}

/// Validates `[history] ship`, `ship_only` and `ship_ca_file`.
pub(super) fn validate_ship(
    raw: &RawHistory,
    base: &Path,
    loc: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Ship> {
    let before = errors.len();
    let only_blocked = match &raw.ship_only {
        None => false,
        Some(s) => match s.get_ref().as_str() {
            "all" => false,
            "blocked" => true,
            other => {
                errors.push(loc.at(
                    s,
                    format!("history.ship_only: \"{other}\" (expected \"all\" or \"blocked\")"),
                ));
                false
            }
        },
    };
    let ca_file = ca_file(
        raw.ship_ca_file.as_ref(),
        "history.ship_ca_file",
        base,
        loc,
        errors,
    );
    let Some(spanned) = &raw.ship else {
        for (set, key) in [
            (raw.ship_only.is_some(), "ship_only"),
            (raw.ship_ca_file.is_some(), "ship_ca_file"),
        ] {
            if set {
                tracing::warn!(
                    key,
                    "history.{key} without history.ship: nothing is shipped"
                );
            }
        }
        return None;
    };
    let url = spanned.get_ref();
    let parsed = parse_destination(url);
    if let Err(e) = &parsed {
        errors.push(loc.at(spanned, format!("history.ship: \"{url}\" {e}")));
    }
    let (transport, host, port) = parsed.ok()?;
    if ca_file.is_some() && transport == Transport::Tcp {
        tracing::warn!("history.ship_ca_file is for tls:// destinations; ignored for tcp://");
    }
    (errors.len() == before).then(|| Ship {
        url: url.clone(),
        transport,
        host,
        port,
        only_blocked,
        ca_file,
    })
}

/// `tcp://host:port` or `tls://host:port` (an IPv6 host in brackets); the port defaults to
/// 514 for tcp and 6514 for tls (RFC 5425).
fn parse_destination(url: &str) -> Result<(Transport, String, u16), String> {
    let expected = "(expected tcp://host:514 or tls://host:6514)";
    let (transport, rest, default_port) = if let Some(r) = url.strip_prefix("tcp://") {
        (Transport::Tcp, r, 514)
    } else if let Some(r) = url.strip_prefix("tls://") {
        (Transport::Tls, r, 6514)
    } else {
        return Err(format!("is not a syslog destination {expected}"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("has an unclosed [ {expected}"))?;
        (h, tail.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        return Err(format!("has no host {expected}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("has a bad port \"{p}\" {expected}"))?,
    };
    Ok((transport, host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_with_their_default_ports() {
        assert_eq!(
            parse_destination("tcp://10.0.0.1"),
            Ok((Transport::Tcp, "10.0.0.1".into(), 514))
        );
        assert_eq!(
            parse_destination("tls://siem.example:7514"),
            Ok((Transport::Tls, "siem.example".into(), 7514))
        );
        assert_eq!(
            parse_destination("tls://[fd00::1]"),
            Ok((Transport::Tls, "fd00::1".into(), 6514))
        );
        assert_eq!(
            parse_destination("tcp://[fd00::1]:1514"),
            Ok((Transport::Tcp, "fd00::1".into(), 1514))
        );
        for bad in [
            "udp://h:514",
            "tcp://",
            "tcp://h:0",
            "tcp://h:99999",
            "tcp://[::1",
            "h:514",
        ] {
            assert!(parse_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_names_are_prometheus_names() {
        for ok in ["id", "site", "group", "_x", "a1_b"] {
            assert!(label_name_ok(ok), "{ok}");
        }
        for bad in ["", "1a", "__name__", "a-b", "a.b", "é"] {
            assert!(!label_name_ok(bad), "{bad}");
        }
    }

    /// The first error of configuration `text`, located.
    fn first_error(text: &str) -> String {
        crate::config::Config::parse(text, Path::new("t.toml"))
            .expect_err("invalid")
            .0[0]
            .to_string()
    }

    #[test]
    fn settings_errors_are_located() {
        for (text, want) in [
            (
                "[history]\nship = \"udp://x\"\n",
                "t.toml:2:8: history.ship: \"udp://x\" is not a syslog destination (expected tcp://host:514 or tls://host:6514)",
            ),
            (
                "[history]\nship = \"tcp://h:70000\"\n",
                "t.toml:2:8: history.ship: \"tcp://h:70000\" has a bad port \"70000\" (expected tcp://host:514 or tls://host:6514)",
            ),
            (
                "[history]\nship = \"tcp://h\"\nship_only = \"some\"\n",
                "t.toml:3:13: history.ship_only: \"some\" (expected \"all\" or \"blocked\")",
            ),
            (
                "[history]\nship = \"tls://h\"\nship_ca_file = \"/nonexistent/ca.pem\"\n",
                "t.toml:3:16: history.ship_ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)",
            ),
            (
                "[telemetry]\nremote_write_url = \"ftp://x\"\n",
                "t.toml:2:20: telemetry.remote_write_url: \"ftp://x\" is not an http(s) URL (expected e.g. https://metrics.example/api/v1/write)",
            ),
            (
                "[telemetry]\nremote_write_url = \"http://x/w\"\ninterval = \"soon\"\n",
                "t.toml:3:12: telemetry.interval = \"soon\" is not a duration (expected e.g. \"24h\", \"30m\", \"1d\")",
            ),
            (
                "[telemetry]\nremote_write_url = \"http://x/w\"\ninterval = 7200\n",
                "t.toml:3:12: telemetry.interval: at most 1 hour",
            ),
            (
                "[telemetry]\nremote_write_url = \"http://x/w\"\nlabels = { \"a-b\" = \"x\" }\n",
                "t.toml:3:10: telemetry.labels: \"a-b\" is not a label name (letters, digits and _, not starting with a digit or __)",
            ),
            (
                "[telemetry]\nremote_write_url = \"http://x/w\"\nusername = \"bus\"\n",
                "t.toml:3:12: telemetry.username: needs password_file",
            ),
            (
                "[telemetry]\nremote_write_url = \"http://x/w\"\nbearer_token_file = \"/nonexistent/token\"\n",
                "t.toml:3:21: telemetry.bearer_token_file: /nonexistent/token: No such file or directory (os error 2)",
            ),
            (
                "[telemetry]\nremote_write_url = \"http://x/w\"\nspool_megabytes = 0\n",
                "t.toml:3:19: telemetry.spool_megabytes: 0 is out of range (1 to 100000)",
            ),
        ] {
            assert_eq!(first_error(text), want, "{text}");
        }
    }

    #[test]
    fn telemetry_and_shipping_settings() {
        let dir = std::env::temp_dir().join(format!("gw-telemetry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "s3cret\n").expect("token");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("mode");
        let text = format!(
            "[telemetry]\nremote_write_url = \"https://m.example/api/v1/write\"\nbearer_token_file = \"{}\"\n",
            token.display()
        );
        // A secret others can read is refused, named.
        let e = crate::config::Config::parse(&text, &dir.join("t.toml")).expect_err("mode");
        assert!(
            e.to_string()
                .contains("is readable by others (mode 644; expected 600"),
            "{e}"
        );
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("mode");
        let text = format!(
            "{text}labels = {{ id = \"bus-17\", site = \"north\" }}\n[history]\nship = \"tls://siem.example\"\nship_only = \"blocked\"\n"
        );
        let c = crate::config::Config::parse(&text, &dir.join("t.toml")).expect("valid");
        let t = c.telemetry.expect("telemetry");
        assert_eq!(t.interval, std::time::Duration::from_secs(30));
        assert_eq!(t.labels.get("id").map(String::as_str), Some("bus-17"));
        assert_eq!(t.spool_bytes, 64 << 20);
        let auth = t.auth.expect("auth");
        assert_eq!(auth.header().expect("header"), "Bearer s3cret");
        // The secret is never in the settings' debug form.
        assert!(!format!("{auth:?}").contains("s3cret"));
        let ship = c.history.ship.expect("ship");
        assert_eq!(ship.transport, Transport::Tls);
        assert_eq!((ship.host.as_str(), ship.port), ("siem.example", 6514));
        assert!(ship.only_blocked);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
