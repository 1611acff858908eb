//! `gateway-bench`: the benchmarks, as Markdown tables (or JSON); `cargo xtask bench` runs it
//! and then the dnsperf comparison with dnsmasq and unbound.

mod common;
mod config;
mod datapath;
mod history;
mod lists;
mod shipping;
mod streams;
mod verdicts;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmarks the gateway's XDP program against an empty XDP program")]
struct Args {
    /// Alternating measurement rounds per frame (the best and the median are reported).
    #[arg(long, default_value_t = 41)]
    rounds: u32,
    /// Program runs per round (BPF_PROG_TEST_RUN repeat).
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Domain-table sizes of the DNS benchmark.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    dns_sizes: Vec<usize>,
    /// Only the configuration benchmark at this size, as JSON (the full benchmark runs each
    /// size in a child process, so its peak memory is that of the work alone).
    #[arg(long)]
    config_only: Option<usize>,
    /// Only the data-path table.
    #[arg(long)]
    data_path_only: bool,
    /// Only the history and metrics table.
    #[arg(long)]
    history_only: bool,
    /// Only the DNS and TLS verdict tables (at `--dns-sizes`).
    #[arg(long)]
    verdicts_only: bool,
    /// Only the stream table (SYNs, first ClientHello segments, DNS over TCP).
    #[arg(long)]
    streams_only: bool,
    /// Only the list parsing table.
    #[arg(long)]
    lists_only: bool,
    /// Only the shipping table (syslog shipper on and off, remote-write push size).
    #[arg(long)]
    shipping_only: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    if let Some(n) = args.config_only {
        println!("{}", serde_json::to_string(&config::config(n)?)?);
        return Ok(());
    }
    if args.history_only {
        print!("{}", history::render_history(&history::history()?));
        return Ok(());
    }
    if args.shipping_only {
        print!("{}", shipping::render_shipping(&shipping::shipping()?));
        return Ok(());
    }
    if args.lists_only {
        print!("{}", lists::render_lists(&lists::lists()?));
        return Ok(());
    }
    if args.streams_only {
        print!("{}", streams::render_streams(&streams::streams()?));
        return Ok(());
    }
    if args.verdicts_only {
        let (dns, tls) = verdicts(&args)?;
        print!("{}", verdicts::render_dns(&dns));
        print!("{}", verdicts::render_tls(&tls));
        return Ok(());
    }
    let rows = datapath::foundation(args.rounds, args.repeat)?;
    if args.data_path_only {
        print!(
            "{}",
            common::render("Data path per frame (BPF_PROG_TEST_RUN)", &rows)
        );
        return Ok(());
    }
    let (dns, tls) = verdicts(&args)?;
    let streams = streams::streams()?;
    let config = args
        .dns_sizes
        .iter()
        .map(|&n| config_in_child(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let history = history::history()?;
    let lists = lists::lists()?;
    let shipping = shipping::shipping()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "data_path": rows, "dns": dns, "tls": tls, "streams": streams, "config": config, "history": history, "lists": lists, "shipping": shipping })
        );
    } else {
        print!(
            "{}",
            common::render(
                &format!(
                    "Data path per frame (BPF_PROG_TEST_RUN; best of {} alternating rounds x {} runs; {} devices configured)",
                    args.rounds,
                    args.repeat,
                    common::BENCH_DEVICES
                ),
                &rows
            )
        );
        println!();
        print!("{}", verdicts::render_dns(&dns));
        println!();
        print!("{}", verdicts::render_tls(&tls));
        println!();
        print!("{}", streams::render_streams(&streams));
        println!();
        print!("{}", config::render_config(&config));
        println!();
        print!("{}", history::render_history(&history));
        println!();
        print!("{}", lists::render_lists(&lists));
        println!();
        print!("{}", shipping::render_shipping(&shipping));
    }
    Ok(())
}

/// The DNS and TLS verdict benchmarks at `--dns-sizes`.
fn verdicts(args: &Args) -> anyhow::Result<(Vec<verdicts::DnsRow>, Vec<verdicts::TlsRow>)> {
    let dns = verdicts::dns(&args.dns_sizes, 11, args.repeat / 4)?;
    let tls = verdicts::tls(&args.dns_sizes, 11, args.repeat / 4)?;
    Ok((dns, tls))
}

/// The configuration benchmark at `n` domains, run by a child process of this binary.
fn config_in_child(n: usize) -> anyhow::Result<config::ConfigRow> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--config-only", &n.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "configuration benchmark at {n} domains: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
