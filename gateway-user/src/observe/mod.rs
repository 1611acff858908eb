//! What the gateway tells about itself: counter snapshots and `gateway stats`' tables, the
//! Prometheus exposition, the daemon's status file, the decision history, and what it ships
//! of them to the centre (remote-write, syslog). Imports
//! `kernel`, `config` and the leaves.

pub mod history;
pub mod kernel_log;
pub mod metrics;
pub mod ship;
pub mod stats;
pub mod status;
