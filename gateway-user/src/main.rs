//! `gateway`: the daemon and its command line.
use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gateway_user::{
    attach,
    config::Config,
    daemon::{self, RunOptions},
    is_bad_input,
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
            let snap = stats::snapshot(&maps)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snap)?);
            } else {
                print!("{}", stats::render(&snap));
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
