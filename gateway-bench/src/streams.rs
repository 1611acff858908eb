//! What judging streams costs: a SYN to a TLS port (its flow state) next to a SYN to another
//! port, a ClientHello's first segment after its SYN, and a DNS-over-TCP segment next to the
//! same query over UDP. Each frame belongs to a flow of its own and is run once (state is what
//! is measured), the empty program's run-once time taken off; medians of `FLOWS` flows.

use anyhow::Context as _;
use aya::programs::Xdp;
use gateway_common::enums::{LinkType, Reason, Verdict};
use gateway_user::{
    kernel::{EMPTY_PROGRAM, load_empty},
    offline::{
        frames::{self, L2, L3, L4, TcpFlags},
        testrun::{TestRunner, time_program},
    },
};
use serde::Serialize;

use crate::common::{BENCH_MAC, GATEWAY_MAC, bench_config, median, table};

/// Flows per row.
const FLOWS: u32 = 20_000;

/// One row: a frame kind and its median cost over the empty program.
#[derive(Debug, Clone, Serialize)]
pub struct StreamRow {
    pub frame: String,
    pub ns: f64,
}

/// A segment of the bench device to `dport` of the server: a SYN, or data acknowledging 1.
pub fn tcp(sport: u16, dport: u16, seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
    frames::build(
        L2::Ethernet {
            src: BENCH_MAC,
            dst: GATEWAY_MAC,
        },
        L3::V4 {
            src: [10, 0, 3, 232],
            dst: [192, 0, 2, 80],
        },
        L4::Tcp {
            sport,
            dport,
            seq,
            flags: TcpFlags {
                syn,
                ack: (!syn).then_some(1),
                psh: !syn,
                ..Default::default()
            },
        },
        payload,
    )
}

fn udp_query(sport: u16, q: &[u8]) -> Vec<u8> {
    frames::build(
        L2::Ethernet {
            src: BENCH_MAC,
            dst: GATEWAY_MAC,
        },
        L3::V4 {
            src: [10, 0, 3, 232],
            dst: [192, 0, 2, 80],
        },
        L4::Udp { sport, dport: 53 },
        q,
    )
}

fn framed(q: &[u8]) -> Vec<u8> {
    let mut v = (q.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(q);
    v
}

/// Runs the stream benchmark.
pub fn streams() -> anyhow::Result<Vec<StreamRow>> {
    let config = bench_config()?;
    let mut empty = load_empty()?;
    let empty_prog: &mut Xdp = empty
        .program_mut(EMPTY_PROGRAM)
        .context("empty program")?
        .try_into()?;
    let mut runner = TestRunner::with_trace(&config, LinkType::Ethernet, false)?;
    let mut checked = TestRunner::new(&config, LinkType::Ethernet)?;
    let query = frames::dns_query("www.unlisted-site.example");
    let hello = frames::client_hello("www.unlisted-site.example", 6);
    let mut pipelined = framed(&query);
    pipelined.extend(framed(&query));

    // The paths each row measures, checked once.
    let expect = |r: &mut TestRunner, f: &[u8], want: (Verdict, Reason)| -> anyhow::Result<()> {
        let got = r.run(f)?;
        anyhow::ensure!(
            (got.verdict, got.reason) == want,
            "benchmark frame took the wrong path: {got:?}"
        );
        Ok(())
    };
    let pass = (Verdict::Pass, Reason::Uninspected);
    let allowed = (Verdict::Pass, Reason::Default);
    expect(&mut checked, &tcp(1, 80, 99, true, &[]), pass)?;
    expect(&mut checked, &tcp(1, 443, 99, true, &[]), pass)?;
    expect(&mut checked, &tcp(1, 443, 100, false, &hello), allowed)?;
    expect(&mut checked, &tcp(2, 443, 100, false, &hello), allowed)?;
    expect(&mut checked, &tcp(3, 53, 99, true, &[]), pass)?;
    expect(
        &mut checked,
        &tcp(3, 53, 100, false, &framed(&query)),
        allowed,
    )?;
    expect(&mut checked, &tcp(4, 53, 100, false, &pipelined), allowed)?;
    expect(&mut checked, &udp_query(5, &query), allowed)?;

    let mut rows = Vec::new();
    // Each kind: for every flow, what comes before (untimed), then the frame timed once.
    type Flow<'a> = dyn Fn(u16, u32) -> (Vec<Vec<u8>>, Vec<u8>) + 'a;
    let kinds: [(&str, Box<Flow<'_>>); 7] = [
        (
            "SYN to port 80 (no state)",
            Box::new(|p, isn| (vec![], tcp(p, 80, isn, true, &[]))),
        ),
        (
            "SYN to port 443 (flow state created)",
            Box::new(|p, isn| (vec![], tcp(p, 443, isn, true, &[]))),
        ),
        (
            "ClientHello, first segment, after its SYN",
            Box::new(|p, isn| {
                (
                    vec![tcp(p, 443, isn, true, &[])],
                    tcp(p, 443, isn + 1, false, &hello),
                )
            }),
        ),
        (
            "ClientHello, first segment, no SYN seen",
            Box::new(|p, isn| (vec![], tcp(p, 443, isn + 1, false, &hello))),
        ),
        (
            "DNS over TCP: a segment with one query, after its SYN",
            Box::new(|p, isn| {
                (
                    vec![tcp(p, 53, isn, true, &[])],
                    tcp(p, 53, isn + 1, false, &framed(&query)),
                )
            }),
        ),
        (
            "DNS over TCP: a segment with two queries",
            Box::new(|p, isn| {
                (
                    vec![tcp(p, 53, isn, true, &[])],
                    tcp(p, 53, isn + 1, false, &pipelined),
                )
            }),
        ),
        (
            "DNS over UDP: the same query",
            Box::new(|p, _| (vec![], udp_query(p, &query))),
        ),
    ];
    for (name, flow) in kinds {
        let mut costs = Vec::with_capacity(FLOWS as usize);
        for k in 0..FLOWS {
            let sport = 1024 + (k % 60_000) as u16;
            let isn = k
                .wrapping_mul(7919)
                .wrapping_add(name.len() as u32 * 104_729);
            let (before, frame) = flow(sport, isn);
            for f in &before {
                runner.time(f, 1)?;
            }
            let t = runner.time(&frame, 1)?.as_nanos() as f64;
            costs.push(t - time_program(empty_prog, &frame, 1)?.as_nanos() as f64);
        }
        rows.push(StreamRow {
            frame: name.to_string(),
            ns: median(&costs),
        });
    }
    Ok(rows)
}

/// The stream rows as a table.
pub fn render_streams(rows: &[StreamRow]) -> String {
    table(
        "Streams (BPF_PROG_TEST_RUN; 20,000 flows per row, each frame run once on a flow of its own, harness share taken off, median)",
        &["frame", "filter (ns)"],
        false,
        rows.iter()
            .map(|r| vec![r.frame.clone(), format!("{:.0}", r.ns)]),
    )
}
