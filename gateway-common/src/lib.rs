//! Shared by the kernel program (`gateway-ebpf`) and the daemon (`gateway-user`).
//!
//! Everything here is `no_std`, allocation-free and panic-free on the paths the kernel uses:
//! map key/value layouts, the enums that index counters, and the pure parsers. The kernel runs
//! the parsers over the packet; the host runs the same code in tests, `check` and `replay`.
#![no_std]
// `bytes::opaque` is inline asm, unstable on the BPF target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[macro_use]
mod macros;

pub mod bytes;
pub mod domain;
pub mod enums;
pub mod http;
pub mod lists;
pub mod maps;
pub mod packet;
pub mod safe_search;
pub mod table;
pub mod tls;

#[cfg(test)]
extern crate std;
