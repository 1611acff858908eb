//! Keeps the SafeSearch enforcement names' addresses current in the kernel: a thread resolves
//! each target the configuration uses (A and AAAA, through `[safe_search] resolver` or the
//! system's), writes what it learnt into `SAFE_TARGETS`, and resolves it again before its TTL
//! runs out. Until a name's addresses are known the kernel passes its queries; an answer that
//! fails keeps the addresses in force and is retried with a backoff.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

use crate::{
    config::Config,
    kernel::safe_search::{Resolved, SafeTargets},
};

/// The longest and shortest time between two resolutions of a name that answered.
const MAX_REFRESH: Duration = Duration::from_secs(3600);
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The TTL the kernel's answers carry at most (a name resolved with a longer TTL is still
/// refreshed by `MAX_REFRESH`).
const MAX_TTL: u32 = 3600;
/// How long one query waits for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff after a failed resolution: doubled from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(30);
/// Largest answer read (UDP, no EDNS: 512 bytes; room for resolvers that send more).
const MAX_ANSWER: usize = 4096;

/// What the thread resolves, and through which server (`None`: the system's).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Wanted {
    targets: BTreeSet<String>,
    server: Option<SocketAddr>,
}

/// The resolver thread.
pub struct Resolver {
    wanted: Arc<Mutex<Wanted>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Starts resolving for `config` into `targets`.
    pub fn start(config: &Config, targets: SafeTargets) -> anyhow::Result<Self> {
        let wanted = Arc::new(Mutex::new(wanted_of(config)));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::Builder::new()
            .name("safe-search".into())
            .spawn({
                let (wanted, stop) = (wanted.clone(), stop.clone());
                move || run(&wanted, &stop, &targets)
            })
            .context("starting the SafeSearch resolver")?;
        Ok(Self {
            wanted,
            stop,
            handle: Some(handle),
        })
    }

    /// A configuration was applied: resolve what it uses.
    pub fn follow(&self, config: &Config) {
        *self.wanted.lock().unwrap_or_else(|e| e.into_inner()) = wanted_of(config);
    }

