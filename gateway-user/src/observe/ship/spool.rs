//! The remote-write queue: batches wait in memory while the uplink works (a batch stays there
//! only until the next push), and in a spool directory under the state directory once a push
//! failed or the daemon stops, so that an outage or a restart loses nothing. Oldest first; the
//! spool is size-capped and the oldest batches beyond the cap are dropped, counted.
//!
//! A spooled batch is one file `<sequence, 16 hex digits>.batch`: its sample count (8 bytes,
//! little-endian), then the request body as it goes on the wire. Files are written aside and
//! renamed, so a crash leaves whole batches or none; a file that cannot be read back is
//! dropped, counted, and named in the log.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
};

/// One push's worth: an encoded, compressed request and the samples in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Its place in the queue (set by `push`; a spooled batch's file is named by it).
    pub id: u64,
    pub samples: u64,
    pub body: Vec<u8>,
}

/// A spooled batch: its file and what it holds.
#[derive(Debug, Clone)]
struct Spooled {
    seq: u64,
    samples: u64,
    bytes: u64,
}

/// The queue of batches not yet sent.
#[derive(Debug)]
pub struct Queue {
    memory: VecDeque<Batch>,
    memory_bytes: u64,
    memory_cap: u64,
    dir: PathBuf,
    spool: VecDeque<Spooled>,
    spool_bytes: u64,
    spool_cap: u64,
    next_seq: u64,
}

const SUFFIX: &str = "batch";

impl Queue {
    /// The queue spooling to `dir` (created, mode 0700), with the batches an earlier daemon
    /// left there, oldest first. Returns it and the samples of spooled files it had to drop
    /// (unreadable, or beyond `spool_cap`).
    pub fn open(dir: &Path, memory_cap: u64, spool_cap: u64) -> std::io::Result<(Self, u64)> {
        crate::secret::ensure_private_dir(dir).map_err(std::io::Error::other)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let seq = path
                .extension()
                .filter(|e| *e == SUFFIX)
                .and_then(|_| path.file_stem())
                .and_then(|s| s.to_str())
                .and_then(|s| u64::from_str_radix(s, 16).ok());
            match seq {
                Some(seq) => found.push((seq, entry.metadata()?.len())),
                // A batch being written when the daemon stopped: incomplete.
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found.sort_unstable();
        let mut q = Self {
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_cap,
            dir: dir.to_path_buf(),
            spool: VecDeque::new(),
            spool_bytes: 0,
            spool_cap,
            next_seq: found.last().map_or(0, |(s, _)| s + 1),
        };
        let mut dropped = 0;
        for (seq, bytes) in found {
            match q.read_samples(seq) {
                Ok(samples) => {
                    q.spool.push_back(Spooled {
                        seq,
                        samples,
                        bytes,
                    });
                    q.spool_bytes += bytes;
                }
                Err(e) => {
                    tracing::warn!(file = %q.path(seq).display(), error = %e, "remote-write spool: an unreadable batch is dropped");
                    let _ = std::fs::remove_file(q.path(seq));
                }
            }
        }
        dropped += q.trim();
        Ok((q, dropped))
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016x}.{SUFFIX}"))
    }

    fn read_samples(&self, seq: u64) -> std::io::Result<u64> {
        use std::io::Read as _;
        let mut head = [0u8; 8];
        std::fs::File::open(self.path(seq))?.read_exact(&mut head)?;
        Ok(u64::from_le_bytes(head))
    }

    /// Samples waiting, in memory and spooled.
    pub fn pending(&self) -> u64 {
        self.memory.iter().map(|b| b.samples).sum::<u64>()
            + self.spool.iter().map(|s| s.samples).sum::<u64>()
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.memory.len() + self.spool.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the spool directory's batches.
    pub fn spooled_bytes(&self) -> u64 {
        self.spool_bytes
    }

    /// Adds a batch of `samples` encoded as `body` at the back: in memory if `in_memory` and
    /// it fits, else spooled (the memory's batches first, which are older). Returns the
    /// samples dropped to stay within the spool's cap.
    pub fn push(&mut self, samples: u64, body: Vec<u8>, in_memory: bool) -> u64 {
        let batch = Batch {
            id: self.next_seq,
            samples,
            body,
        };
        self.next_seq += 1;
        let size = batch.body.len() as u64;
        if in_memory && self.memory_bytes + size <= self.memory_cap {
            self.memory_bytes += size;
            self.memory.push_back(batch);
            return 0;
        }
        let mut dropped = self.spill();
        dropped += self.spool_one(batch);
        dropped + self.trim()
    }

    /// Moves every batch in memory to the spool (the daemon stops, or the uplink is down).
    /// Returns the samples dropped to stay within the cap.
    pub fn spill(&mut self) -> u64 {
        let mut dropped = 0;
        while let Some(b) = self.memory.pop_front() {
            self.memory_bytes -= b.body.len() as u64;
            dropped += self.spool_one(b);
        }
        dropped + self.trim()
    }

    /// Writes `batch` as the newest spooled file; a batch that cannot be written is dropped
    /// (its samples returned) and the error logged.
    fn spool_one(&mut self, batch: Batch) -> u64 {
        let seq = batch.id;
        let path = self.path(seq);
        let tmp = path.with_extension("partial");
        let mut bytes = batch.samples.to_le_bytes().to_vec();
        bytes.extend_from_slice(&batch.body);
        match std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => {
                self.spool_bytes += bytes.len() as u64;
                self.spool.push_back(Spooled {
                    seq,
                    samples: batch.samples,
                    bytes: bytes.len() as u64,
                });
                0
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::error!(file = %path.display(), error = %e, "remote-write spool: cannot write a batch; dropped");
                batch.samples
            }
        }
    }

