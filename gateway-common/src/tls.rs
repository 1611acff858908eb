//! The TLS ClientHello walk: from the first byte of a TCP stream to the first `host_name` of its
//! `server_name` extension.
//!
//! The walk is resumable: its whole state is `HelloWalk` (48 bytes the kernel keeps per flow in an
//! LRU map), and it consumes the stream a segment at a time, in order. Each `step`
//! handles one field, or the part of it the segment holds: fixed fields are skipped in one go
//! (the random, cipher suites, other extensions), length fields are read a byte at a time as
//! they come, and the host name is read a label at a time with the DNS name's label hash. So a
//! 2,000-byte Chromium ClientHello takes a few dozen steps, wherever the segments split it —
//! inside a length field, inside the name, inside a record header.
//!
//! Bounds: every skip is bounded by the enclosing length (record, handshake, extensions); a
//! ClientHello longer than `MAX_HELLO` or spread over more than `MAX_RECORDS` records is given up
//! (`Hello::Unparsed`), and so is one whose host name is invalid (the policy's
//! `on_unparsed_tls` decides then).

use crate::domain::{
    MAX_LABEL, MAX_LEVELS, MAX_NAME, host_char, label_end, label_push, label_start,
};

/// Longest ClientHello walked (handshake bytes). Real ones are under 2 KiB; post-quantum key
/// shares and padding stay well under this.
pub const MAX_HELLO: u32 = 16 * 1024;
/// Most TLS records a ClientHello may be spread over.
pub const MAX_RECORDS: u8 = 8;

/// TLS record type of handshake messages.
pub const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake type of a ClientHello.
pub const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Extension type of server_name.
pub const EXT_SERVER_NAME: u16 = 0;

/// Record type of ChangeCipherSpec: a client answering a HelloRetryRequest may send one (the
/// TLS 1.3 middlebox-compatibility record) in front of its second ClientHello.
pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;

/// Whether a walk starts at a TCP payload whose first byte is `b`: a handshake record, or a
/// ChangeCipherSpec record in front of one. Anything else (application data, the middle of a
/// record) is not looked at; a walk that starts and turns out not to be a ClientHello ends as
/// `Hello::NotHello`, decided by nothing.
#[inline(always)]
pub const fn may_start_hello(b: u8) -> bool {
    b == CONTENT_HANDSHAKE || b == CONTENT_CHANGE_CIPHER_SPEC
}

/// Fields, in stream order.
mod field {
    pub const CCS: u8 = 0;
    pub const HS_TYPE: u8 = 1;
    pub const HS_LEN: u8 = 2;
    pub const VERSION_RANDOM: u8 = 3;
    pub const SID_LEN: u8 = 4;
    pub const SID: u8 = 5;
    pub const SUITES_LEN: u8 = 6;
    pub const SUITES: u8 = 7;
    pub const COMP_LEN: u8 = 8;
    pub const COMP: u8 = 9;
    pub const EXTS_LEN: u8 = 10;
    pub const EXT_TYPE: u8 = 11;
    pub const EXT_LEN: u8 = 12;
    pub const EXT_BODY: u8 = 13;
    pub const SNI_LIST_LEN: u8 = 14;
    pub const SNI_TYPE: u8 = 15;
    pub const SNI_LEN: u8 = 16;
    pub const SNI_NAME: u8 = 17;
}

/// What a step ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello {
    /// Keep stepping over this segment.
    More,
    /// The segment is used up; the walk continues in the next one.
    NeedMore,
    /// The host name was read: its text and label hashes were emitted (`name_len`, `labels`).
    Sni,
    /// A complete ClientHello without a server_name host name.
    NoSni,
    /// A ClientHello the walk gives up on (malformed, over a cap).
    Unparsed,
    /// Not a ClientHello: the stream did not start with a handshake record holding one.
    NotHello,
}

