//! `gateway`: the daemon and its command line.
use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gateway_user::{
    attach,
    config::Config,
    control,
    daemon::{self, RunOptions},
    history, is_bad_input,
    kernel::Maps,
    replay, stats,
};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "DNS, SNI and QUIC content filter for Linux field gateways (eBPF/XDP)"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax); RUST_LOG works too.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the filter and keep its configuration current (SIGHUP reloads).
    Run {
        /// Configuration file [default: /etc/gateway/gateway.toml, else the embedded default].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Interface to filter (repeatable); replaces the configuration's [[interface]] list.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
    },
    /// Validate a configuration (and its inventories and lists) without touching the kernel;
    /// print what it holds and the kernel memory it will take. Exit 2 if it is invalid.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
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
        /// Only this action: allow, block or monitor.
        #[arg(long)]
        action: Option<String>,
        /// Only this name and the names under it.
        #[arg(long)]
        name: Option<String>,
        /// Only this protocol: dns, tls, quic, port or suspended.
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

/// `POST /devices/DEVICE/VERB` with `body`; prints the device as it now stands.
fn device_call(
    config: Option<PathBuf>,
    device: &str,
    verb: &str,
    body: Option<serde_json::Value>,
    json: bool,
) -> anyhow::Result<()> {
    let config = Config::resolve(config.as_deref())?;
    let v = control::Client::for_config(&config)?.call(
        "POST",
        &format!("/devices/{}/{verb}", percent(device)),
        body,
    )?;
    let view: control::DeviceView = serde_json::from_value(v)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", control::render_views(std::slice::from_ref(&view)));
    }
    Ok(())
}

