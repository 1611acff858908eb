//! The filter's debug traces (aya-log, `gateway run --trace-kernel`) through the real program:
//! on, every frame leaves one record saying why it got its verdict (the DNS, TLS and main
//! programs alike); off, none, and the verifier has pruned the records' code. Needs root.

use std::sync::{Arc, Mutex};

use gateway_common::enums::{Action, LinkType, Reason, Verdict};
use gateway_user::{
    config::Config,
    kernel::FILTER_PROGRAM,
    offline::{
        frames::{self, L2, L3, L4, TcpFlags},
        testrun::TestRunner,
    },
};

const DEV: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GW: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

const CONFIG: &str = r#"
[[policy]]
name = "students"
block = ["blocked.example"]

[[device]]
name = "tablet"
mac = "02:00:00:00:00:01"
policy = "students"
"#;

/// What the logger was given, as text.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().expect("lock").push(record.args().to_string());
    }
    fn flush(&self) {}
}

fn frame(l4: L4, payload: &[u8]) -> Vec<u8> {
    frames::build(
        L2::Ethernet { src: DEV, dst: GW },
        L3::V4 {
            src: [10, 0, 0, 5],
            dst: [10, 0, 0, 1],
        },
        l4,
        payload,
    )
}

/// A frame, what it is, and the verdict, reason and action its record must carry.
type Case = (&'static str, Vec<u8>, Verdict, Reason, Option<Action>);

/// The three frames.
fn cases() -> Vec<Case> {
    let udp = |dport| L4::Udp {
        sport: 40000,
        dport,
    };
    vec![
        (
            "blocked query",
            frame(udp(53), &frames::dns_query("www.blocked.example")),
            Verdict::Tx,
            Reason::Explicit,
            Some(Action::Block),
        ),
        (
            "other datagram",
            frame(udp(9999), b"hello"),
            Verdict::Pass,
            Reason::Uninspected,
            None,
        ),
        (
            "blocked ClientHello",
            frame(
                L4::Tcp {
                    sport: 40001,
                    dport: 443,
                    seq: 1000,
                    flags: TcpFlags {
                        ack: Some(1),
                        psh: true,
                        ..TcpFlags::default()
                    },
                },
                &frames::client_hello("blocked.example", 3),
            ),
            Verdict::Tx,
            Reason::Explicit,
            Some(Action::Block),
        ),
    ]
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (cargo xtask test)"
    );
}

/// Runs every case through `r`, checking its verdict, reason and action: the record each must
/// have left (numbers, as the kernel writes them).
fn run_cases(r: &mut TestRunner) -> Vec<String> {
    cases()
        .into_iter()
        .map(|(what, f, verdict, reason, action)| {
            let out = r.run(&f).expect("run");
            assert_eq!(
                (out.verdict, out.reason, out.action),
                (verdict, reason, action),
                "{what}"
            );
            let action = action.map_or(gateway_common::maps::TRACE_NO_ACTION, |a| a as u32);
            format!(
                "verdict={} reason={} slot={} policy={} action={action} bytes={}",
                verdict as u32,
                reason as u32,
                out.slot,
                out.policy,
                // The frame as the program left it: an answer or a reset is counted at its size.
                out.output.len()
            )
        })
        .collect()
}

#[test]
fn every_frame_says_why_when_traces_are_on_and_nothing_when_off() {
    require_root();
    let config = Config::parse(CONFIG, std::path::Path::new("t.toml")).expect("config");
    let mut on = TestRunner::with_kernel_log(&config, LinkType::Ethernet).expect("load, traces on");
    let seen = Collect::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut on.filter.ebpf, seen.clone())
        .expect("the log ring");
    let want = run_cases(&mut on);
    logger.flush();
    assert_eq!(*seen.0.lock().expect("lock"), want);

    // Off (as the daemon loads it unless asked): the same frames, the same verdicts, no record,
    // and the records' code pruned by the verifier.
    let mut off = TestRunner::new(&config, LinkType::Ethernet).expect("load, traces off");
    let quiet = Collect::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut off.filter.ebpf, quiet.clone())
        .expect("the log ring");
    run_cases(&mut off);
    logger.flush();
    assert!(quiet.0.lock().expect("lock").is_empty());
    let size = |r: &mut TestRunner| {
        r.filter
            .ebpf
            .program(FILTER_PROGRAM)
            .expect("program")
            .info()
            .expect("info")
            .size_translated()
            .expect("translated size")
    };
    let (with, without) = (size(&mut on), size(&mut off));
    assert!(
        without < with,
        "traces off: {without} bytes translated, on: {with}; the verifier did not prune"
    );
}