/// The walk's state: everything needed to resume it in the next segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloWalk {
    /// Hash of the label being read (its complete words).
    pub label_hash: u64,
    /// The label's word being filled (`domain::label_push`).
    pub label_acc: u64,
    /// Bytes left in the current TLS record.
    pub record_left: u32,
    /// Bytes left in the handshake message (once its header is read).
    pub hs_left: u32,
    /// Bytes left of the extensions block (once its length is read).
    pub exts_left: u32,
    /// Bytes left of the field being read or skipped.
    pub need: u32,
    /// The value of a length or type field, as read so far.
    pub acc: u32,
    /// Host name text written so far (with dots).
    pub name_len: u16,
    /// The length of the record being read, as read so far.
    pub record_acc: u16,
    /// Bytes left of a record header being read (0: inside a record).
    pub record_need: u8,
    /// Records started.
    pub records: u8,
    /// The field being read (`field::*`).
    pub field: u8,
    /// Bytes of the current label.
    pub label_len: u8,
    /// Labels of the host name completed.
    pub labels: u8,
    /// 1 while the record header being read is a ChangeCipherSpec's.
    pub ccs: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<HelloWalk>() == 48);

impl HelloWalk {
    /// A walk at the start of the stream.
    pub const fn new() -> Self {
        Self {
            label_hash: 0,
            label_acc: 0,
            record_left: 0,
            hs_left: 0,
            exts_left: 0,
            need: 1,
            acc: 0,
            name_len: 0,
            record_acc: 0,
            record_need: 5,
            records: 0,
            field: field::HS_TYPE,
            label_len: 0,
            labels: 0,
            ccs: 0,
            _pad: [0; 2],
        }
    }
}

impl Default for HelloWalk {
    fn default() -> Self {
        Self::new()
    }
}

/// What `HelloWalk::step` writes besides its own state.
pub trait HelloSink {
    /// Host name text byte `i` (lower case).
    fn text(&mut self, i: usize, c: u8);
    /// The hash of label `i` of the host name (the DNS walk's label hash).
    fn label(&mut self, i: usize, hash: u64);
}

impl HelloWalk {
    /// Consumes the next field (or the part of it in this segment). `read(i)` is byte `i` of the
    /// segment's payload (`None` past its end); `pos` is where the walk is in it and moves on.
    /// A walk that ends before a ClientHello's handshake type was read ends as `NotHello`.
    #[inline(always)]
    pub fn step<S: HelloSink>(
        &mut self,
        seed: u64,
        read: impl Fn(usize) -> Option<u8>,
        pos: &mut usize,
        end: usize,
        sink: &mut S,
    ) -> Hello {
        match self.field_step(seed, read, pos, end, sink) {
            Hello::Unparsed if self.field <= field::HS_TYPE => Hello::NotHello,
            other => other,
        }
    }

    /// Whether the walk is inside the host name (its text so far must be kept with the state).
    #[inline(always)]
    pub const fn in_name(&self) -> bool {
        self.field == field::SNI_NAME
    }

    /// Whether the stream is known to carry a ClientHello (its handshake type was read).
    #[inline(always)]
    pub const fn is_hello(&self) -> bool {
        self.field > field::HS_TYPE
    }

    #[inline(always)]
    fn field_step<S: HelloSink>(
        &mut self,
        seed: u64,
        read: impl Fn(usize) -> Option<u8>,
        pos: &mut usize,
        end: usize,
        sink: &mut S,
    ) -> Hello {
        if *pos >= end {
            return Hello::NeedMore;
        }
        if self.record_need > 0 {
            return self.record_header(&read, pos, end);
        }
        if self.record_left == 0 {
            // The handshake goes on in the next record.
            if self.records >= MAX_RECORDS {
                return Hello::Unparsed;
            }
            self.record_need = 5;
            self.record_acc = 0;
            return Hello::More;
        }
        // What this segment and this record hold of the field.
        let avail = (end - *pos) as u32;
        let here = if avail < self.record_left {
            avail
        } else {
            self.record_left
        };
        if self.field == field::EXT_TYPE && self.need == 2 && here >= 4 {
            return self.extension(&read, pos, here);
        }
        let field = self.field;
        let (n, done) = match field {
            field::SNI_NAME => match self.name(seed, &read, *pos, here, sink) {
                Ok(n) => (n, self.need == 0),
                Err(()) => return Hello::Unparsed,
            },
            field::CCS
            | field::VERSION_RANDOM
            | field::SID
            | field::SUITES
            | field::COMP
            | field::EXT_BODY => {
                let n = if here < self.need { here } else { self.need };
                self.need -= n;
                (n, self.need == 0)
            }
            _ => {
                // A big-endian length or type field of `need` (1..=3) bytes.
                let mut i = 0u32;
                while i < 3 {
                    if self.need == 0 || i >= here {
                        break;
                    }
                    let Some(b) = read(*pos + i as usize) else {
                        return Hello::Unparsed;
                    };
                    self.acc = (self.acc << 8) | u32::from(b);
                    self.need -= 1;
                    i += 1;
                }
                (i, self.need == 0)
            }
        };
        *pos += n as usize;
        self.record_left -= n;
        // Every field after the handshake header lies within the handshake, and every field
        // after the extensions' length within the extensions.
        if field > field::HS_LEN {
            if n > self.hs_left {
                return Hello::Unparsed;
            }
            self.hs_left -= n;
        }
        if field > field::EXTS_LEN {
            if n > self.exts_left {
                return Hello::Unparsed;
            }
            self.exts_left -= n;
        }
        if !done {
            return Hello::More;
        }
        let value = self.acc;
        self.acc = 0;
        self.next(value)
    }

