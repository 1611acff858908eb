//! A test bed of network namespaces: simulated devices, the gateway, and an upstream, joined by
//! veth pairs. Used by the integration tests in this crate and by `cargo xtask demo`.
//!
//! Every namespace and bpffs directory gets a unique name and is removed when its guard drops,
//! also when a test fails. Commands run inside a namespace through `nsenter --net`, which keeps
//! the host's mounts (`ip netns exec` would remount /sys and hide bpffs). Traffic only ever goes
//! to addresses inside the namespaces made here.

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

mod daemon;
mod netns;
mod servers;

pub use daemon::*;
pub use netns::*;
pub use servers::*;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails unless running as root.
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("network-namespace tests need root (CI runs `cargo xtask test` as root)");
    }
    Ok(())
}

/// The standard output of `what`, which must have succeeded.
pub fn check(what: &str, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` on the host and returns its stdout; fails on a non-zero exit.
pub fn host(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    check(&format!("{program} {}", args.join(" ")), out)
}

/// Waits up to 10 s until `f` holds (counters and answers come from other processes).
pub fn eventually(what: &str, f: impl FnMut() -> bool) -> anyhow::Result<()> {
    eventually_within(what, 10, f)
}

/// Waits up to `seconds` until `f` holds (a pipeline that backs off takes longer).
pub fn eventually_within(
    what: &str,
    seconds: u64,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: not seen within {seconds} s")
}

/// A client's exit status, stdout and stderr, as one text to search and to show on failure.
pub fn output_text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
