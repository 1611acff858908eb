//! The gateway daemon and CLI, as a library: the `gateway` binary, the benchmarks and the
//! integration tests all use it.
//!
//! One module per concern: `config` (gateway.toml) -> `apply` (maps, generations) ->
//! `kernel` (objects, maps) -> `attach` (interfaces, pins); `stats` reads counters; `capture`,
//! `testrun` and `replay` run captures through the real program; `bench` measures it.

pub mod api;
pub mod apply;
pub mod attach;
pub mod batch;
pub mod bench;
pub mod capture;
pub mod check;
pub mod config;
pub mod control;
pub mod daemon;
pub mod frames;
pub mod history;
pub mod kernel;
pub mod lifecycle;
pub mod lists;
pub mod metrics;
pub mod mmap;
pub mod notify;
pub mod replay;
pub mod secret;
pub mod sni;
pub mod stats;
pub mod sys;
pub mod testrun;

/// An error caused by what the user gave us (exit code 2), as opposed to a runtime failure
/// (exit code 1).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Whether `err` was caused by bad input anywhere in its chain.
pub fn is_bad_input(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.is::<BadInput>() || e.is::<config::ConfigErrors>())
}
