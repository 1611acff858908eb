//! The control API's HTTP layer, in process: authentication, request validation, status codes
//! and JSON errors, and a property test that no request body crashes it. A stand-in for the
//! daemon's loop answers the typed requests (the lifecycle logic behind them is tested in
//! `lifecycle.rs` and in the namespace tests).

use std::sync::{Arc, Mutex, RwLock};

use axum::{
    body::Body,
    http::{Request as HttpRequest, StatusCode},
};
use gateway_common::enums::LinkType;
use gateway_user::{
    config::Config,
    control::{
        ControlError, Request,
        http::{self as api, Shared},
    },
    observe::metrics,
    offline::testrun::TestRunner,
};
use proptest::prelude::*;
use tower::ServiceExt as _;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The router with a stand-in daemon that records what it was asked.
fn app(rt: &tokio::runtime::Runtime) -> (axum::Router, Arc<Mutex<Vec<Request>>>) {
    let config = Config::parse(
        "[[policy]]\nname = \"guest\"\n[[device]]\nname = \"tablet\"\nmac = \"02:00:00:00:00:09\"\npolicy = \"guest\"\n",
        std::path::Path::new("api.toml"),
    )
    .expect("config");
    let runner = TestRunner::with_trace(&config, LinkType::Ethernet, false).expect("load");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<api::Command>(16);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    rt.spawn(async move {
        while let Some((req, reply)) = rx.recv().await {
            let answer = match &req {
                Request::Device(d) | Request::Suspend { device: d, .. } if d != "tablet" => {
                    Err(ControlError::UnknownDevice(d.clone()))
                }
                Request::Resume { .. } => {
                    Err(ControlError::Conflict("tablet is not suspended".into()))
                }
                _ => Ok(serde_json::json!({ "ok": true })),
            };
            log.lock().expect("log").push(req);
            let _ = reply.send(answer);
        }
    });
    let shared = Arc::new(Shared {
        maps: Mutex::new(runner.maps),
        info: RwLock::new(metrics::Info {
            config: Arc::new(config),
            status: Default::default(),
            domains: 0,
            recorder: None,
            pseudonym: None,
            ship: None,
        }),
        token: Some(TOKEN.into()),
        commands: tx,
    });
    (api::router(shared), seen)
}

