//! Plain HTTP: the host a request is for, read from the start of a TCP segment.
//!
//! A request head is read a byte at a time by a small state machine (`HostScan`), at most
//! `CHUNK` bytes per `step`, so the kernel runs it from a `bpf_loop` callback checked once. It
//! reads the request line (method, target, version) and the header lines up to the empty line,
//! and emits the host as the ClientHello walk emits the server name: lower-case text and the
//! DNS walk's label hashes, so the same suffix lookups decide it (SPEC §5).
//!
//! Which host: a request line with an absolute URI (`GET http://h/ HTTP/1.1`, proxy style) or an
//! authority (`CONNECT h:443 HTTP/1.1`) is for that host, whatever `Host` says (RFC 9112
//! §3.2.2); otherwise the `Host` header. Ports and a trailing dot are left out, userinfo
//! (`user@h`) is skipped. Ambiguous heads are `Unparsed` (the policy's `on_unparsed_http`
//! decides): two `Host` lines, a folded one, whitespace before its colon, a character no host
//! name has. A head without a host name (no `Host`, an empty one, an address literal) is
//! `NoHost`. The head must start in the segment and its host must be in it: a head that the
//! segment's end cuts before the host is `Unparsed` — unless the request line was no request
//! (not `METHOD SP target SP HTTP/`), which is `NotHttp`, judged by nothing.
//!
//! Empty lines before the request line are skipped, as servers skip them (RFC 9112 §2.2): a
//! request behind a CRLF is a request.
//!
//! Several requests in one segment (pipelining): the head's end and its `Content-Length` say
//! where the next request starts (`HostScan::next`), and the kernel judges that one too.

use crate::domain::{MAX_LABEL, MAX_NAME, host_char, label_end, label_push, label_start};
use crate::tls::HelloSink;

/// Bytes of a segment a request head is looked for in (the kernel copies at most this many).
pub const MAX_HEAD: usize = 2048;
/// Most bytes one step reads.
pub const CHUNK: u32 = 16;
/// Steps enough for `MAX_HEAD` bytes.
pub const MAX_STEPS: u32 = MAX_HEAD as u32 / CHUNK + 2;
/// Longest method token read.
const MAX_METHOD: u8 = 16;

/// What a step ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    /// Keep stepping.
    More,
    /// The host was read: its text and label hashes were emitted (`name_len`, `labels`).
    Host,
    /// A request head without a host name.
    NoHost,
    /// A request whose host could not be read (malformed, ambiguous, cut short).
    Unparsed,
    /// The segment does not start with a request.
    NotHttp,
}

/// States of the scan.
mod state {
    pub const METHOD: u8 = 0;
    pub const TARGET_START: u8 = 1;
    pub const SCHEME: u8 = 2;
    pub const HOST: u8 = 3;
    pub const PORT: u8 = 4;
    pub const TARGET: u8 = 5;
    pub const VERSION: u8 = 6;
    pub const REQUEST_EOL: u8 = 7;
    pub const LINE: u8 = 8;
    pub const NAME: u8 = 9;
    pub const SKIP: u8 = 10;
    pub const OWS: u8 = 11;
    pub const HOST_END: u8 = 12;
    pub const LENGTH: u8 = 13;
    pub const LITERAL: u8 = 14;
    pub const END_LF: u8 = 15;
}

