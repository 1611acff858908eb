//! The kernel side: the filter's objects loaded and verified, attached to interfaces and pinned,
//! configurations written into its maps (`apply`), and its counters read (`counters`, where
//! per-CPU values are summed). Imports `config` and the leaves only.

pub mod apply;
pub mod attach;
pub mod batch;
pub mod counters;
mod maps;
mod mmap;
mod objects;
pub mod probe;
pub mod safe_search;
pub mod sys;

pub use apply::{Applied, Applier, GRACE};
pub use maps::{Maps, cpu_count, slot_names, zeroed_per_cpu};
pub use mmap::MmapArray;
pub use objects::{
    DNS_MSG_PROGRAM, DNS_PROGRAM, DNS_TCP_PROGRAM, EMPTY_OBJECT, EMPTY_PROGRAM, FILTER_OBJECT,
    FILTER_PROGRAM, Filter, HTTP_PROGRAM, LoadOptions, TLS_PROGRAM, incompatible_pins, load_empty,
};
