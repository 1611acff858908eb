//! The CLI's side of the control API: requests to the daemon of a configuration.

use super::token::read_token;
use crate::{BadInput, config::Config};

/// The daemon of a configuration does not answer (not started, or not listening).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// The CLI's side of the API: requests to the daemon of a configuration.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client for the daemon that `config` describes (its `[api] listen` and token file).
    pub fn for_config(config: &Config) -> anyhow::Result<Self> {
        let mut addr = config.api.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let token = read_token(&config.api.token_file)
            .map_err(|e| Unreachable(format!("{e:#} ({})", config.api.token_file.display())))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Ok(Self {
            base: format!("http://{addr}/api/v1"),
            token,
            agent,
        })
    }

    /// `method path` with `body`; the JSON answer, or the error it carries (4xx: bad input).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match body {
            Some(b) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(b.to_string()),
            None if method == "POST" => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            None => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = result.map_err(|e| {
            Unreachable(format!(
                "cannot reach the daemon at {url} ({e}); is `gateway run` started?"
            ))
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| anyhow::anyhow!("reading the answer of {url}: {e}"))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{url}: answer is not JSON ({e}): {text}"))?;
        match status {
            200..=299 => Ok(value),
            400..=499 => Err(BadInput(
                value["error"]
                    .as_str()
                    .map_or_else(|| text.clone(), str::to_string),
            )
            .into()),
            _ => Err(anyhow::anyhow!(
                "{url}: {status}: {}",
                value["error"].as_str().unwrap_or(&text)
            )),
        }
    }
}
