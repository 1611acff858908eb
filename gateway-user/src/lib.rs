//! The gateway daemon and CLI, as a library: the `gateway` binary, the benchmarks and the
//! integration tests all use it.
//!
//! One folder per concern, and imports go one way only, down this list (a test in `xtask`,
//! `cargo xtask test`'s layout check, fails on an import against it):
//!
//! - `cli`: the verbs (arguments, dispatch, tables, JSON).
//! - `daemon`: `gateway run`, the composition root: the run loop, reloads, schedules and
//!   lifecycle following, publishing state.
//! - `control` (the HTTP API, its requests, the lifecycle store) and, beside it, `offline`
//!   (replay, test runs, captures, frame building, `check`), which only `cli`, the benchmarks
//!   and the tests import.
//! - `observe`: metrics, the status file, counter snapshots, the decision history.
//! - `kernel`: loading, attaching and pinning, writing maps (apply), reading them (counters).
//! - `config`: the model, parsing with locations, validation, inventories, schedules, lists,
//!   and the compilation into map contents.
//! - the leaves: `errors` (`BadInput`, `ConfigErrors`, `is_bad_input`) and `secret`.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
mod errors;
pub mod kernel;
pub mod observe;
pub mod offline;
pub mod secret;

pub use errors::{BadInput, ConfigError, ConfigErrors, is_bad_input};