/// Sends one request; returns the status and the body as text.
fn send(
    rt: &tokio::runtime::Runtime,
    app: &axum::Router,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let mut b = HttpRequest::builder().method(method).uri(path);
    if let Some(a) = auth {
        b = b.header("Authorization", a);
    }
    let req = b.body(Body::from(body)).expect("request");
    rt.block_on(async {
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

const BEARER: &str = "Bearer 0123456789abcdef0123456789abcdef";

#[test]
fn tokens_are_required_except_for_metrics() {
    let rt = runtime();
    let (app, seen) = app(&rt);
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token-xx"),
        Some("Basic MDEyMzQ1Njc4OWFiY2RlZjA="),
        Some("Bearer 0123456789abcdef0123456789abcde"),
        Some("bearer 0123456789abcdef0123456789abcdef"),
    ] {
        for (method, path) in [
            ("GET", "/api/v1/devices"),
            ("POST", "/api/v1/devices/tablet/suspend"),
            ("GET", "/api/v1/nothing"),
        ] {
            let (status, body) = send(&rt, &app, method, path, auth, Vec::new());
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}: {body}"
            );
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
            assert_eq!(v["status"], 401);
        }
    }
    assert!(
        seen.lock().expect("seen").is_empty(),
        "nothing reached the daemon"
    );
    let (status, body) = send(&rt, &app, "GET", "/metrics", None, Vec::new());
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("# TYPE gateway_frames_seen_total counter"),
        "{body}"
    );
    let (status, _) = send(
        &rt,
        &app,
        "GET",
        "/api/v1/devices",
        Some(BEARER),
        Vec::new(),
    );
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn bodies_are_validated() {
    let rt = runtime();
    let (app, seen) = app(&rt);
    let post = |path: &str, body: &str| {
        send(
            &rt,
            &app,
            "POST",
            path,
            Some(BEARER),
            body.as_bytes().to_vec(),
        )
    };
    for (path, body, want) in [
        (
            "/api/v1/devices/tablet/move",
            "{",
            "request body: EOF while parsing an object at line 1 column 1",
        ),
        (
            "/api/v1/devices/tablet/move",
            "",
            "request body: EOF while parsing a value at line 1 column 0",
        ),
        (
            "/api/v1/devices/tablet/move",
            r#"{"policy": 5}"#,
            "request body: invalid type: integer `5`, expected a string at line 1 column 12",
        ),
        (
            "/api/v1/devices/tablet/move",
            r#"{"policy": "guest", "x": 1}"#,
            "request body: unknown field `x`, expected `policy` at line 1 column 23",
        ),
        (
            "/api/v1/devices/tablet/checkout",
            r#"{"due": "2026-12-01"}"#,
            "request body: missing field `borrower` at line 1 column 21",
        ),
        (
            "/api/v1/devices/tablet/suspend",
            r#"{"note": ["a"]}"#,
            "request body: invalid type: sequence, expected a string at line 1 column 9",
        ),
        (
            "/api/v1/devices/tablet/suspend",
            r#"["a"]"#,
            "request body: expected a JSON object",
        ),
        (
            "/api/v1/devices/tablet/move",
            "null",
            "request body: expected a JSON object",
        ),
    ] {
        let (status, text) = post(path, body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["error"], want, "{path} {body}");
    }
    let (status, text) = send(
        &rt,
        &app,
        "GET",
        "/api/v1/checkouts?open=maybe",
        Some(BEARER),
        Vec::new(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, _) = send(
        &rt,
        &app,
        "GET",
        "/api/v1/no/such/thing",
        Some(BEARER),
        Vec::new(),
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        seen.lock().expect("seen").is_empty(),
        "invalid requests reached the daemon"
    );

    // Valid ones reach it typed; its answers map to their statuses.
    assert_eq!(
        post("/api/v1/devices/tablet/move", r#"{"policy": "guest"}"#).0,
        StatusCode::OK
    );
    assert_eq!(post("/api/v1/devices/tablet/suspend", "").0, StatusCode::OK);
    assert_eq!(
        post("/api/v1/devices/ghost/suspend", "{}").0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post("/api/v1/devices/tablet/resume", r#"{"note": "back"}"#).0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        post(
            "/api/v1/devices/tablet/checkout",
            r#"{"borrower": "p-1", "due": "2026-12-01", "policy": null}"#
        )
        .0,
        StatusCode::OK
    );
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        [
            Request::Move {
                device: "tablet".into(),
                policy: Some("guest".into())
            },
            Request::Suspend {
                device: "tablet".into(),
                note: None
            },
            Request::Suspend {
                device: "ghost".into(),
                note: None
            },
            Request::Resume {
                device: "tablet".into(),
                note: Some("back".into())
            },
            Request::Checkout {
                device: "tablet".into(),
                borrower: "p-1".into(),
                due: "2026-12-01".into(),
                policy: None
            },
        ]
    );
}

/// Bodies: arbitrary bytes, and JSON objects with arbitrary keys and values.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let json_value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    let key = prop_oneof![
        Just("policy".to_string()),
        Just("borrower".to_string()),
        Just("due".to_string()),
        Just("note".to_string()),
        "[a-z]{1,8}",
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::btree_map(key, json_value, 0..5)
            .prop_map(|m| serde_json::to_vec(&m).unwrap_or_default()),
    ]
}

/// One runtime and router for every case of the property test (loading the program per case
/// would take most of the time).
fn shared_app() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static APP: std::sync::OnceLock<(tokio::runtime::Runtime, axum::Router)> =
        std::sync::OnceLock::new();
    APP.get_or_init(|| {
        let rt = runtime();
        let (app, _) = app(&rt);
        (rt, app)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn no_request_body_crashes_the_api(
        verb in prop_oneof![Just("suspend"), Just("resume"), Just("move"), Just("checkout"), Just("checkin")],
        device in prop_oneof![Just("tablet".to_string()), "[a-zA-Z0-9%._-]{1,12}"],
        body in bodies(),
    ) {
        let (rt, app) = shared_app();
        let (status, text) = send(rt, app, "POST", &format!("/api/v1/devices/{device}/{verb}"), Some(BEARER), body);
        prop_assert!(
            [200u16, 400, 404, 409].contains(&status.as_u16()),
            "status {status}: {text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).expect("every answer is JSON");
        if status != StatusCode::OK {
            prop_assert!(v["error"].is_string());
        }
        // Still serving.
        let (status, _) = send(rt, app, "GET", "/api/v1/devices", Some(BEARER), Vec::new());
        prop_assert_eq!(status, StatusCode::OK);
    }
}
