//! The decision history shipped as syslog: every stored decision (after `[history] ship_only`)
//! as an RFC 5424 message, octet-counted (RFC 6587 §3.4.1) over TCP or TLS (RFC 5425, rustls),
//! its fields in structured data with a unique id (`<database instance>-<row id>`) that lets a
//! receiver drop duplicates.
//!
//! The history database is the spool. The cursor — the last row id confirmed shipped, kept in
//! `state_dir/ship/syslog.cursor.json` — moves only when the receiver has had the rows: TCP
//! has acknowledged every byte up to them (`SIOCOUTQ`) and the connection stayed up `SETTLE`
//! after they were written (a receiver that closes reads nothing more). Anything else is sent
//! again from the cursor after a reconnect or a restart: at least once, in order.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{PipelineStats, retry::Backoff};
use crate::{
    config::telemetry::{Ship, Transport},
    observe::history::{RowRef, Store},
};

/// The SD-ID of a decision (`32473` is the private enterprise number RFC 5612 reserves for
/// examples and documentation; a registered one can replace it).
pub const SD_ID: &str = "decision@32473";
/// Rows written per round.
const BATCH: u32 = 500;
/// How long the connection must stay up after rows were written (and acknowledged) before
/// they count as shipped.
const SETTLE: Duration = Duration::from_secs(1);
/// Connecting and each write may take this long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnects back off between these.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));

/// What every message of this gateway carries.
#[derive(Debug, Clone)]
pub struct Origin {
    /// RFC 5424 HOSTNAME: the host's name, or `-`.
    pub hostname: String,
    /// The history database's instance (`Store::instance`).
    pub instance: String,
}

impl Origin {
    /// This host, for the history with `instance`.
    pub fn of_host(instance: String) -> Self {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes at most that.
        let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).into_owned();
        let printable = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b));
        Self {
            hostname: if ok && printable { name } else { "-".into() },
            instance,
        }
    }
}