/// `HostScan::flags`.
mod flag {
    /// The method read so far is a prefix of `CONNECT`.
    pub const CONNECT: u16 = 1;
    /// The method is one of RFC 9110's (a cut request line is still a request).
    pub const KNOWN_METHOD: u16 = 1 << 1;
    /// The request line named the host (absolute URI, authority): `Host` lines are ignored.
    pub const FROM_LINE: u16 = 1 << 2;
    /// A host name was read whole.
    pub const HAVE_HOST: u16 = 1 << 3;
    /// The host read is an address literal (no name to judge).
    pub const LITERAL: u16 = 1 << 4;
    /// The line being read is a `Host` line (a fold after it is ambiguous).
    pub const IN_HOST_LINE: u16 = 1 << 5;
    /// A `Host` line was seen.
    pub const HOST_LINE: u16 = 1 << 6;
    /// The body's length is not known (`Transfer-Encoding`, a bad `Content-Length`).
    pub const UNKNOWN_BODY: u16 = 1 << 7;
    /// The request line ended with a version (`HTTP/`).
    pub const VERSION_OK: u16 = 1 << 8;
    /// A '.' ended the last label; it is written if another label follows.
    pub const DOT: u16 = 1 << 9;
    /// Every character of the host so far is a digit or a dot.
    pub const DIGITS: u16 = 1 << 10;
    /// What followed a URI's host and a colon was no port: userinfo, if an `@` follows.
    pub const USERINFO: u16 = 1 << 11;
}

/// The header names the scan looks for, by their first letter.
const HOST: &[u8] = b"host";
const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
/// `HostScan::which`.
const W_HOST: u8 = 1;
const W_LENGTH: u8 = 2;
const W_TE: u8 = 3;
/// The scheme of an absolute URI (after its `h`), `s` optional before the colon.
const SCHEME: &[u8] = b"ttp://";

/// The scan's state (kept in the kernel's scratch memory for the `bpf_loop` callback).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostScan {
    label_hash: u64,
    label_acc: u64,
    /// The method's first bytes (little-endian), for recognising it.
    method: u64,
    /// `Content-Length`, as read.
    length: u32,
    /// Where the head ended (the offset after its empty line), once it did.
    pub head_end: u32,
    /// Host name text written so far.
    pub name_len: u16,
    flags: u16,
    /// Labels of the host name completed.
    pub labels: u8,
    label_len: u8,
    state: u8,
    /// Bytes matched of the token being compared, or the method's length.
    k: u8,
    /// The header being matched or read (`W_*`, 0: another).
    which: u8,
    _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<HostScan>() == 48);

impl Default for HostScan {
    fn default() -> Self {
        Self::new()
    }
}

/// Methods of RFC 9110 §9 (and PATCH, RFC 5789), as `HostScan::method` packs them.
const KNOWN_METHODS: [u64; 9] = [
    pack(b"GET"),
    pack(b"HEAD"),
    pack(b"POST"),
    pack(b"PUT"),
    pack(b"DELETE"),
    pack(b"CONNECT"),
    pack(b"OPTIONS"),
    pack(b"TRACE"),
    pack(b"PATCH"),
];

