//! The daemon's HTTP listener (`[api] listen`, loopback by default): `/metrics`, and the control
//! API under `/api/v1/`, which requires `Authorization: Bearer <token>` (the token file, mode
//! 0600). Requests that change state are sent to the daemon's main loop, which applies them
//! between reloads and schedule switches, one at a time.

use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, Request as HttpRequest, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::proto::{CheckoutBody, ControlError, MoveBody, NoteBody, Reply, Request};
use crate::{
    kernel::Maps,
    observe::{history, metrics, stats},
};

/// A request for the daemon and where to send its answer.
pub type Command = (Request, oneshot::Sender<Reply>);

/// What the handlers read: the pinned maps (a handle of their own, read only), the daemon's
/// state, which the daemon replaces as it changes, the token, and the way to the main loop.
pub struct Shared {
    pub maps: Mutex<Maps>,
    pub info: RwLock<metrics::Info>,
    /// `None`: no token could be had; every API request is refused.
    pub token: Option<String>,
    pub commands: mpsc::Sender<Command>,
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
/// text format. No token: scrapers are on the same host, and the counters carry no names unless
/// `device_labels = "name"`.
async fn metrics_handler(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let rendered = tokio::task::spawn_blocking(move || render_metrics(&shared)).await;
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

/// The exposition of the counters and the daemon's state now (OpenMetrics): what `/metrics`
/// serves and remote-write pushes.
pub fn render_metrics(shared: &Shared) -> anyhow::Result<String> {
    let snapshot = {
        let maps = shared
            .maps
            .lock()
            .map_err(|_| anyhow::anyhow!("maps lock poisoned"))?;
        stats::snapshot(&maps)?
    };
    let info = shared
        .info
        .read()
        .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
        .clone();
    metrics::render(&snapshot, &info, jiff::Timestamp::now())
}

/// An API error as JSON with its status.
struct ApiError(ControlError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::Unauthorized => StatusCode::UNAUTHORIZED,
            ControlError::UnknownDevice(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut r = (
            status,
            axum::Json(
                serde_json::json!({ "error": self.0.to_string(), "status": status.as_u16() }),
            ),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

type ApiResult = Result<axum::Json<serde_json::Value>, ApiError>;

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(shared): State<Arc<Shared>>,
    req: HttpRequest,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t)
            if shared
                .token
                .as_deref()
                .is_some_and(|k| same(t.as_bytes(), k.as_bytes())) =>
        {
            next.run(req).await
        }
        _ => ApiError(ControlError::Unauthorized).into_response(),
    }
}

/// Parses a JSON body (an empty one is `T::default()` where `T` allows it).
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes, empty: Option<T>) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace)
        && let Some(d) = empty
    {
        return Ok(d);
    }
    // Every body is an object (serde would also take a struct from an array).
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError(ControlError::BadRequest(
            "request body: expected a JSON object".into(),
        )));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(ControlError::BadRequest(format!("request body: {e}"))))
}

/// The `{name}` of a device route, or a JSON 400 (a name that is not UTF-8, say).
type PathResult = Result<Path<String>, axum::extract::rejection::PathRejection>;

fn path(p: PathResult) -> Result<String, ApiError> {
    p.map(|Path(name)| name)
        .map_err(|e| ApiError(ControlError::BadRequest(format!("path: {e}"))))
}

async fn ask(shared: &Shared, req: Request) -> ApiResult {
    let (tx, rx) = oneshot::channel();
    shared.commands.send((req, tx)).await.map_err(|_| {
        ApiError(ControlError::Internal(anyhow::anyhow!(
            "the daemon is stopping"
        )))
    })?;
    match rx.await {
        Ok(Ok(v)) => Ok(axum::Json(v)),
        Ok(Err(e)) => Err(ApiError(e)),
        Err(_) => Err(ApiError(ControlError::Internal(anyhow::anyhow!(
            "the daemon dropped the request"
        )))),
    }
}

async fn devices(State(s): State<Arc<Shared>>) -> ApiResult {
    ask(&s, Request::Devices).await
}

async fn device(State(s): State<Arc<Shared>>, p: PathResult) -> ApiResult {
    ask(&s, Request::Device(path(p)?)).await
}

async fn suspend(State(s): State<Arc<Shared>>, p: PathResult, b: Bytes) -> ApiResult {
    let device = path(p)?;
    let NoteBody { note } = body(&b, Some(NoteBody::default()))?;
    ask(&s, Request::Suspend { device, note }).await
}

async fn resume(State(s): State<Arc<Shared>>, p: PathResult, b: Bytes) -> ApiResult {
    let device = path(p)?;
    let NoteBody { note } = body(&b, Some(NoteBody::default()))?;
    ask(&s, Request::Resume { device, note }).await
}

