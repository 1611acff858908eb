//! The control API's bearer token: created by the daemon (32 random bytes, hex, mode 0600),
//! read by the CLI.

use std::path::Path;

use anyhow::Context as _;

use crate::{BadInput, secret};

/// The API token in `path`, created (32 random bytes, hex; mode 0600) if missing.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    let bytes = secret::load_or_create(path, || {
        let raw = secret::random_bytes(32)?;
        Ok(raw
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes())
    })?;
    token_text(path, &bytes)
}

/// The API token in `path` (for the CLI; the daemon creates it).
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let bytes = secret::read_private(path)
        .with_context(|| "the API token (is `gateway run` started with this configuration?)")?;
    token_text(path, &bytes)
}

fn token_text(path: &Path, bytes: &[u8]) -> anyhow::Result<String> {
    let t = String::from_utf8_lossy(bytes).trim().to_string();
    if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BadInput(format!(
            "{}: the token must be one line of at least 16 characters without spaces",
            path.display()
        ))
        .into());
    }
    Ok(t)
}
