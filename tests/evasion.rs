//! Tier 3 of the evasion suite: the stream cases with real sockets. A device namespace sends
//! DNS over TCP the way a user who wants around the filter would — two queries in one segment,
//! one query split over two segments, a split inside the 2-byte length — and DNS over UDP to a
//! port other than 53, to a real dnsmasq upstream; the blocked name never reaches it, allowed
//! ones are answered. (The frame-level rows are in `gateway-user/tests/evasion.rs`.)

use gateway_testbed::{Bed, Daemon, Dnsmasq, Pins};

/// A DNS client in a dozen lines, as the issue's user wrote it: `mode` is `pipelined` (both
/// queries in one send), `split` (each query as its first 7 bytes, then the rest), `length`
/// (each query's length split, one byte then the rest) or `udp` (to `port`, one datagram per
/// query). Prints, per query sent, the answer's rcode and first address, or how the
/// connection ended.
const CLIENT: &str = r#"
import socket, struct, sys, time
server, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = sys.argv[4:]
def query(i, name):
    q = struct.pack(">HHHHHH", 0x1000 + i, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"
def show(msg):
    rcode = msg[3] & 15
    addr = ".".join(str(b) for b in msg[-4:]) if struct.unpack(">H", msg[6:8])[0] else "-"
    print("rcode=%d addr=%s" % (rcode, addr), flush=True)
msgs = [query(i, n) for i, n in enumerate(names)]
if mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for m in msgs:
        s.sendto(m, (server, port))
        try:
            show(s.recv(4096))
        except socket.timeout:
            print("timeout", flush=True)
    sys.exit(0)
s = socket.create_connection((server, port), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
framed = [struct.pack(">H", len(m)) + m for m in msgs]
try:
    if mode == "pipelined":
        s.sendall(b"".join(framed))
    else:
        cut = 7 if mode == "split" else 1
        for f in framed:
            s.sendall(f[:cut])
            time.sleep(0.2)
            s.sendall(f[cut:])
            time.sleep(0.2)
    buf = b""
    for _ in msgs:
        while len(buf) < 2 or len(buf) < 2 + struct.unpack(">H", buf[:2])[0]:
            chunk = s.recv(4096)
            if not chunk:
                print("closed", flush=True)
                sys.exit(0)
            buf += chunk
        n = struct.unpack(">H", buf[:2])[0]
        show(buf[2:2 + n])
        buf = buf[2 + n:]
except ConnectionResetError:
    print("reset", flush=True)
except socket.timeout:
    print("timeout", flush=True)
"#;

#[test]
fn dns_over_tcp_is_judged_as_a_stream_with_real_sockets() -> anyhow::Result<()> {
    let bed = Bed::new(1)?;
    let laptop = &bed.devices[0];
    let pins = Pins::with_config("", &bed.one_device_config(&["blocked.example"]))?;
    let _daemon = Daemon::start(&bed.gw, &pins, &["d1"])?;
    let upstream = Dnsmasq::start(
        &bed.up,
        &bed.upstream_ip,
        &[
            ("fine.example", "198.51.100.7"),
            ("other.example", "198.51.100.8"),
            ("alpha.blocked.example", "198.51.100.9"),
        ],
    )?;
    let up = bed.upstream_ip.as_str();
    let client = |port: &str, mode: &str, names: &[&str]| -> anyhow::Result<Vec<String>> {
        let mut args = vec!["-c", CLIENT, up, port, mode];
        args.extend_from_slice(names);
        let out = laptop.ns.output("python3", &args)?;
        anyhow::ensure!(
            out.status.success(),
            "the client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    };
    let answered = |addr: &str| vec![format!("rcode=0 addr={addr}")];

    // Allowed streams are answered whole, however they are cut.
    for mode in ["pipelined", "split", "length"] {
        let got = client("53", mode, &["fine.example", "other.example"])?;
        assert_eq!(
            got,
            [answered("198.51.100.7"), answered("198.51.100.8")].concat(),
            "{mode}: allowed queries"
        );
    }
    // The issue's two cases, and the length split: the blocked query resets the flow, and the
    // allowed one in the same segment goes with it (the reset drops the segment).
    for mode in ["pipelined", "split", "length"] {
        let got = client("53", mode, &["fine.example", "alpha.blocked.example"])?;
        assert_eq!(
            got.last().map(String::as_str),
            Some("reset"),
            "{mode}: {got:?}"
        );
        assert!(
            !got.iter().any(|l| l.contains("198.51.100.9")),
            "{mode}: the blocked name was answered: {got:?}"
        );
        if mode == "pipelined" {
            assert_eq!(got.len(), 1, "{mode}: nothing answered: {got:?}");
        }
    }
    // DNS over UDP to another port is judged like port 53 (dnsmasq does not listen there: an
    // allowed query times out, a blocked one is answered NXDOMAIN by the gateway).
    assert_eq!(
        client("5353", "udp", &["alpha.blocked.example"])?,
        ["rcode=3 addr=-"]
    );
    assert_eq!(client("5353", "udp", &["fine.example"])?, ["timeout"]);

    let seen = upstream.queries();
    assert!(
        seen.iter().filter(|q| *q == "fine.example").count() >= 5,
        "the allowed queries reached the upstream: {seen:?}"
    );
    assert!(
        !seen.iter().any(|q| q == "alpha.blocked.example"),
        "the blocked name reached the upstream: {seen:?}"
    );
    Ok(())
}
