//! The daemon's HTTP listener (`[api] listen`, loopback by default): `/metrics`.

use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{kernel::Maps, metrics};

/// What the handlers read: the pinned maps (a handle of their own, read only) and the daemon's
/// state, which the daemon replaces as it changes.
pub struct Shared {
    pub maps: Mutex<Maps>,
    pub info: RwLock<metrics::Info>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The content type of the OpenMetrics text format that `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format (0.0.4).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/metrics`: OpenMetrics when the scraper asks for it (Prometheus does), else the Prometheus
/// text format.
async fn metrics_handler(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let rendered = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let snapshot = {
            let maps = shared
                .maps
                .lock()
                .map_err(|_| anyhow::anyhow!("maps lock poisoned"))?;
            crate::stats::snapshot(&maps)?
        };
        let info = shared
            .info
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
            .clone();
        metrics::render(&snapshot, &info, jiff::Timestamp::now())
    })
    .await;
    match rendered {
        Ok(Ok(text)) if openmetrics => {
            ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
        }
        Ok(Ok(text)) => (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            metrics::to_prometheus_text(&text),
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "metrics: cannot read the counters");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(shared)
}

/// Binds `listen` and serves until the runtime ends. Binding errors are returned (the daemon
/// logs them and keeps filtering).
pub async fn serve(listen: std::net::SocketAddr, shared: Arc<Shared>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "HTTP listener: /metrics");
    axum::serve(listener, router(shared))
        .await
        .context("serving HTTP")
}