    /// Drops the oldest spooled batches beyond the cap; returns their samples.
    fn trim(&mut self) -> u64 {
        let mut dropped = 0;
        while self.spool_bytes > self.spool_cap {
            let Some(s) = self.spool.pop_front() else {
                break;
            };
            self.spool_bytes -= s.bytes;
            dropped += s.samples;
            let _ = std::fs::remove_file(self.path(s.seq));
        }
        dropped
    }

    /// The oldest batch (spooled ones are older than those in memory). A spooled file that
    /// cannot be read is dropped and its samples returned in `Err`.
    pub fn front(&mut self) -> Option<Result<Batch, u64>> {
        if let Some(s) = self.spool.front().cloned() {
            let path = self.path(s.seq);
            let read = std::fs::read(&path).ok().filter(|b| b.len() >= 8);
            return Some(match read {
                Some(bytes) => Ok(Batch {
                    id: s.seq,
                    samples: s.samples,
                    body: bytes[8..].to_vec(),
                }),
                None => {
                    tracing::warn!(file = %path.display(), "remote-write spool: a batch cannot be read back; dropped");
                    self.pop(s.seq);
                    Err(s.samples)
                }
            });
        }
        self.memory.front().cloned().map(Ok)
    }

    /// Removes batch `id` (sent, or refused for good) if it is still the oldest: the cap may
    /// have dropped it meanwhile, and then the batch now oldest stays.
    pub fn pop(&mut self, id: u64) {
        if let Some(s) = self.spool.front() {
            if s.seq == id {
                self.spool_bytes -= s.bytes;
                let _ = std::fs::remove_file(self.path(id));
                self.spool.pop_front();
            }
        } else if self.memory.front().is_some_and(|b| b.id == id)
            && let Some(b) = self.memory.pop_front()
        {
            self.memory_bytes -= b.body.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gw-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Pushes a batch of `n` samples and `size` bytes.
    fn push(q: &mut Queue, n: u64, size: usize, in_memory: bool) -> u64 {
        q.push(n, vec![n as u8; size], in_memory)
    }

    /// Sends everything: the sample counts in order.
    fn drain(q: &mut Queue) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(b) = q.front() {
            let b = b.expect("readable");
            assert_eq!(b.body, vec![b.samples as u8; b.body.len()]);
            out.push(b.samples);
            q.pop(b.id);
        }
        out
    }

    #[test]
    fn batches_leave_oldest_first_from_memory_and_spool() {
        let d = dir("order");
        let (mut q, dropped) = Queue::open(&d, 1000, 1 << 20).expect("open");
        assert_eq!(dropped, 0);
        assert_eq!(push(&mut q, 1, 100, true), 0);
        assert_eq!(push(&mut q, 2, 100, true), 0);
        // The uplink is down: the next goes to the spool, and the older ones in memory first.
        assert_eq!(push(&mut q, 3, 100, false), 0);
        assert_eq!(push(&mut q, 4, 100, true), 0);
        assert_eq!(q.pending(), 10);
        assert_eq!(q.len(), 4);
        assert_eq!(drain(&mut q), vec![1, 2, 3, 4]);
        assert!(q.is_empty());
        assert_eq!(q.spooled_bytes(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_memory_spills_and_a_full_spool_drops_the_oldest() {
        let d = dir("cap");
        // Memory takes two batches; the spool three (108 bytes each on disk).
        let (mut q, _) = Queue::open(&d, 200, 3 * 108).expect("open");
        // Memory full: the third batch spills the first two before it, to the spool.
        for n in 1..=3 {
            assert_eq!(push(&mut q, n, 100, true), 0);
        }
        assert_eq!(q.spooled_bytes(), 3 * 108);
        // The uplink is down: batches go to the spool, whose oldest go beyond its cap.
        assert_eq!(push(&mut q, 4, 100, false), 1);
        assert_eq!(push(&mut q, 5, 100, false), 2);
        assert_eq!(q.pending(), 3 + 4 + 5);
        // A batch dropped by the cap while it was being sent is not popped twice.
        let sending = q.front().expect("batch").expect("readable");
        assert_eq!(push(&mut q, 6, 100, false), 3);
        q.pop(sending.id);
        assert_eq!(drain(&mut q), vec![4, 5, 6]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_spool_survives_a_restart_and_skips_broken_files() {
        let d = dir("restart");
        {
            let (mut q, _) = Queue::open(&d, 1 << 20, 1 << 20).expect("open");
            push(&mut q, 1, 10, true);
            push(&mut q, 2, 10, true);
            // The daemon stops: what is in memory goes to disk.
            assert_eq!(q.spill(), 0);
        }
        // A half-written batch and a truncated one.
        std::fs::write(d.join("0000000000000009.partial"), b"xx").expect("write");
        std::fs::write(d.join("0000000000000005.batch"), b"xx").expect("write");
        let (mut q, dropped) = Queue::open(&d, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(dropped, 0);
        assert!(!d.join("0000000000000009.partial").exists());
        assert_eq!(q.pending(), 3);
        // New batches come after the old ones.
        push(&mut q, 7, 10, true);
        assert_eq!(drain(&mut q), vec![1, 2, 7]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