/// `s` for a URL path segment or query value.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    // Colour only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if is_bad_input(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config, ifaces } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(daemon::run(RunOptions {
                config,
                interfaces: ifaces,
            }))
        }
        Command::Check { config, json } => {
            let config = Config::resolve(config.as_deref())?;
            let summary = gateway_user::check::summary(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", gateway_user::check::render(&summary));
            }
            Ok(())
        }
        Command::Reload { config, timeout } => reload(config.as_deref(), timeout),
        Command::Devices { config, json } => {
            let config = Config::resolve(config.as_deref())?;
            let answer =
                control::Client::for_config(&config).and_then(|c| c.call("GET", "/devices", None));
            match answer {
                Ok(v) => {
                    let rows: Vec<control::DeviceView> = serde_json::from_value(v)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&rows)?);
                    } else {
                        print!("{}", control::render_views(&rows));
                    }
                }
                Err(e) if e.downcast_ref::<control::Unreachable>().is_some() => {
                    eprintln!("note: {e:#}\nnote: showing the configuration file only");
                    let rows = gateway_user::check::devices(&config, jiff::Timestamp::now());
                    if json {
                        println!("{}", serde_json::to_string_pretty(&rows)?);
                    } else {
                        print!("{}", gateway_user::check::render_devices(&rows));
                    }
                }
                Err(e) => return Err(e),
            }
            Ok(())
        }
        Command::Suspend {
            config,
            device,
            note,
            json,
        } => device_call(
            config,
            &device,
            "suspend",
            Some(serde_json::json!({ "note": note })),
            json,
        ),
        Command::Resume {
            config,
            device,
            note,
            json,
        } => device_call(
            config,
            &device,
            "resume",
            Some(serde_json::json!({ "note": note })),
            json,
        ),
        Command::Move {
            config,
            device,
            policy,
            own: _,
            json,
        } => device_call(
            config,
            &device,
            "move",
            Some(serde_json::json!({ "policy": policy })),
            json,
        ),
        Command::Checkout {
            config,
            device,
            borrower,
            due,
            policy,
            json,
        } => device_call(
            config,
            &device,
            "checkout",
            Some(serde_json::json!({ "borrower": borrower, "due": due, "policy": policy })),
            json,
        ),
        Command::Checkin {
            config,
            device,
            note,
            json,
        } => device_call(
            config,
            &device,
            "checkin",
            Some(serde_json::json!({ "note": note })),
            json,
        ),
        Command::Checkouts {
            config,
            device,
            open,
            json,
        } => {
            let config = Config::resolve(config.as_deref())?;
            let mut path = format!("/checkouts?open={open}");
            if let Some(d) = &device {
                path.push_str(&format!("&device={}", percent(d)));
            }
            let v = control::Client::for_config(&config)?.call("GET", &path, None)?;
            let rows: Vec<control::CheckoutView> = serde_json::from_value(v)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<20} {:<20} {:<14} {:<22} {:<22} {:<22} OVERDUE SINCE",
                    "DEVICE", "BORROWER", "POLICY", "OUT", "DUE", "IN"
                );
                for c in rows {
                    println!(
                        "{:<20} {:<20} {:<14} {:<22} {:<22} {:<22} {}",
                        c.device,
                        c.borrower,
                        c.policy.as_deref().unwrap_or("-"),
                        c.checked_out,
                        c.due,
                        c.checked_in.as_deref().unwrap_or("-"),
                        c.overdue_since.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
        Command::Detach { config, json } => {
            let bpffs = Config::bpffs_of(config.as_deref())?;
            let report = attach::detach_all(&bpffs)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "detached {} interface(s){}; removed {} pin(s) under {}",
                    report.links.len(),
                    if report.links.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", report.links.join(", "))
                    },
                    report.pins_removed,
                    bpffs.display()
                );
            }
            Ok(())
        }
        Command::Stats { config, json } => {
            let bpffs = Config::bpffs_of(config.as_deref())?;
            let maps = Maps::from_pins(&attach::Pins::new(&bpffs).maps()).with_context(|| {
                format!(
                    "no filter pinned under {} (is `gateway run` started?)",
                    bpffs.display()
                )
            })?;
            let mut snap = stats::snapshot(&maps)?;
            // The category names of the configuration the daemon runs (or ran last) with.
            let status = daemon::ReloadStatus::read(&daemon::runtime_file(&bpffs, "status"));
            snap.name_categories(&status.categories);
            if json {
                println!("{}", serde_json::to_string_pretty(&snap)?);
            } else {
                print!("{}", stats::render(&snap));
            }
            Ok(())
        }
        Command::Log {
            config,
            device,
            action,
            name,
            protocol,
            since,
            until,
            limit,
            json,
        } => {
            let config = Config::resolve(config.as_deref())?;
            let query = history::Query {
                devices: device,
                action,
                name,
                protocol,
                since,
                until,
                limit: (limit > 0).then_some(limit),
            };
            let filter =
                history::Filter::from_query(query, &config.state_dir, jiff::Timestamp::now())?;
            let rows = history::Store::open_existing(&config.state_dir)?.query(&filter)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if json {
                for r in &rows {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                }
            } else {
                write!(out, "{}", history::render(&rows, &config.timezone))?;
            }
            Ok(())
        }
        Command::Forget {
            config,
            device,
            json,
        } => {
            let config = Config::resolve(config.as_deref())?;
            let keys = history::device_keys(&config.state_dir, &device)?;
            let n = history::Store::open_existing(&config.state_dir)?.forget(&keys)?;
            if json {
                println!("{}", serde_json::json!({ "device": device, "deleted": n }));
            } else {
                println!("deleted {n} decision(s) of {device} from the history");
            }
            Ok(())
        }
        Command::Export {
            config,
            device,
            output,
        } => {
            let config = Config::resolve(config.as_deref())?;
            let keys = history::device_keys(&config.state_dir, &device)?;
            let rows =
                history::Store::open_existing(&config.state_dir)?.query(&history::Filter {
                    devices: keys,
                    ..history::Filter::default()
                })?;
            let doc = serde_json::json!({
                "device": device,
                "exported_at": jiff::Timestamp::now().to_string(),
                "decisions": rows,
            });
            let text = serde_json::to_string_pretty(&doc)?;
            match output {
                Some(path) => std::fs::write(&path, text + "\n")
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{text}"),
            }
            Ok(())
        }
        Command::Replay {
            config,
            capture,
            json,
        } => {
            let config = Config::resolve(config.as_deref())?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if !json {
                writeln!(out, "{}", replay::HEADER)?;
            }
            let mut failed: Option<std::io::Error> = None;
            let summary = replay::replay(&config, &capture, |r| {
                let line = if json {
                    serde_json::to_string(r).unwrap_or_default()
                } else {
                    replay::render(r)
                };
                if let Err(e) = writeln!(out, "{line}") {
                    failed.get_or_insert(e);
                }
            })?;
            if let Some(e) = failed {
                return Err(e).context("writing output");
            }
            if !json {
                writeln!(
                    out,
                    "{} frames replayed, {} skipped; verdicts: {}",
                    summary.frames,
                    summary.skipped,
                    summary
                        .by_verdict
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )?;
            }
            Ok(())
        }
    }
}

/// `gateway reload`: SIGHUP to the daemon of this configuration's bpffs root, then its verdict.
fn reload(config: Option<&std::path::Path>, timeout: u64) -> anyhow::Result<()> {
    let bpffs = Config::bpffs_of(config)?;
    let pid_path = daemon::runtime_file(&bpffs, "pid");
    let status_path = daemon::runtime_file(&bpffs, "status");
    let pid: i32 = std::fs::read_to_string(&pid_path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .with_context(|| {
            format!(
                "no daemon for {} ({} is missing): is `gateway run` started?",
                bpffs.display(),
                pid_path.display()
            )
        })?;
    let before = daemon::ReloadStatus::read(&status_path);
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!(
            "signalling the daemon (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        let now = daemon::ReloadStatus::read(&status_path);
        if now.reloads + now.failed > before.reloads + before.failed {
            return match now.last_ok {
                Some(true) => {
                    println!(
                        "reloaded (pid {pid}; {} reloads, {} rejected)",
                        now.reloads, now.failed
                    );
                    Ok(())
                }
                _ => Err(gateway_user::BadInput(format!(
                    "reload rejected, the running configuration stays: {}",
                    now.last_error.unwrap_or_default()
                ))
                .into()),
            };
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the daemon (pid {pid}) did not report within {timeout} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