    /// The fast path of the common case: an extension's type and length whole in this segment
    /// and record. Reads both, and skips as much of a body other than server_name's as is here,
    /// in one step (the field-by-field path takes three).
    #[inline(always)]
    fn extension(
        &mut self,
        read: &impl Fn(usize) -> Option<u8>,
        pos: &mut usize,
        here: u32,
    ) -> Hello {
        let p = *pos;
        let (Some(t0), Some(t1), Some(l0), Some(l1)) =
            (read(p), read(p + 1), read(p + 2), read(p + 3))
        else {
            return Hello::Unparsed;
        };
        let len = u32::from(u16::from_be_bytes([l0, l1]));
        if self.hs_left < 4 || self.exts_left < 4 {
            return Hello::Unparsed;
        }
        self.consume(pos, 4);
        if len > self.exts_left {
            return Hello::Unparsed;
        }
        if u16::from_be_bytes([t0, t1]) == EXT_SERVER_NAME {
            if len < 5 {
                return Hello::Unparsed;
            }
            return self.enter(field::SNI_LIST_LEN, 2);
        }
        let n = if len < here - 4 { len } else { here - 4 };
        self.consume(pos, n);
        self.field = field::EXT_BODY;
        self.need = len - n;
        if self.need > 0 {
            return Hello::More;
        }
        self.next_extension()
    }

    /// Takes `n` bytes of an extension (already checked against the record, the handshake and
    /// the extensions block).
    #[inline(always)]
    fn consume(&mut self, pos: &mut usize, n: u32) {
        *pos += n as usize;
        self.record_left -= n;
        self.hs_left -= n;
        self.exts_left -= n;
    }

    /// A record header: type, version, length.
    #[inline(always)]
    fn record_header(
        &mut self,
        read: &impl Fn(usize) -> Option<u8>,
        pos: &mut usize,
        end: usize,
    ) -> Hello {
        let mut i = 0;
        while i < 5 {
            if self.record_need == 0 || *pos >= end {
                break;
            }
            let Some(b) = read(*pos) else {
                return Hello::Unparsed;
            };
            // Byte 0 is the content type, bytes 1–2 the version, bytes 3–4 the length.
            match self.record_need {
                5 if b == CONTENT_CHANGE_CIPHER_SPEC && self.field == field::HS_TYPE => {
                    // Only in front of the ClientHello.
                    self.ccs = 1;
                }
                5 if b != CONTENT_HANDSHAKE => return Hello::Unparsed,
                4 if b != 3 => return Hello::Unparsed,
                1 | 2 => self.record_acc = (self.record_acc << 8) | u16::from(b),
                _ => {}
            }
            *pos += 1;
            self.record_need -= 1;
            i += 1;
        }
        if self.record_need > 0 {
            return Hello::More;
        }
        // RFC 8446: a record carries at most 2^14 bytes, and never zero of a handshake.
        if self.record_acc == 0 || self.record_acc > 16 * 1024 {
            return Hello::Unparsed;
        }
        self.record_left = u32::from(self.record_acc);
        self.records += 1;
        if self.ccs != 0 {
            // A ChangeCipherSpec record holds one byte; the ClientHello follows in the next.
            self.ccs = 0;
            if self.record_left != 1 {
                return Hello::Unparsed;
            }
            return self.enter(field::CCS, 1);
        }
        Hello::More
    }

