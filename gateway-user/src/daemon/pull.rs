//! Pulling over HTTP: one conditional GET (`If-None-Match` / `If-Modified-Since`, a 304 when
//! nothing changed), every body size-limited, HTTPS through rustls with Mozilla's roots; and
//! when to ask next — after a jittered delay, backing off exponentially (capped, full jitter,
//! `observe::ship::retry`) while attempts fail, as OPA's bundle downloader does. The lists,
//! the fleet bundles and the remote-write pushes use it.

use std::time::Duration;

use crate::observe::ship::{self, retry};

/// What a pull got.
#[derive(Debug)]
pub(super) enum Pulled {
    /// 304: the copy in use is current.
    NotModified,
    /// 200: a new body and its validators.
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

/// Why a pull got no answer to use. Its text says what went wrong without the URL (which may
/// hold credentials: the caller names what it pulled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PullError {
    /// An HTTP status other than 2xx and 304.
    Status(ureq::http::StatusCode),
    /// The body was larger than the limit (bytes).
    TooLarge(u64),
    /// No answer: DNS, connection, TLS, timeout.
    Transport(String),
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullError::Status(s) => write!(f, "HTTP {s}"),
            PullError::TooLarge(n) => write!(f, "the body is larger than {n} bytes"),
            PullError::Transport(why) => f.write_str(why),
        }
    }
}

/// Connecting may take this long; a whole pull (headers and body) twice the second one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// The HTTP client's settings: timeouts, our user agent, statuses as values (a 404 is an
/// answer to report, not a transport error), rustls.
fn settings() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(PULL_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
        .max_redirects(5)
}

/// The HTTP client, trusting Mozilla's roots.
pub(super) fn agent() -> ureq::Agent {
    settings().build().into()
}

/// `agent`, trusting the CAs of the PEM file `ca_file` instead of Mozilla's roots if given.
pub(super) fn agent_trusting(ca_file: Option<&std::path::Path>) -> Result<ureq::Agent, String> {
    let Some(path) = ca_file else {
        return Ok(agent());
    };
    let roots: Vec<ureq::tls::Certificate<'static>> = ship::ca_certificates(path)?
        .iter()
        .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
        .build();
    Ok(settings().tls_config(tls).build().into())
}

/// GETs `url`, conditional on the validators of the copy in use; a body over `limit` bytes
/// (decompressed) is an error.
pub(super) fn get(
    agent: &ureq::Agent,
    url: &str,
    etag: Option<&str>,
    last_modified: Option<&str>,
    limit: u64,
) -> Result<Pulled, PullError> {
    let mut request = agent.get(url);
    if let Some(e) = etag {
        request = request.header("If-None-Match", e);
    }
    if let Some(m) = last_modified {
        request = request.header("If-Modified-Since", m);
    }
    let mut response = request.call().map_err(describe)?;
    let status = response.status();
    if status == ureq::http::StatusCode::NOT_MODIFIED {
        return Ok(Pulled::NotModified);
    }
    if !status.is_success() {
        return Err(PullError::Status(status));
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (etag, last_modified) = (header("etag"), header("last-modified"));
    let bytes = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(describe)?;
    Ok(Pulled::Body {
        bytes,
        etag,
        last_modified,
    })
}

/// A transport error as a `PullError`, in words.
fn describe(e: ureq::Error) -> PullError {
    PullError::Transport(match e {
        ureq::Error::BodyExceedsLimit(n) => return PullError::TooLarge(n),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        other => other.to_string(),
    })
}

/// The delay before the next pull after a success: `every`, give or take a tenth.
pub(super) fn after_success(every: Duration) -> Duration {
    retry::jittered(every)
}

/// The delay before the next pull after `failures` failures in a row: 30 s doubling each time,
/// capped at `every` (and at an hour), full jitter.
pub(super) fn after_failure(failures: u64, every: Duration) -> Duration {
    retry::full_jitter(
        failures,
        Duration::from_secs(30),
        every.min(Duration::from_secs(3600)),
    )
}