    /// Stops the thread (the addresses in the kernel stay as they are).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The targets some policy of `config` uses.
fn wanted_of(config: &Config) -> Wanted {
    let engines = &config.safe_search.engines;
    Wanted {
        targets: config
            .policies
            .iter()
            .flat_map(|p| p.safe_search.iter())
            .filter_map(|&e| engines.get(e).map(|e| e.target.clone()))
            .collect(),
        server: config.safe_search.resolver,
    }
}

/// When each target is resolved next, and how long its retries wait.
struct Schedule {
    due: Instant,
    retry: Duration,
    failing: bool,
}

fn run(wanted: &Mutex<Wanted>, stop: &AtomicBool, targets: &SafeTargets) {
    let mut schedule: BTreeMap<String, Schedule> = BTreeMap::new();
    let mut server_used: Option<Option<SocketAddr>> = None;
    while !stop.load(Ordering::Relaxed) {
        let w = wanted.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if server_used != Some(w.server) {
            // Another resolver: everything again, now.
            schedule.clear();
            server_used = Some(w.server);
        }
        schedule.retain(|name, _| w.targets.contains(name));
        let now = Instant::now();
        for t in &w.targets {
            schedule.entry(t.clone()).or_insert(Schedule {
                due: now,
                retry: RETRY_FIRST,
                failing: false,
            });
        }
        // The system's resolver is read once per round, and only when something is due.
        let mut round_server = None;
        for (name, s) in schedule.iter_mut() {
            if s.due > Instant::now() || stop.load(Ordering::Relaxed) {
                continue;
            }
            let server =
                *round_server.get_or_insert_with(|| w.server.unwrap_or_else(system_resolver));
            match resolve(server, name) {
                Ok(r) => {
                    let ttl = r.ttl;
                    let changed = targets.resolved(name, r.clone());
                    if s.failing || changed > 0 {
                        tracing::info!(target = %name, %server, ttl, v4 = ?r.v4, v6 = ?r.v6, "SafeSearch enforcement name resolved");
                    }
                    s.failing = false;
                    s.retry = RETRY_FIRST;
                    // Again before the TTL ends: at three quarters of it.
                    let refresh = Duration::from_millis(u64::from(ttl) * 750);
                    s.due = Instant::now() + refresh.clamp(MIN_REFRESH, MAX_REFRESH);
                }
                Err(e) => {
                    if !s.failing {
                        tracing::warn!(target = %name, %server, error = %format!("{e:#}"), "cannot resolve a SafeSearch enforcement name: its queries keep the addresses in force (or pass to the resolver until one is known); retrying");
                    }
                    s.failing = true;
                    s.due = Instant::now() + s.retry;
                    s.retry = (s.retry * 2).min(RETRY_LAST);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first `nameserver` of `/etc/resolv.conf` (port 53), else 127.0.0.1:53.
fn system_resolver() -> SocketAddr {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .unwrap_or_else(|| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53))
}

/// Resolves `name`'s A and AAAA records through `server`, each family on its own: one that
/// fails (a timeout, SERVFAIL, REFUSED, a malformed answer) is left unknown (`None`: the
/// addresses in force stay), one the name has no address of is known as empty. Fails only if
/// both do.
pub fn resolve(server: SocketAddr, name: &str) -> anyhow::Result<Resolved> {
    let a = query(server, name, RecordType::A);
    let aaaa = query(server, name, RecordType::AAAA);
    if let (Err(e), Err(_)) = (&a, &aaaa) {
        bail!("{e:#}");
    }
    if let Err(e) = a.as_ref().and(aaaa.as_ref()) {
        tracing::debug!(target = %name, error = %format!("{e:#}"), "one address family of a SafeSearch name did not resolve");
    }
    let ttl = [&a, &aaaa]
        .into_iter()
        .filter_map(|r| r.as_ref().ok().and_then(|(_, t)| *t))
        .min()
        .unwrap_or(60);
    let v4 = a.ok().map(|(ips, _)| {
        ips.into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect()
    });
    let v6 = aaaa.ok().map(|(ips, _)| {
        ips.into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .collect()
    });
    Ok(Resolved {
        v4,
        v6,
        ttl: ttl.clamp(1, MAX_TTL),
    })
}

/// One query; the addresses of the answer section (the resolver followed the CNAME chain) and
/// the smallest TTL of the records that led to them.
fn query(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
) -> anyhow::Result<(Vec<IpAddr>, Option<u32>)> {
    let id: u16 = rand_id();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let qname = Name::from_ascii(format!("{name}.")).context("the enforcement name")?;
    m.add_query(Query::query(qname.clone(), qtype));
    let bytes = m.to_vec().context("encoding the query")?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).context("a UDP socket")?;
    sock.connect(server)
        .with_context(|| format!("reaching {server}"))?;
    sock.set_read_timeout(Some(QUERY_TIMEOUT))?;
    sock.send(&bytes)
        .with_context(|| format!("sending to {server}"))?;
    let mut buf = vec![0u8; MAX_ANSWER];
    // Datagrams that are not the answer (a late one to an earlier query) are passed over.
    for _ in 0..4 {
        let n = sock
            .recv(&mut buf)
            .with_context(|| format!("no answer from {server} within {QUERY_TIMEOUT:?}"))?;
        let Ok(a) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if a.metadata.id != id
            || a.metadata.message_type != MessageType::Response
            || a.queries
                .first()
                .is_none_or(|q| q.name() != &qname || q.query_type() != qtype)
        {
            continue;
        }
        if a.metadata.truncation {
            bail!("{server} sent a truncated answer for {name} {qtype}");
        }
        return match a.metadata.response_code {
            ResponseCode::NoError => {
                let mut ttl: Option<u32> = None;
                let mut ips = Vec::new();
                for r in &a.answers {
                    let ip = match &r.data {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(a) => IpAddr::V6(a.0),
                        RData::CNAME(_) => {
                            ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                            continue;
                        }
                        _ => continue,
                    };
                    ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                    ips.push(ip);
                }
                Ok((ips, ttl))
            }
            // The name does not exist: no address of any family (answered so, not as blocked).
            ResponseCode::NXDomain => Ok((Vec::new(), None)),
            rcode => bail!("{server} answered {name} {qtype} with {rcode}"),
        };
    }
    bail!("no answer to the query from {server}")
}

/// A query id nobody off the path can guess cheaply.
fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: `b` is 2 writable bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n == 2 {
        u16::from_ne_bytes(b)
    } else {
        std::process::id() as u16
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u16)
    }
}