const fn pack(m: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < m.len() {
        v |= (m[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

/// Whether `b` is `c` (a lower-case letter in either case, anything else exactly).
#[inline(always)]
const fn same(b: u8, c: u8) -> bool {
    if c.wrapping_sub(b'a') < 26 {
        b | 0x20 == c
    } else {
        b == c
    }
}

#[inline(always)]
const fn is_digit(b: u8) -> bool {
    b.wrapping_sub(b'0') < 10
}

impl HostScan {
    /// A scan at the start of a request.
    pub const fn new() -> Self {
        Self {
            label_hash: 0,
            label_acc: 0,
            method: 0,
            length: 0,
            head_end: 0,
            name_len: 0,
            flags: flag::CONNECT,
            labels: 0,
            label_len: 0,
            state: state::METHOD,
            k: 0,
            which: 0,
            _pad: [0; 7],
        }
    }

    /// Where the next request of the segment starts, once the head was read whole and its body
    /// length is known: `Some(offset)` (it may lie past the segment).
    pub const fn next(&self) -> Option<u32> {
        if self.head_end == 0 || self.flags & flag::UNKNOWN_BODY != 0 {
            return None;
        }
        Some(self.head_end.saturating_add(self.length))
    }

    /// Reads up to `CHUNK` bytes from `pos` (`read(i)`: byte `i` of the segment, `None` past its
    /// end; `end`: the segment's length).
    #[inline(always)]
    pub fn step<S: HelloSink>(
        &mut self,
        seed: u64,
        read: impl Fn(usize) -> Option<u8>,
        pos: &mut usize,
        end: usize,
        sink: &mut S,
    ) -> Http {
        let mut i = 0u32;
        while i < CHUNK {
            if *pos >= end {
                return self.cut();
            }
            let Some(b) = read(*pos) else {
                return self.cut();
            };
            *pos += 1;
            let r = self.byte(seed, b, *pos, sink);
            if r != Http::More {
                return r;
            }
            i += 1;
        }
        Http::More
    }

    /// The segment ended before the head did.
    #[inline(always)]
    fn cut(&self) -> Http {
        if self.flags & flag::HAVE_HOST != 0 && self.state != state::HOST {
            return self.found();
        }
        if self.flags & (flag::VERSION_OK | flag::KNOWN_METHOD) != 0 {
            Http::Unparsed
        } else {
            Http::NotHttp
        }
    }

    /// What a head with its host read says.
    #[inline(always)]
    const fn found(&self) -> Http {
        if self.flags & flag::LITERAL != 0 {
            Http::NoHost
        } else {
            Http::Host
        }
    }

    /// One byte; `at` is the offset after it.
    #[inline(always)]
    fn byte<S: HelloSink>(&mut self, seed: u64, b: u8, at: usize, sink: &mut S) -> Http {
        // Most bytes of a head are in lines the scan passes over: tested first (the kernel's
        // BPF has no jump tables, so the `match` below is a chain of compares).
        if self.state == state::SKIP {
            if b == b'\n' {
                self.state = state::LINE;
            }
            return Http::More;
        }
        match self.state {
            state::METHOD => self.method_byte(b),
            state::TARGET_START => {
                if self.flags & flag::CONNECT != 0 && self.k == 7 {
                    // `CONNECT host:port`: the authority is the host.
                    self.flags |= flag::FROM_LINE;
                    self.begin_host(seed);
                    return self.host_byte(seed, b, sink);
                }
                self.state = if b | 0x20 == b'h' {
                    self.k = 0;
                    state::SCHEME
                } else {
                    state::TARGET
                };
                self.target_byte(b)
            }
            state::SCHEME => {
                let k = self.k as usize;
                if k == 3 && b | 0x20 == b's' && self.which == 0 {
                    // `https://`: the same host rules.
                    self.which = 1;
                    return Http::More;
                }
                match SCHEME.get(k) {
                    Some(&c) if same(b, c) => {
                        self.k += 1;
                        if self.k as usize == SCHEME.len() {
                            self.which = 0;
                            self.flags |= flag::FROM_LINE;
                            self.begin_host(seed);
                        }
                        Http::More
                    }
                    _ => {
                        self.which = 0;
                        self.state = state::TARGET;
                        self.target_byte(b)
                    }
                }
            }
            state::HOST => self.host_byte(seed, b, sink),
            state::LITERAL => {
                if b == b']' {
                    self.state = state::HOST_END;
                    self.flags |= flag::HAVE_HOST | flag::LITERAL;
                }
                if b == b'\r' || b == b'\n' || b == b' ' {
                    return Http::Unparsed;
                }
                Http::More
            }
            state::PORT | state::HOST_END => self.after_host(seed, b),
            state::TARGET => self.target_byte(b),
            state::VERSION => {
                let k = self.k as usize;
                match b"HTTP/".get(k) {
                    Some(&c) if b == c => {
                        self.k += 1;
                        if self.k == 5 {
                            self.flags |= flag::VERSION_OK;
                            self.state = state::REQUEST_EOL;
                        }
                        Http::More
                    }
                    _ => Http::NotHttp,
                }
            }
            state::REQUEST_EOL => {
                if b == b'\n' {
                    self.state = state::LINE;
                }
                Http::More
            }
            state::LINE => self.line_start(b, at),
            state::END_LF => {
                if b != b'\n' {
                    return Http::Unparsed;
                }
                self.end_of_head(at)
            }
            state::NAME => self.name_byte(b),
            state::OWS => {
                if b == b' ' || b == b'\t' {
                    return Http::More;
                }
                if self.which == W_HOST {
                    if b == b'\r' || b == b'\n' {
                        // `Host:` and nothing: no name (HTTP/1.1 servers answer 400).
                        return self.line_end(b);
                    }
                    self.begin_host(seed);
                    return self.host_byte(seed, b, sink);
                }
                self.state = state::LENGTH;
                self.length_byte(b)
            }
            state::LENGTH => self.length_byte(b),
            _ => Http::Unparsed,
        }
    }

    #[inline(always)]
    fn method_byte(&mut self, b: u8) -> Http {
        if self.k == 0 && (b == b'\r' || b == b'\n') {
            // Empty lines before the request line, which servers skip (RFC 9112 §2.2).
            return Http::More;
        }
        if b == b' ' && self.k > 0 {
            if KNOWN_METHODS.contains(&self.method) && self.k <= 7 {
                self.flags |= flag::KNOWN_METHOD;
            }
            self.state = state::TARGET_START;
            return Http::More;
        }
        // Methods are tokens; every one in use is upper-case letters.
        if b.wrapping_sub(b'A') >= 26 || self.k >= MAX_METHOD {
            return Http::NotHttp;
        }
        if b"CONNECT".get(self.k as usize) != Some(&b) {
            self.flags &= !flag::CONNECT;
        }
        if self.k < 8 {
            self.method |= u64::from(b) << (8 * self.k);
        }
        self.k += 1;
        Http::More
    }

    /// A byte of an origin-form target (or what follows an absolute URI's host).
    #[inline(always)]
    fn target_byte(&mut self, b: u8) -> Http {
        match b {
            b' ' => {
                self.state = state::VERSION;
                self.k = 0;
                Http::More
            }
            b'\r' | b'\n' => Http::NotHttp,
            _ => Http::More,
        }
    }

    #[inline(always)]
    fn begin_host(&mut self, seed: u64) {
        self.state = state::HOST;
        self.name_len = 0;
        self.labels = 0;
        self.label_len = 0;
        self.label_hash = label_start(seed);
        self.label_acc = 0;
        self.flags = (self.flags & !(flag::DOT | flag::LITERAL)) | flag::DIGITS;
    }

    /// A byte of a host name (in the request line or a `Host` line).
    #[inline(always)]
    fn host_byte<S: HelloSink>(&mut self, seed: u64, b: u8, sink: &mut S) -> Http {
        if b == b'.' {
            if self.label_len == 0 {
                return Http::Unparsed;
            }
            self.end_label(sink);
            self.flags |= flag::DOT;
            return Http::More;
        }
        if let Some(c) = host_char(b) {
            if self.flags & flag::DOT != 0 {
                if self.name_len as usize >= MAX_NAME {
                    return Http::Unparsed;
                }
                sink.text(usize::from(self.name_len), b'.');
                self.name_len += 1;
                self.flags &= !flag::DOT;
            }
            if self.label_len as usize >= MAX_LABEL || self.name_len as usize >= MAX_NAME {
                return Http::Unparsed;
            }
            if !is_digit(c) {
                self.flags &= !flag::DIGITS;
            }
            if self.label_len == 0 {
                self.label_hash = label_start(seed);
                self.label_acc = 0;
            }
            sink.text(usize::from(self.name_len), c);
            self.name_len += 1;
            (self.label_hash, self.label_acc) = label_push(
                self.label_hash,
                self.label_acc,
                usize::from(self.label_len),
                c,
            );
            self.label_len += 1;
            return Http::More;
        }
        let from_line = self.flags & flag::FROM_LINE != 0 && self.which != W_HOST;
        match b {
            b'[' if self.name_len == 0 && self.label_len == 0 => {
                self.state = state::LITERAL;
                Http::More
            }
            b'@' if from_line => {
                // Userinfo: the host follows.
                self.flags &= !flag::HAVE_HOST;
                self.begin_host(seed);
                Http::More
            }
            b':' => self.host_done(state::PORT, sink),
            b' ' if from_line => {
                self.k = 0;
                self.host_done(state::VERSION, sink)
            }
            b' ' | b'\t' if !from_line => self.host_done(state::HOST_END, sink),
            b'/' | b'?' | b'#' if from_line => self.host_done(state::TARGET, sink),
            b'\r' | b'\n' if !from_line => {
                let r = self.host_done(state::HOST_END, sink);
                if r != Http::More {
                    return r;
                }
                self.line_end(b)
            }
            _ => Http::Unparsed,
        }
    }

    #[inline(always)]
    fn end_label<S: HelloSink>(&mut self, sink: &mut S) {
        sink.label(
            usize::from(self.labels),
            label_end(self.label_hash, self.label_acc, usize::from(self.label_len)),
        );
        self.labels = self.labels.wrapping_add(1);
        self.label_len = 0;
    }

    /// The host name ended; the scan goes on in `next`.
    #[inline(always)]
    fn host_done<S: HelloSink>(&mut self, next: u8, sink: &mut S) -> Http {
        if self.label_len > 0 {
            self.end_label(sink);
        }
        if self.labels == 0 {
            return Http::Unparsed;
        }
        self.flags |= flag::HAVE_HOST;
        if self.flags & flag::DIGITS != 0 {
            self.flags |= flag::LITERAL;
        }
        self.state = next;
        Http::More
    }

    /// After the host: its port, or whitespace; then the rest of the line.
    #[inline(always)]
    fn after_host(&mut self, seed: u64, b: u8) -> Http {
        if b == b':' && self.state == state::HOST_END && self.flags & flag::LITERAL != 0 {
            // `[v6 literal]:port`.
            self.state = state::PORT;
            return Http::More;
        }
        let from_line = self.flags & flag::FROM_LINE != 0 && self.which != W_HOST;
        if from_line {
            // A port, then the path (or, for CONNECT, the version); or what was read was
            // userinfo (`user:password@host`).
            let userinfo = self.flags & flag::USERINFO != 0;
            return match b {
                b'@' if self.state == state::PORT => {
                    self.flags &= !(flag::USERINFO | flag::HAVE_HOST);
                    self.begin_host(seed);
                    Http::More
                }
                b' ' if !userinfo => {
                    self.state = state::VERSION;
                    self.k = 0;
                    Http::More
                }
                b'/' | b'?' | b'#' if !userinfo => {
                    self.state = state::TARGET;
                    Http::More
                }
                _ if is_digit(b) && self.state == state::PORT => Http::More,
                b'\r' | b'\n' | b' ' | b'/' | b'?' | b'#' => Http::Unparsed,
                _ if self.state == state::PORT => {
                    self.flags |= flag::USERINFO;
                    Http::More
                }
                _ => Http::Unparsed,
            };
        }
        match b {
            b'\r' | b'\n' => self.line_end(b),
            b' ' | b'\t' => {
                self.state = state::HOST_END;
                Http::More
            }
            _ if is_digit(b) && self.state == state::PORT => Http::More,
            _ => Http::Unparsed,
        }
    }

    /// The end of a header line (at its CR or LF).
    #[inline(always)]
    fn line_end(&mut self, b: u8) -> Http {
        self.state = if b == b'\r' { state::SKIP } else { state::LINE };
        Http::More
    }

    /// The first byte of a header line, or of the empty line that ends the head.
    #[inline(always)]
    fn line_start(&mut self, b: u8, at: usize) -> Http {
        let folded_host = self.flags & flag::IN_HOST_LINE != 0;
        self.flags &= !flag::IN_HOST_LINE;
        self.which = 0;
        self.k = 1;
        match b {
            b'\r' => {
                self.state = state::END_LF;
                Http::More
            }
            b'\n' => self.end_of_head(at),
            b' ' | b'\t' => {
                // obs-fold (RFC 9112 §5.2): a continued `Host` is ambiguous.
                if folded_host {
                    return Http::Unparsed;
                }
                self.state = state::SKIP;
                Http::More
            }
            _ => {
                self.which = match b | 0x20 {
                    b'h' => W_HOST,
                    b'c' => W_LENGTH,
                    b't' => W_TE,
                    _ => 0,
                };
                self.state = if self.which == 0 {
                    state::SKIP
                } else {
                    state::NAME
                };
                Http::More
            }
        }
    }

    /// A byte of a header name that may be one the scan looks for.
    #[inline(always)]
    fn name_byte(&mut self, b: u8) -> Http {
        let want = match self.which {
            W_HOST => HOST,
            W_LENGTH => CONTENT_LENGTH,
            _ => TRANSFER_ENCODING,
        };
        let k = self.k as usize;
        if k == want.len() {
            if b == b':' {
                return self.header_value();
            }
            if self.which == W_HOST && (b == b' ' || b == b'\t') {
                // `Host :` (RFC 9112 §5.1: rejected by servers, read by some).
                return Http::Unparsed;
            }
        }
        match want.get(k) {
            Some(&c) if same(b, c) => {
                self.k += 1;
                Http::More
            }
            _ => {
                self.state = if b == b'\n' { state::LINE } else { state::SKIP };
                Http::More
            }
        }
    }

    /// After the colon of a header the scan looks for.
    #[inline(always)]
    fn header_value(&mut self) -> Http {
        match self.which {
            W_HOST => {
                if self.flags & flag::FROM_LINE != 0 {
                    // The request line named the host: `Host` does not count.
                    self.state = state::SKIP;
                    return Http::More;
                }
                if self.flags & flag::HOST_LINE != 0 {
                    return Http::Unparsed;
                }
                self.flags |= flag::HOST_LINE | flag::IN_HOST_LINE;
                self.state = state::OWS;
            }
            W_LENGTH => {
                if self.length != 0 {
                    // A second Content-Length: which one the server takes is not known.
                    self.flags |= flag::UNKNOWN_BODY;
                }
                self.length = 0;
                self.state = state::OWS;
            }
            _ => {
                self.flags |= flag::UNKNOWN_BODY;
                self.state = state::SKIP;
            }
        }
        Http::More
    }

    #[inline(always)]
    fn length_byte(&mut self, b: u8) -> Http {
        if is_digit(b) {
            let v = u64::from(self.length) * 10 + u64::from(b - b'0');
            if v > u64::from(u32::MAX / 2) {
                self.flags |= flag::UNKNOWN_BODY;
            } else {
                self.length = v as u32;
            }
            return Http::More;
        }
        match b {
            b'\r' | b'\n' => self.line_end(b),
            b' ' | b'\t' => Http::More,
            _ => {
                self.flags |= flag::UNKNOWN_BODY;
                self.state = state::SKIP;
                Http::More
            }
        }
    }

    /// The empty line: the head is whole.
    #[inline(always)]
    fn end_of_head(&mut self, at: usize) -> Http {
        self.head_end = at as u32;
        if self.flags & flag::VERSION_OK == 0 {
            return Http::NotHttp;
        }
        if self.flags & flag::HAVE_HOST != 0 {
            self.found()
        } else {
            Http::NoHost
        }
    }
}

/// The host's loop over `HostScan::step` for one segment's payload from `start`; returns the
/// outcome and the scan (its `next`, `name_len`). The kernel runs the same steps from a
/// `bpf_loop` callback.
pub fn scan_request(
    seed: u64,
    payload: &[u8],
    start: usize,
    sink: &mut crate::tls::NameBuf,
) -> (Http, HostScan) {
    let mut scan = HostScan::new();
    let mut pos = start;
    let end = payload.len().min(start.saturating_add(MAX_HEAD));
    for _ in 0..MAX_STEPS {
        let r = scan.step(seed, |i| payload.get(i).copied(), &mut pos, end, sink);
        if r != Http::More {
            return (r, scan);
        }
    }
    (Http::Unparsed, scan)
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