    /// Enters `field`, which is `need` bytes long.
    #[inline(always)]
    fn enter(&mut self, field: u8, need: u32) -> Hello {
        self.field = field;
        self.need = need;
        Hello::More
    }

    /// A field is complete (`value`: the number it held); on to the next.
    #[inline(always)]
    fn next(&mut self, value: u32) -> Hello {
        match self.field {
            field::CCS => self.enter(field::HS_TYPE, 1),
            field::HS_TYPE => {
                if value != u32::from(HANDSHAKE_CLIENT_HELLO) {
                    return Hello::Unparsed;
                }
                self.enter(field::HS_LEN, 3)
            }
            field::HS_LEN => {
                // Version and random (34), three length fields (4) at least.
                if !(38..=MAX_HELLO).contains(&value) {
                    return Hello::Unparsed;
                }
                self.hs_left = value;
                self.enter(field::VERSION_RANDOM, 34)
            }
            field::VERSION_RANDOM => self.enter(field::SID_LEN, 1),
            field::SID_LEN => {
                if value > 32 {
                    return Hello::Unparsed;
                }
                self.skip(field::SID, value)
            }
            field::SID => self.enter(field::SUITES_LEN, 2),
            field::SUITES_LEN => self.skip(field::SUITES, value),
            field::SUITES => self.enter(field::COMP_LEN, 1),
            field::COMP_LEN => self.skip(field::COMP, value),
            field::COMP => {
                if self.hs_left == 0 {
                    // No extensions at all.
                    return Hello::NoSni;
                }
                self.enter(field::EXTS_LEN, 2)
            }
            field::EXTS_LEN => {
                if value > self.hs_left {
                    return Hello::Unparsed;
                }
                self.exts_left = value;
                self.next_extension()
            }
            field::EXT_TYPE => {
                self.acc = 0;
                // Remember whether it is server_name in `label_len` until the name starts.
                self.label_len = u8::from(value == u32::from(EXT_SERVER_NAME));
                self.enter(field::EXT_LEN, 2)
            }
            field::EXT_LEN => {
                if value > self.exts_left {
                    return Hello::Unparsed;
                }
                if self.label_len == 1 {
                    self.label_len = 0;
                    if value < 5 {
                        return Hello::Unparsed;
                    }
                    return self.enter(field::SNI_LIST_LEN, 2);
                }
                self.skip(field::EXT_BODY, value)
            }
            field::EXT_BODY => self.next_extension(),
            field::SNI_LIST_LEN => self.enter(field::SNI_TYPE, 1),
            field::SNI_TYPE => {
                // host_name (0) is the only name type there is.
                if value != 0 {
                    return Hello::Unparsed;
                }
                self.enter(field::SNI_LEN, 2)
            }
            field::SNI_LEN => {
                if value == 0 || value as usize > MAX_NAME + 1 {
                    return Hello::Unparsed;
                }
                self.label_len = 0;
                self.labels = 0;
                self.name_len = 0;
                self.enter(field::SNI_NAME, value)
            }
            // SNI_NAME: the name's last byte was read.
            _ => Hello::Sni,
        }
    }

    /// The hash of the label just completed.
    #[inline(always)]
    fn label_end(&self) -> u64 {
        label_end(self.label_hash, self.label_acc, usize::from(self.label_len))
    }

    /// Enters a skipped field of `n` bytes; an empty one is complete at once.
    #[inline(always)]
    fn skip(&mut self, field: u8, n: u32) -> Hello {
        self.field = field;
        self.need = n;
        if n == 0 {
            return self.next(0);
        }
        Hello::More
    }

    #[inline(always)]
    fn next_extension(&mut self) -> Hello {
        if self.exts_left == 0 {
            return Hello::NoSni;
        }
        self.enter(field::EXT_TYPE, 2)
    }

