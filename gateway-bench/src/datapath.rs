//! The data path per frame through BPF_PROG_TEST_RUN: the filter next to the empty XDP program,
//! both built and measured in the same run, so the difference is the filter's own cost.

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

use crate::{
    common::{BENCH_MAC, GATEWAY_MAC, bench_config, best, median},
    verdicts::tls_segment,
};

/// One measured frame. `*_ns` are the best (lowest) round: on a shared machine the least
/// disturbed round is the closest to the program's own cost; `*_median_ns` show the spread.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub frame: String,
    pub bytes: usize,
    pub empty_ns: f64,
    pub gateway_ns: f64,
    pub delta_ns: f64,
    pub ratio: f64,
    pub empty_median_ns: f64,
    pub gateway_median_ns: f64,
}

/// The frames of the foundation benchmark: (name, link, frame).
pub fn foundation_frames() -> Vec<(&'static str, LinkType, Vec<u8>)> {
    let eth = L2::Ethernet {
        src: BENCH_MAC,
        dst: GATEWAY_MAC,
    };
    let v4 = L3::V4 {
        src: [10, 0, 3, 232],
        dst: [93, 184, 216, 34],
    };
    let udp = L4::Udp {
        sport: 40000,
        dport: 5000,
    };
    let tcp = L4::Tcp {
        sport: 40000,
        dport: 80,
        seq: 1,
        flags: TcpFlags {
            ack: Some(1),
            psh: true,
            ..TcpFlags::default()
        },
    };
    vec![
        (
            "udp-64",
            LinkType::Ethernet,
            frames::sized(eth, v4, udp, 64),
        ),
        (
            "tcp-1500",
            LinkType::Ethernet,
            frames::sized(eth, v4, tcp, 1514),
        ),
        (
            // HTTPS data of an allowed flow: the TLS-port check and the flow-mark read.
            "tcp443-1500",
            LinkType::Ethernet,
            frames::sized(
                eth,
                v4,
                L4::Tcp {
                    sport: 40000,
                    dport: 443,
                    seq: 1,
                    flags: TcpFlags {
                        ack: Some(1),
                        psh: true,
                        ..TcpFlags::default()
                    },
                },
                1514,
            ),
        ),
        (
            "tlsdata-62",
            LinkType::Ethernet,
            tls_segment(40001, 1, &[23, 3, 3, 0, 64, 0xaa, 0xbb, 0xcc]),
        ),
        (
            "vlan-udp-68",
            LinkType::Ethernet,
            frames::sized(
                L2::Vlan {
                    src: BENCH_MAC,
                    dst: GATEWAY_MAC,
                    vid: 10,
                },
                v4,
                udp,
                68,
            ),
        ),
        (
            "rawip-udp-50",
            LinkType::RawIp,
            frames::sized(
                L2::RawIp,
                L3::V4 {
                    src: [10, 0, 3, 233],
                    dst: [93, 184, 216, 34],
                },
                udp,
                50,
            ),
        ),
    ]
}

/// Measures each foundation frame: `rounds` alternating rounds of `repeat` runs on the empty
/// program and on the filter; the best and the median round of each.
pub fn foundation(rounds: u32, repeat: u32) -> anyhow::Result<Vec<Row>> {
    let config = bench_config()?;
    let mut empty = load_empty()?;
    let mut checked = TestRunner::new(&config, LinkType::Ethernet)?;
    let mut checked_raw = TestRunner::new(&config, LinkType::RawIp)?;
    let mut eth = TestRunner::with_trace(&config, LinkType::Ethernet, false)?;
    let mut raw = TestRunner::with_trace(&config, LinkType::RawIp, false)?;
    let mut rows = Vec::new();
    for (name, link, frame) in foundation_frames() {
        let (check, runner) = if link == LinkType::RawIp {
            (&mut checked_raw, &mut raw)
        } else {
            (&mut checked, &mut eth)
        };
        // The frame must take the path being measured: a known device, passed uninspected.
        // (Checked on a traced twin; the timed instance is the production program.)
        let r = check.run(&frame)?;
        anyhow::ensure!(
            r.verdict == Verdict::Pass && r.reason == Reason::Uninspected && r.slot != 0,
            "benchmark frame {name} took the wrong path: {r:?}"
        );
        let empty_prog: &mut Xdp = empty
            .program_mut(EMPTY_PROGRAM)
            .context("empty program")?
            .try_into()?;
        let mut e = Vec::new();
        let mut g = Vec::new();
        for _ in 0..rounds {
            e.push(time_program(empty_prog, &frame, repeat)?.as_nanos() as f64);
            g.push(runner.time(&frame, repeat)?.as_nanos() as f64);
        }
        let (empty_ns, gateway_ns) = (best(&e), best(&g));
        rows.push(Row {
            frame: name.to_string(),
            bytes: frame.len(),
            empty_ns,
            gateway_ns,
            delta_ns: gateway_ns - empty_ns,
            ratio: if empty_ns > 0.0 {
                gateway_ns / empty_ns
            } else {
                0.0
            },
            empty_median_ns: median(&e),
            gateway_median_ns: median(&g),
        });
    }
    Ok(rows)
}
