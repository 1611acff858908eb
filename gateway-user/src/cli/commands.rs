//! What each verb does: a thin layer over the daemon, the control client, the pinned maps, the
//! history and the offline tools, printing tables or JSON.

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;

use super::args::{BundleCommand, Command};
use crate::{
    BadInput,
    config::Config,
    control::{self, views},
    daemon::{self, RunOptions},
    kernel::{Maps, attach},
    observe::{
        history, stats,
        status::{ReloadStatus, runtime_file},
    },
    offline::{check, replay},
};

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

pub fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            ifaces,
            trace_kernel,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(daemon::run(RunOptions {
                config,
                interfaces: ifaces,
                trace_kernel,
            }))
        }
        Command::Check {
            config,
            json,
            kernel,
        } => {
            let config = Config::resolve(config.as_deref())?;
            let summary = check::summary(&config)?;
            let report = if kernel {
                Some(check::kernel_report(&config)?)
            } else {
                None
            };
            if json {
                let v = serde_json::json!({ "config": summary, "kernel": report });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", check::render(&summary));
                if let Some(r) = &report {
                    print!("\n{}", check::render_kernel(r));
                }
            }
            // After the report: it shows what is missing, the refusal says what it means.
            report.as_ref().map_or(Ok(()), check::KernelReport::refusal)
        }
        Command::Reload { config, timeout } => reload(config.as_deref(), timeout),
        Command::Status { config, json } => {
            let config = Config::resolve(config.as_deref())?;
            let status = ReloadStatus::read(&runtime_file(&config.bpffs, "status"));
            let view = crate::observe::status::StatusView::of(&config, &status);
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", view.render());
            }
            Ok(())
        }
        Command::Bundle(BundleCommand::Build {
            dir,
            revision,
            labels,
            output,
        }) => {
            let comment = crate::config::bundle::build(
                &dir,
                revision,
                labels.into_iter().collect(),
                &output,
            )?;
            println!(
                "built {} (revision {revision}); sign it with:\n  minisign -S -s KEY -m {} -t \"{comment}\"",
                output.display(),
                output.display()
            );
            Ok(())
        }
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
                    let rows = views::devices(&config, jiff::Timestamp::now());
                    if json {
                        println!("{}", serde_json::to_string_pretty(&rows)?);
                    } else {
                        print!("{}", views::render_devices(&rows));
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
            let status = ReloadStatus::read(&runtime_file(&bpffs, "status"));
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
            // The table's header comes with its first row: a kernel that refuses the filter
            // (it is loaded with the first frame) leaves just the refusal.
            let mut header = !json;
            let mut failed: Option<std::io::Error> = None;
            let summary = replay::replay(&config, &capture, |r| {
                let line = if json {
                    serde_json::to_string(r).unwrap_or_default()
                } else {
                    replay::render(r)
                };
                if header {
                    header = false;
                    if let Err(e) = writeln!(out, "{}", replay::HEADER) {
                        failed.get_or_insert(e);
                    }
                }
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
    let pid_path = runtime_file(&bpffs, "pid");
    let status_path = runtime_file(&bpffs, "status");
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
    let before = ReloadStatus::read(&status_path);
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!(
            "signalling the daemon (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        let now = ReloadStatus::read(&status_path);
        if now.reloads + now.failed > before.reloads + before.failed {
            return match now.last_ok {
                Some(true) => {
                    println!(
                        "reloaded (pid {pid}; {} reloads, {} rejected)",
                        now.reloads, now.failed
                    );
                    Ok(())
                }
                _ => Err(BadInput(format!(
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
