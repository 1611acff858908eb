//! What the gateway tells about itself: counter snapshots and `gateway stats`' tables, the
//! Prometheus exposition, the daemon's status file, and the decision history. Imports
//! `kernel`, `config` and the leaves.

pub mod history;
pub mod kernel_log;
pub mod metrics;
pub mod stats;
pub mod status;