async fn move_device(State(s): State<Arc<Shared>>, p: PathResult, b: Bytes) -> ApiResult {
    let device = path(p)?;
    let MoveBody { policy } = body(&b, None)?;
    ask(&s, Request::Move { device, policy }).await
}

async fn checkout(State(s): State<Arc<Shared>>, p: PathResult, b: Bytes) -> ApiResult {
    let device = path(p)?;
    let CheckoutBody {
        borrower,
        due,
        policy,
    } = body(&b, None)?;
    ask(
        &s,
        Request::Checkout {
            device,
            borrower,
            due,
            policy,
        },
    )
    .await
}

async fn checkin(State(s): State<Arc<Shared>>, p: PathResult, b: Bytes) -> ApiResult {
    let device = path(p)?;
    let NoteBody { note } = body(&b, Some(NoteBody::default()))?;
    ask(&s, Request::Checkin { device, note }).await
}

async fn events(State(s): State<Arc<Shared>>, p: PathResult) -> ApiResult {
    let device = path(p)?;
    ask(&s, Request::Events(device)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutsQuery {
    device: Option<String>,
    #[serde(default)]
    open: bool,
}

async fn checkouts(
    State(s): State<Arc<Shared>>,
    q: Result<Query<CheckoutsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| ApiError(ControlError::BadRequest(format!("query: {e}"))))?;
    ask(
        &s,
        Request::Checkouts {
            device: q.device,
            open: q.open,
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    device: Option<String>,
    action: Option<String>,
    name: Option<String>,
    protocol: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/history`: the decision history (as `gateway log`), read here, not in the
/// daemon's loop.
async fn history(
    State(s): State<Arc<Shared>>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| ApiError(ControlError::BadRequest(format!("query: {e}"))))?;
    let config = s
        .info
        .read()
        .map_err(|_| {
            ApiError(ControlError::Internal(anyhow::anyhow!(
                "state lock poisoned"
            )))
        })?
        .config
        .clone();
    let rows = tokio::task::spawn_blocking(move || -> Result<_, ControlError> {
        let query = history::Query {
            devices: q.device.into_iter().collect(),
            action: q.action,
            name: q.name,
            protocol: q.protocol,
            since: q.since,
            until: q.until,
            limit: Some(q.limit.unwrap_or(100).min(100_000)),
        };
        let filter = history::Filter::from_query(query, &config.state_dir, jiff::Timestamp::now())
            .map_err(|e| {
                if crate::is_bad_input(&e) {
                    ControlError::BadRequest(format!("{e:#}"))
                } else {
                    ControlError::Internal(e)
                }
            })?;
        Ok(history::Store::open_existing(&config.state_dir)?.query(&filter)?)
    })
    .await
    .map_err(|e| ApiError(ControlError::Internal(e.into())))?
    .map_err(ApiError)?;
    Ok(axum::Json(serde_json::json!(rows)))
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": "no such endpoint", "status": 404 })),
    )
        .into_response()
}

/// `/api/v1/status`: the configuration in force, its reloads, the fleet bundle in force and the
/// last attempts (`StatusView`).
async fn status(State(s): State<Arc<Shared>>) -> ApiResult {
    let view = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let info = s
            .info
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
            .clone();
        let view = crate::observe::status::StatusView::of(&info.config, &info.status);
        Ok(serde_json::to_value(view)?)
    })
    .await
    .map_err(|e| ApiError(ControlError::Internal(anyhow::anyhow!("{e}"))))?
    .map_err(|e| ApiError(ControlError::Internal(e)))?;
    Ok(axum::Json(view))
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/devices", get(devices))
        .route("/devices/{name}", get(device))
        .route("/devices/{name}/suspend", post(suspend))
        .route("/devices/{name}/resume", post(resume))
        .route("/devices/{name}/move", post(move_device))
        .route("/devices/{name}/checkout", post(checkout))
        .route("/devices/{name}/checkin", post(checkin))
        .route("/devices/{name}/events", get(events))
        .route("/checkouts", get(checkouts))
        .route("/history", get(history))
        .route("/status", get(status))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    Router::new()
        .route("/metrics", get(metrics_handler))
        .nest("/api/v1", api)
        .with_state(shared)
}

/// Binds `listen` and serves until the runtime ends. Binding errors are returned (the daemon
/// logs them and keeps filtering).
pub async fn serve(listen: std::net::SocketAddr, shared: Arc<Shared>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "HTTP listener: /metrics, /api/v1/");
    axum::serve(listener, router(shared))
        .await
        .context("serving HTTP")
}