    /// Reads host name bytes at `pos` (at most `here`), up to the end of a label or of the
    /// name. Returns the bytes consumed; `Err` for a name no host has.
    #[inline(always)]
    fn name<S: HelloSink>(
        &mut self,
        seed: u64,
        read: &impl Fn(usize) -> Option<u8>,
        pos: usize,
        here: u32,
        sink: &mut S,
    ) -> Result<u32, ()> {
        if self.label_len == 0 {
            self.label_hash = label_start(seed);
            self.label_acc = 0;
        }
        let mut i = 0u32;
        while i < NAME_CHUNK {
            if i >= here || i >= self.need {
                break;
            }
            let b = read(pos + i as usize).ok_or(())?;
            i += 1;
            if b == b'.' {
                if self.label_len == 0 {
                    return Err(());
                }
                sink.label(usize::from(self.labels), self.label_end());
                self.labels += 1;
                self.label_len = 0;
                if self.need - i > 0 {
                    sink.text(usize::from(self.name_len), b'.');
                    self.name_len += 1;
                }
                break;
            }
            let c = host_char(b).ok_or(())?;
            if self.label_len as usize >= MAX_LABEL || self.name_len as usize >= MAX_NAME {
                return Err(());
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
        }
        self.need -= i;
        if self.need == 0 && self.label_len > 0 {
            // The last label (a trailing dot, if any, ended the one before).
            sink.label(usize::from(self.labels), self.label_end());
            self.labels += 1;
            self.label_len = 0;
        }
        if self.need == 0 && self.labels == 0 {
            return Err(());
        }
        Ok(i)
    }
}

/// Most host name bytes one step reads (a label may take several steps). Small enough that
/// the verifier follows the kernel's loop body without running out of jump history.
const NAME_CHUNK: u32 = 16;

/// A host-side sink: the name's text and the hashes of its last `MAX_LEVELS` labels.
pub struct NameBuf {
    pub text: [u8; 256],
    pub hashes: [u64; MAX_LEVELS],
}

impl Default for NameBuf {
    fn default() -> Self {
        Self {
            text: [0; 256],
            hashes: [0; MAX_LEVELS],
        }
    }
}

impl HelloSink for NameBuf {
    fn text(&mut self, i: usize, c: u8) {
        if let Some(t) = self.text.get_mut(i) {
            *t = c;
        }
    }
    fn label(&mut self, i: usize, hash: u64) {
        self.hashes[i % MAX_LEVELS] = hash;
    }
}

/// Most steps the walk takes over one segment; a segment that needs more ends it (a cap).
pub const MAX_STEPS: u32 = 512;

/// The host's loop over `HelloWalk::step` for one segment's payload: steps until the segment
/// is used up or the walk ends. The kernel runs the same steps from a `bpf_loop` callback.
pub fn walk_segment(walk: &mut HelloWalk, seed: u64, payload: &[u8], sink: &mut NameBuf) -> Hello {
    let mut pos = 0;
    for _ in 0..MAX_STEPS {
        match walk.step(
            seed,
            |i| payload.get(i).copied(),
            &mut pos,
            payload.len(),
            sink,
        ) {
            Hello::More => {}
            other => return other,
        }
    }
    Hello::Unparsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{fingerprint, suffixes};
    use std::{vec, vec::Vec};

    /// A ClientHello record with these extensions (type, body) around a server_name of `sni`.
    pub fn hello(sni: Option<&str>, before: usize, after: usize, records: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        let pad = |exts: &mut Vec<u8>, n: usize, t: u16| {
            for k in 0..n {
                exts.extend_from_slice(&(t + k as u16).to_be_bytes());
                let body = vec![0xab; 7 + k * 13];
                exts.extend_from_slice(&(body.len() as u16).to_be_bytes());
                exts.extend_from_slice(&body);
            }
        };
        pad(&mut exts, before, 0x0a00);
        if let Some(name) = sni {
            let n = name.len() as u16;
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&(n + 5).to_be_bytes());
            exts.extend_from_slice(&(n + 3).to_be_bytes());
            exts.push(0);
            exts.extend_from_slice(&n.to_be_bytes());
            exts.extend_from_slice(name.as_bytes());
        }
        pad(&mut exts, after, 0x0b00);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x55; 32]);
        body.push(32);
        body.extend_from_slice(&[0x66; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 1, 0x13, 2]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        // Split the handshake over `records` records.
        let mut out = Vec::new();
        let per = hs.len().div_ceil(records);
        for chunk in hs.chunks(per) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn walk(segments: &[&[u8]]) -> (Hello, Vec<u8>, Vec<u64>) {
        let mut w = HelloWalk::new();
        let mut buf = NameBuf::default();
        let mut last = Hello::NeedMore;
        for seg in segments {
            last = walk_segment(&mut w, 7, seg, &mut buf);
            if last != Hello::NeedMore {
                break;
            }
        }
        let mut fps = [0u64; MAX_LEVELS];
        let n = suffixes(&buf.hashes, usize::from(w.labels), 7, &mut fps);
        (
            last,
            buf.text[..usize::from(w.name_len)].to_vec(),
            fps[..n].to_vec(),
        )
    }

    #[test]
    fn the_name_and_its_suffixes() {
        let h = hello(Some("WWW.Example.com"), 3, 4, 1);
        assert!(may_start_hello(h[0]));
        let (r, text, fps) = walk(&[&h]);
        assert_eq!(r, Hello::Sni);
        assert_eq!(text, b"www.example.com");
        assert_eq!(
            fps,
            vec![
                fingerprint(b"com", 7),
                fingerprint(b"example.com", 7),
                fingerprint(b"www.example.com", 7)
            ]
        );
        // A trailing dot is not part of the name.
        let (r, text, _) = walk(&[&hello(Some("example.com."), 0, 0, 1)]);
        assert_eq!((r, text.as_slice()), (Hello::Sni, &b"example.com"[..]));
    }

    #[test]
    fn every_split_gives_the_same_result() {
        for records in [1, 3] {
            let h = hello(Some("a.sub.example.org"), 5, 5, records);
            let whole = walk(&[&h]);
            assert_eq!(whole.0, Hello::Sni);
            for i in 1..h.len() {
                assert_eq!(walk(&[&h[..i], &h[i..]]), whole, "split at {i}");
            }
            for i in (1..h.len()).step_by(7) {
                for j in (i + 1..h.len()).step_by(5) {
                    assert_eq!(
                        walk(&[&h[..i], &h[i..j], &h[j..]]),
                        whole,
                        "split at {i}, {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_name_and_not_a_hello() {
        assert_eq!(walk(&[&hello(None, 4, 0, 1)]).0, Hello::NoSni);
        let mut h = hello(Some("example.com"), 0, 0, 1);
        h[5] = 2; // ServerHello
        assert_eq!(walk(&[&h]).0, Hello::NotHello);
        let mut h = hello(Some("example.com"), 0, 0, 1);
        h[0] = 23; // application data
        assert_eq!(walk(&[&h]).0, Hello::NotHello);
        // A ChangeCipherSpec record in front (a second ClientHello after a HelloRetryRequest).
        let mut h = vec![20, 3, 3, 0, 1, 1];
        h.extend(hello(Some("example.com"), 1, 1, 1));
        let (r, text, _) = walk(&[&h]);
        assert_eq!((r, text.as_slice()), (Hello::Sni, &b"example.com"[..]));
        h[4] = 2;
        assert_eq!(walk(&[&h]).0, Hello::NotHello);
        // Bad characters, empty labels.
        for bad in ["exa mple.com", "a..b", ".a", "a/b"] {
            assert_eq!(
                walk(&[&hello(Some(bad), 0, 0, 1)]).0,
                Hello::Unparsed,
                "{bad}"
            );
        }
        // An extension longer than the extensions block.
        let mut h = hello(None, 1, 0, 1);
        let ext_len_at = h.len() - (7 + 2);
        h[ext_len_at] = 0xff;
        assert_eq!(walk(&[&h]).0, Hello::Unparsed);
        // Cut short: more is needed.
        let h = hello(Some("example.com"), 2, 0, 1);
        assert_eq!(walk(&[&h[..h.len() - 3]]).0, Hello::NeedMore);
    }

    #[test]
    fn corrupted_hellos_end_cleanly() {
        // Flip every byte of a hello to a few values: the walk never panics and always ends.
        let h = hello(Some("www.example.com"), 3, 3, 2);
        for i in 0..h.len() {
            for v in [0u8, 1, 0x2e, 0x7f, 0xff] {
                let mut c = h.clone();
                c[i] = v;
                let _ = walk(&[&c]);
                let _ = walk(&[&c[..i], &c[i..]]);
            }
        }
    }
}
