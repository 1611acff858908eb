//! `cargo xtask bench` runs this: the data-path benchmarks, as a table (or JSON).
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    if let Some(n) = args.config_only {
        println!(
            "{}",
            serde_json::to_string(&gateway_user::bench::config(n)?)?
        );
        return Ok(());
    }
    if args.history_only {
        print!(
            "{}",
            gateway_user::bench::render_history(&gateway_user::bench::history()?)
        );
        return Ok(());
    }
    if args.verdicts_only {
        let (dns, tls) = verdicts(&args)?;
        print!("{}", gateway_user::bench::render_dns(&dns));
        print!("{}", gateway_user::bench::render_tls(&tls));
        return Ok(());
    }
    let rows = gateway_user::bench::foundation(args.rounds, args.repeat)?;
    if args.data_path_only {
        print!(
            "{}",
            gateway_user::bench::render("Data path per frame (BPF_PROG_TEST_RUN)", &rows)
        );
        return Ok(());
    }
    let (dns, tls) = verdicts(&args)?;
    let config = args
        .dns_sizes
        .iter()
        .map(|&n| config_in_child(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let history = gateway_user::bench::history()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "data_path": rows, "dns": dns, "tls": tls, "config": config, "history": history })
        );
    } else {
        print!(
            "{}",
            gateway_user::bench::render(
                &format!(
                    "Data path per frame (BPF_PROG_TEST_RUN; best of {} alternating rounds x {} runs; {} devices configured)",
                    args.rounds,
                    args.repeat,
                    gateway_user::bench::BENCH_DEVICES
                ),
                &rows
            )
        );
        println!();
        print!("{}", gateway_user::bench::render_dns(&dns));
        println!();
        print!("{}", gateway_user::bench::render_tls(&tls));
        println!();
        print!("{}", gateway_user::bench::render_config(&config));
        println!();
        print!("{}", gateway_user::bench::render_history(&history));
    }
    Ok(())
}

/// The DNS and TLS verdict benchmarks at `--dns-sizes`.
fn verdicts(
    args: &Args,
) -> anyhow::Result<(
    Vec<gateway_user::bench::DnsRow>,
    Vec<gateway_user::bench::TlsRow>,
)> {
    let dns = gateway_user::bench::dns(&args.dns_sizes, 11, args.repeat / 4)?;
    let tls = gateway_user::bench::tls(&args.dns_sizes, 11, args.repeat / 4)?;
    Ok((dns, tls))
}

/// The configuration benchmark at `n` domains, run by a child process of this binary.
fn config_in_child(n: usize) -> anyhow::Result<gateway_user::bench::ConfigRow> {
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
