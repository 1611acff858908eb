//! The command line: every verb and its arguments (clap), from which the help, the man pages
//! and the shell completions are generated.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "DNS, SNI and QUIC content filter for Linux field gateways (eBPF/XDP)"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax); RUST_LOG works too.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach the filter and keep its configuration current (SIGHUP reloads).
    Run {
        /// Configuration file [default: /etc/gateway/gateway.toml, else the embedded default].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Interface to filter (repeatable); replaces the configuration's [[interface]] list.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Load the filter with its debug traces on: why each frame got its verdict, logged
        /// under the target gateway::kernel. Costs CPU per frame; off, the verifier prunes them.
        #[arg(long)]
        trace_kernel: bool,
    },
    /// Validate a configuration (and its inventories and lists) without touching the kernel;
    /// print what it holds and the kernel memory it will take. Exit 2 if it is invalid.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Also probe the running kernel for what the filter needs and have it verify the
        /// filter's programs (loaded, not attached; needs root). Exit 2 naming a missing feature.
        #[arg(long)]
        kernel: bool,
    },
    /// List the devices: identifiers, policy, the policy in force now (schedules, moves,
    /// checkouts), suspension and checkout. Asks the daemon; without one, shows the file.
    Devices {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Suspend a device: the kernel drops its traffic (but DHCP, ARP and NDP) at once, until
    /// `resume`; kept across restarts and reloads.
    Suspend {
        #[arg(long)]
        config: Option<PathBuf>,
        device: String,
        /// Why (kept in the device's lifecycle events).
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lift a suspension made with `suspend` (or a check-in hold).
    Resume {
        #[arg(long)]
        config: Option<PathBuf>,
        device: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Move a device to another policy (kept across restarts and reloads).
    Move {
        #[arg(long)]
        config: Option<PathBuf>,
        device: String,
        /// The policy to move to.
        #[arg(long, required_unless_present = "own", conflicts_with = "own")]
        policy: Option<String>,
        /// Back to the policy the configuration gives it.
        #[arg(long)]
        own: bool,
        #[arg(long)]
        json: bool,
    },
    /// Lend a device: to a borrower ID, until a due date, with a content-filter policy.
    Checkout {
        #[arg(long)]
        config: Option<PathBuf>,
        device: String,
        #[arg(long)]
        borrower: String,
        /// 2026-12-01 (the end of that day, local time) or an RFC 3339 time.
        #[arg(long)]
        due: String,
        /// The policy while it is out (default: its own).
        #[arg(long)]
        policy: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Return a lent device.
    Checkin {
        #[arg(long)]
        config: Option<PathBuf>,
        device: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The checkout history (newest first).
    Checkouts {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// Only devices out now.
        #[arg(long)]
        open: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon re-read its configuration (SIGHUP), and report the outcome.
    /// Exit 2 if the new configuration was rejected (the running one stays).
    Reload {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds to wait for the daemon to report.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Detach the filter from every interface and remove all its pins.
    Detach {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print the kernel counters.
    Stats {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Query the decision history (most recent first).
    Log {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only this device (repeatable).
        #[arg(long)]
        device: Vec<String>,
        /// Only this action: allow, block, monitor or rewrite.
        #[arg(long)]
        action: Option<String>,
        /// Only this name and the names under it.
        #[arg(long)]
        name: Option<String>,
        /// Only this protocol: dns, tls, quic, http, port or suspended.
        #[arg(long)]
        protocol: Option<String>,
        /// From this time: RFC 3339 (2026-11-26T08:00:00Z) or an age (15m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// At most this many rows (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Delete every history row of a device (right to deletion); print how many.
    Forget {
        #[arg(long)]
        config: Option<PathBuf>,
        device: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a device's history as JSON (right of access).
    Export {
        #[arg(long)]
        config: Option<PathBuf>,
        device: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// The configuration in force, its reloads, and for a fleet gateway the bundle in force
    /// and the last attempts to fetch one (read from the gateway's files: works without the
    /// daemon).
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Fleet bundles: build one from a directory (see docs/fleet.md).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Run a pcap/pcapng capture through the real kernel program and print each decision.
    Replay {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The capture (pcap or pcapng).
        capture: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// `gateway bundle …`.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Build a bundle from DIR (its gateway.toml and every file it names inside DIR), checked as
    /// `gateway check` does; prints the minisign command that signs it.
    Build {
        /// The directory holding gateway.toml.
        dir: PathBuf,
        /// The bundle's revision: greater than every revision published before.
        #[arg(long)]
        revision: u64,
        /// A manifest label, KEY=VALUE (repeatable), e.g. group=buses.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The archive to write; its file name is the bundle's name (the last segment of the
        /// URL gateways fetch it from).
        #[arg(long, short)]
        output: PathBuf,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}