/// Appends SD-PARAM value `v` with `"`, `\\` and `]` escaped (RFC 5424 §6.3.3); the search
/// for them is memchr's (vectorised: every field of every decision goes through here).
fn escape_into(v: &str, out: &mut Vec<u8>) {
    let mut rest = v.as_bytes();
    while let Some(i) = memchr::memchr3(b'"', b'\\', b']', rest) {
        out.extend_from_slice(&rest[..i]);
        out.push(b'\\');
        out.push(rest[i]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

/// Turns rows into octet-counted RFC 5424 messages, reusing its buffers (the shipper frames
/// every decision: no allocation per row, the time's text made once per second).
#[derive(Debug)]
pub struct Framer {
    origin: Origin,
    msg: Vec<u8>,
    /// The second `second_text` is of (`YYYY-MM-DDTHH:MM:SS`).
    second: Option<i64>,
    second_text: String,
}

impl Framer {
    pub fn new(origin: Origin) -> Self {
        Self {
            origin,
            msg: Vec::with_capacity(512),
            second: None,
            second_text: String::new(),
        }
    }

    /// Appends row `id` to `out` as one message. The same row always gives the same bytes (no
    /// process id, no send time), so a duplicate is recognisable by content as well as by id.
    pub fn frame_into(&mut self, out: &mut Vec<u8>, id: i64, row: &RowRef<'_>) {
        // Facility local0: notice for what was not allowed, informational for the rest.
        let pri: &[u8] = if row.action == "allow" {
            b"<134>1 "
        } else {
            b"<133>1 "
        };
        let (sec, ms) = (row.time_ms.div_euclid(1000), row.time_ms.rem_euclid(1000));
        if self.second != Some(sec) {
            self.second = Some(sec);
            self.second_text = jiff::Timestamp::from_second(sec)
                .map(|t| t.to_string().trim_end_matches('Z').to_string())
                .unwrap_or_default();
        }
        let m = &mut self.msg;
        m.clear();
        m.extend_from_slice(pri);
        if self.second_text.is_empty() {
            m.push(b'-');
        } else {
            m.extend_from_slice(self.second_text.as_bytes());
            m.extend_from_slice(&[
                b'.',
                b'0' + (ms / 100) as u8,
                b'0' + (ms / 10 % 10) as u8,
                b'0' + (ms % 10) as u8,
                b'Z',
                b' ',
            ]);
        }
        m.extend_from_slice(self.origin.hostname.as_bytes());
        m.extend_from_slice(b" gateway - decision [");
        m.extend_from_slice(SD_ID.as_bytes());
        m.extend_from_slice(b" id=\"");
        escape_into(&self.origin.instance, m);
        m.push(b'-');
        push_decimal(m, id.unsigned_abs());
        let mut qbuf = [0u8; 20];
        let qtype = decimal(u64::from(row.qtype), &mut qbuf);
        let params: [(&[u8], Option<&str>); 8] = [
            (b"\" device=\"", Some(row.device)),
            (b"\" policy=\"", Some(row.policy)),
            (b"\" protocol=\"", Some(row.protocol)),
            (b"\" name=\"", Some(row.name)),
            (b"\" qtype=\"", Some(qtype)),
            (b"\" action=\"", Some(row.action)),
            (b"\" reason=\"", Some(row.reason)),
            (b"\" category=\"", row.category),
        ];
        for (key, value) in params {
            if let Some(v) = value {
                m.extend_from_slice(key);
                escape_into(v, m);
            }
        }
        m.extend_from_slice(b"\"] ");
        m.extend_from_slice(row.action.as_bytes());
        m.push(b' ');
        m.extend_from_slice(row.protocol.as_bytes());
        m.push(b' ');
        m.extend_from_slice(row.name.as_bytes());
        push_decimal(out, m.len() as u64);
        out.push(b' ');
        out.extend_from_slice(m);
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(decimal(n, &mut buf).as_bytes());
}

/// `n` in decimal, in `buf` (20 digits hold any u64).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// The persisted cursor.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Cursor {
    /// The database instance the id is of: another database starts from its beginning.
    instance: String,
    last_id: i64,
}

fn cursor_path(state_dir: &Path) -> PathBuf {
    state_dir.join(super::DIR).join("syslog.cursor.json")
}

/// A writer that counts the bytes it hands to the socket (TLS records included), so that
/// what TCP has acknowledged can be told: written minus `SIOCOUTQ`.
#[derive(Debug)]
struct Counted {
    tcp: TcpStream,
    written: u64,
}

impl std::io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.tcp.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// A connection to the receiver.
enum Link {
    Tcp(Counted),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Counted>>),
}

impl Link {
    fn counted(&self) -> &Counted {
        match self {
            Link::Tcp(c) => c,
            Link::Tls(s) => &s.sock,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Tcp(c) => c.write_all(bytes).and_then(|()| c.flush()),
            Link::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        }
    }

    /// Bytes handed to TCP that the peer has acknowledged.
    fn acknowledged(&self) -> u64 {
        let c = self.counted();
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int: for TCP, the bytes sent but not yet
        // acknowledged plus those not yet sent.
        let rc = unsafe { libc::ioctl(c.tcp.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc != 0 {
            return 0;
        }
        c.written.saturating_sub(queued.max(0) as u64)
    }

    /// Whether the peer is still there: it sends nothing (TLS: perhaps session tickets, read
    /// and ignored), so readable means closed.
    fn alive(&mut self) -> bool {
        let fd = self.counted().tcp.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n <= 0 {
            return n == 0;
        }
        if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return false;
        }
        // Readable without a hang-up: data from the peer. Read what is there without waiting.
        let tcp = &self.counted().tcp;
        if tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut buf = [0u8; 4096];
        let alive = loop {
            let r = match self {
                Link::Tcp(c) => c.read(&mut buf),
                Link::Tls(s) => s.read(&mut buf),
            };
            match r {
                Ok(0) => break false,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        alive && self.counted().tcp.set_nonblocking(false).is_ok()
    }
}

/// Connects to the receiver of `ship`.
fn connect(ship: &Ship, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Link, String> {
    use std::net::ToSocketAddrs as _;
    let addrs: Vec<_> = (ship.host.as_str(), ship.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", ship.host))?
        .collect();
    let mut last = format!("{}: no address", ship.host);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(tcp) => {
                tcp.set_write_timeout(Some(IO_TIMEOUT))
                    .and_then(|()| tcp.set_read_timeout(Some(IO_TIMEOUT)))
                    .and_then(|()| tcp.set_nodelay(true))
                    .map_err(|e| format!("{addr}: {e}"))?;
                let counted = Counted { tcp, written: 0 };
                return match (ship.transport, tls) {
                    (Transport::Tcp, _) => Ok(Link::Tcp(counted)),
                    (Transport::Tls, Some(config)) => {
                        let name = rustls::pki_types::ServerName::try_from(ship.host.clone())
                            .map_err(|e| format!("{}: {e}", ship.host))?;
                        let conn = rustls::ClientConnection::new(config.clone(), name)
                            .map_err(|e| format!("TLS: {e}"))?;
                        let mut s = rustls::StreamOwned::new(conn, counted);
                        // The handshake now, so that a bad certificate is this error.
                        while s.conn.is_handshaking() {
                            s.conn
                                .complete_io(&mut s.sock)
                                .map_err(|e| format!("TLS with {addr}: {e}"))?;
                        }
                        Ok(Link::Tls(Box::new(s)))
                    }
                    (Transport::Tls, None) => Err("TLS: no client configuration".into()),
                };
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

/// The TLS client configuration: the CAs of `ca_file`, else Mozilla's roots.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(super::ca_certificates(path)?);
            if added == 0 {
                return Err(format!("{}: no usable certificate", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The shipper's thread.
pub struct Shipper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").finish_non_exhaustive()
    }
}

/// The shipper's state between rounds.
struct Run {
    ship: Ship,
    store: Store,
    framer: Framer,
    /// The messages of a round, reused.
    out: Vec<u8>,
    /// The recorder's rows as it stores them, and those taken but not yet sent.
    rx: std::sync::mpsc::Receiver<super::Handed>,
    handed: std::collections::VecDeque<super::Handed>,
    state_dir: PathBuf,
    stats: Arc<PipelineStats>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The last row confirmed shipped.
    confirmed: i64,
    /// The last row written on this connection.
    written: i64,
    /// Rows written and not yet confirmed: (last id, bytes handed to TCP after it, when,
    /// rows).
    in_flight: std::collections::VecDeque<(i64, u64, Instant, u64)>,
    link: Option<Link>,
    backoff: Backoff,
    retry_at: Instant,
    last_count: Option<Instant>,
}

impl Shipper {
    /// Starts shipping the history in `state_dir` to `ship`'s receiver, from the persisted
    /// cursor.
    pub fn start(ship: &Ship, state_dir: &Path, stats: Arc<PipelineStats>) -> anyhow::Result<Self> {
        let store = Store::open(state_dir)?;
        let origin = Origin::of_host(store.instance()?);
        let tls = match ship.transport {
            Transport::Tls => Some(
                tls_config(ship.ca_file.as_deref())
                    .map_err(|e| anyhow::anyhow!("history.ship: {e}"))?,
            ),
            Transport::Tcp => None,
        };
        let saved: Cursor = std::fs::read_to_string(cursor_path(state_dir))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let confirmed = if saved.instance == origin.instance {
            saved.last_id
        } else {
            0
        };
        stats.destination(&ship.url);
        stats
            .only_blocked
            .store(ship.only_blocked, Ordering::Relaxed);
        stats.cursor.store(confirmed, Ordering::Relaxed);
        let mut run = Run {
            ship: ship.clone(),
            store,
            framer: Framer::new(origin),
            out: Vec::with_capacity(BATCH as usize * 320),
            rx: stats.listen(),
            handed: Default::default(),
            state_dir: state_dir.to_path_buf(),
            stats,
            tls,
            confirmed,
            written: confirmed,
            in_flight: Default::default(),
            link: None,
            backoff: BACKOFF,
            retry_at: Instant::now(),
            last_count: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("syslog".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    if !run.round() {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                run.stats.unlisten();
                run.confirm();
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Run {
    /// One round: connect if needed, confirm what the receiver has, write the next rows.
    /// Returns whether there may be more to do at once.
    fn round(&mut self) -> bool {
        self.count_backlog();
        if self.link.is_none() {
            if Instant::now() < self.retry_at {
                return false;
            }
            match connect(&self.ship, self.tls.as_ref()) {
                Ok(l) => {
                    tracing::debug!(destination = %self.ship.url, from = self.confirmed, "syslog: connected");
                    self.link = Some(l);
                    // Whatever was not confirmed goes again.
                    self.written = self.confirmed;
                    self.in_flight.clear();
                }
                Err(e) => {
                    self.fail(&e);
                    return false;
                }
            }
        }
        if !self.confirm() {
            return false;
        }
        let (last, n) = match self.next_messages() {
            Ok(Some(next)) => next,
            Ok(None) => return false,
            Err(e) => {
                self.stats.error(&format!("reading the history: {e:#}"));
                return false;
            }
        };
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        match link.write_all(&self.out) {
            Ok(()) => {
                self.written = last;
                let end = link.counted().written;
                self.in_flight
                    .push_back((last, end, Instant::now(), n as u64));
                true
            }
            Err(e) => {
                self.fail(&format!("writing: {e}"));
                false
            }
        }
    }

    /// The messages of the rows after `written` into `out`: from the recorder's handoff when it
    /// holds the very next rows, else read from the history. Returns the last row id looked
    /// at and the messages made, or `None` if there is nothing new.
    fn next_messages(&mut self) -> anyhow::Result<Option<(i64, usize)>> {
        self.out.clear();
        while let Ok(b) = self.rx.try_recv() {
            self.handed.push_back(b);
        }
        // What was sent (read from the history before it was handed) goes.
        while self
            .handed
            .front()
            .is_some_and(|(first, rows)| first + rows.len() as i64 - 1 <= self.written)
        {
            self.handed.pop_front();
        }
        let (framer, out) = (&mut self.framer, &mut self.out);
        if let Some((first, rows)) = self.handed.front()
            && *first <= self.written + 1
        {
            let mut n = 0;
            let skip = (self.written + 1 - first) as usize;
            for (i, row) in rows.iter().enumerate().skip(skip) {
                if self.ship.only_blocked && row.action == "allow" {
                    continue;
                }
                framer.frame_into(out, first + i as i64, &row.borrowed());
                n += 1;
            }
            let last = first + rows.len() as i64 - 1;
            self.handed.pop_front();
            return Ok(Some((last, n)));
        }
        let mut last = self.written;
        let n = self
            .store
            .each_after(self.written, self.ship.only_blocked, BATCH, |id, row| {
                framer.frame_into(out, id, row);
                last = id;
            })?;
        Ok((n > 0).then_some((last, n)))
    }

    /// Moves the cursor over what the receiver has had; false if the connection is gone.
    fn confirm(&mut self) -> bool {
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        if !link.alive() {
            self.fail("the receiver closed the connection");
            return false;
        }
        let acked = link.acknowledged();
        let mut moved = None;
        while let Some(&(id, end, at, n)) = self.in_flight.front() {
            if end > acked || at.elapsed() < SETTLE {
                break;
            }
            moved = Some(id);
            self.stats.sent.fetch_add(n, Ordering::Relaxed);
            // The backlog, less what was just confirmed, until it is counted again (a count
            // per confirmation would read the whole backlog once per batch as it drains).
            self.stats
                .set_pending(self.stats.pending().saturating_sub(n));
            self.in_flight.pop_front();
        }
        if let Some(id) = moved {
            self.confirmed = id;
            self.stats.cursor.store(id, Ordering::Relaxed);
            self.backoff.succeeded();
            self.stats.succeeded();
            self.save();
        }
        true
    }

    fn save(&self) {
        let c = Cursor {
            instance: self.framer.origin.instance.clone(),
            last_id: self.confirmed,
        };
        let path = cursor_path(&self.state_dir);
        let result = serde_json::to_vec(&c)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::config::remote::write_whole(&path, &b));
        if let Err(e) = result {
            self.stats
                .error(&format!("saving the cursor {}: {e}", path.display()));
        }
    }

    /// Drops the connection and backs off.
    fn fail(&mut self, why: &str) {
        self.link = None;
        let wait = self.backoff.failed(None);
        self.retry_at = Instant::now() + wait;
        self.stats.failed(self.backoff.failures());
        self.stats.error(why);
    }

    /// The backlog, every few seconds.
    fn count_backlog(&mut self) {
        if self
            .last_count
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        self.last_count = Some(Instant::now());
        if let Ok(n) = self
            .store
            .count_after(self.confirmed, self.ship.only_blocked)
        {
            self.stats.set_pending(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::history::Row;

    /// Row `id` framed alone.
    fn frame(origin: &Origin, id: i64, row: &Row) -> Vec<u8> {
        let mut out = Vec::new();
        Framer::new(origin.clone()).frame_into(&mut out, id, &row.borrowed());
        out
    }

    fn row(action: &str, category: Option<&str>) -> Row {
        Row {
            time_ms: 1_764_870_000_123,
            device: "pseudo\"nym]".into(),
            policy: "students".into(),
            protocol: "dns".into(),
            name: "ads.example".into(),
            qtype: 1,
            action: action.into(),
            reason: "category".into(),
            category: category.map(str::to_string),
        }
    }

    #[test]
    fn a_row_is_one_octet_counted_rfc5424_message() {
        let origin = Origin {
            hostname: "bus-17".into(),
            instance: "0123abcd".into(),
        };
        let f = frame(&origin, 42, &row("block", Some("ads")));
        let text = String::from_utf8(f.clone()).expect("utf-8");
        let (len, msg) = text.split_once(' ').expect("count");
        assert_eq!(len.parse::<usize>().expect("number"), msg.len());
        assert_eq!(
            msg,
            "<133>1 2025-12-04T17:40:00.123Z bus-17 gateway - decision [decision@32473 id=\"0123abcd-42\" device=\"pseudo\\\"nym\\]\" policy=\"students\" protocol=\"dns\" name=\"ads.example\" qtype=\"1\" action=\"block\" reason=\"category\" category=\"ads\"] block dns ads.example"
        );
        // The same row gives the same bytes; an allowed one is informational, no category.
        assert_eq!(f, frame(&origin, 42, &row("block", Some("ads"))));
        let allowed = String::from_utf8(frame(&origin, 43, &row("allow", None))).expect("utf-8");
        assert!(allowed.contains(" <134>1 "), "{allowed}");
        assert!(!allowed.contains("category="), "{allowed}");
    }
}
