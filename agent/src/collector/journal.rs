//! The journal: every accepted report, on stable storage before the
//! collector acknowledges it, replayed at start.
//!
//! Segments `journal-NNNNNNNN.hpj` in `--data-dir` (0700; files 0600), each a
//! run of records framed by [`crate::wire::frame`] (magic, length, CRC-32,
//! then an encoded `Report`). One thread owns the
//! files: appends queue to it, and each pass writes everything queued at
//! once and syncs it once (group commit), then answers every append in the
//! pass; the gRPC workers only wait. A failed write (a full disk) is cut
//! back off the file and refused, so the agent keeps the reports and sends
//! them again. A new segment starts every [`SEGMENT_BYTES`] or once the
//! current one is older than the retention; a segment whose newest report
//! is past the retention is deleted.
//!
//! Reading: a record whose magic, length or checksum is wrong is skipped
//! (counted) up to the next record that checks out, which is kept with
//! everything after it; a torn last record (a crash mid-write) is cut off.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::wire::{frame, unframe, FRAME_HEADER, FRAME_MAGIC};

/// A new segment past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// The journal of collectors before segments: length-delimited reports,
/// replayed once, then removed.
const LEGACY: &str = "journal.pb";

/// What a read of the journal found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Payloads, in journal order.
    pub records: Vec<Vec<u8>>,
    /// Damaged stretches skipped (each up to the next good record).
    pub corrupt: u64,
    pub corrupt_bytes: u64,
}

/// Reads one segment into `out`; returns the length of its good prefix
/// (where a torn last record begins, or the whole file).
pub fn read_segment(data: &[u8], out: &mut Replay) -> usize {
    let mut at = 0;
    let mut good = 0;
    while at < data.len() {
        if let Some(p) = unframe(&data[at..]) {
            out.records.push(p.to_vec());
            at += FRAME_HEADER + p.len();
            good = at;
            continue;
        }
        // Damaged: the next place a record checks out, if any.
        let next = (at + 1..data.len())
            .filter(|i| data[*i..].starts_with(FRAME_MAGIC))
            .find(|i| unframe(&data[*i..]).is_some());
        match next {
            Some(next) => {
                out.corrupt += 1;
                out.corrupt_bytes += (next - at) as u64;
                at = next;
            }
            None => break, // torn tail
        }
    }
    good
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading --data-dir {}", dir.display()))? {
        let path = e?.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("journal-")?.strip_suffix(".hpj")?.parse::<u64>().ok());
        if let Some(n) = n {
            v.push((n, path));
        }
    }
    v.sort();
    Ok(v)
}

/// Reads every segment of the journal in `dir` (read-only: for tests and
/// tools; the collector uses [`Journal::open`]).
pub fn read_dir(dir: &Path) -> anyhow::Result<Replay> {
    let mut out = Replay::default();
    for (_, path) in segments(dir)? {
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        read_segment(&data, &mut out);
    }
    Ok(out)
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("journal-{n:08}.hpj"))
}

fn create_segment(dir: &Path, n: u64) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(segment_path(dir, n))?;
    // The new name, durable too.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(file)
}

enum Cmd {
    Append { payload: std::sync::Arc<[u8]>, end_ns: i64, done: tokio::sync::oneshot::Sender<Result<(), String>> },
}

/// The handle the service appends through.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Cmd>,
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    retention: Duration,
    file: std::fs::File,
    /// Current segment: number, bytes written and synced, when opened.
    n: u64,
    bytes: u64,
    opened: Instant,
    /// Closed segments: number and the end of their newest report.
    closed: Vec<(u64, i64)>,
    newest_ns: i64,
}

impl Journal {
    /// Opens the journal in `dir` (created 0700 if missing), reads it all
    /// (cutting a torn tail off the last segment), and starts the writer.
    pub fn open(
        dir: &Path,
        retention: Duration,
        end_of: fn(&[u8]) -> Option<i64>,
    ) -> anyhow::Result<(Journal, Replay)> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating --data-dir {}", dir.display()))?;
        let mut replay = Replay::default();
        let mut closed = Vec::new();
        let segs = segments(dir)?;
        for (i, (n, path)) in segs.iter().enumerate() {
            let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let before = replay.records.len();
            let good = read_segment(&data, &mut replay);
            if good < data.len() && i + 1 == segs.len() {
                log::warn!("journal {}: {} bytes of a torn last write dropped", path.display(), data.len() - good);
                std::fs::OpenOptions::new().write(true).open(path)?.set_len(good as u64)?;
            } else if good < data.len() {
                replay.corrupt += 1;
                replay.corrupt_bytes += (data.len() - good) as u64;
            }
            let newest = replay.records[before..].iter().filter_map(|r| end_of(r)).max().unwrap_or(i64::MIN);
            closed.push((*n, newest));
        }
        let n = segs.last().map_or(1, |(n, _)| n + 1);
        let file = create_segment(dir, n).with_context(|| format!("creating {}", segment_path(dir, n).display()))?;
        let mut w = Writer {
            dir: dir.to_path_buf(),
            retention,
            file,
            n,
            bytes: 0,
            opened: Instant::now(),
            closed,
            newest_ns: i64::MIN,
        };
        // A journal from before segments: into the first segment, then gone.
        let legacy = dir.join(LEGACY);
        if let Ok(data) = std::fs::read(&legacy) {
            let mut buf = data.as_slice();
            let mut moved = Vec::new();
            while let Ok(len) = prost::encoding::decode_varint(&mut buf) {
                let Some(p) = buf.get(..len as usize) else { break };
                moved.extend_from_slice(&frame(p));
                replay.records.push(p.to_vec());
                buf = &buf[len as usize..];
            }
            w.write(&moved).with_context(|| format!("moving {} into segments", legacy.display()))?;
            std::fs::remove_file(&legacy)?;
            log::info!("journal: {} moved into {}", legacy.display(), segment_path(dir, n).display());
        }
        if replay.corrupt > 0 {
            log::warn!(
                "journal: {} damaged stretches ({} bytes) skipped; the {} reports around them are kept",
                replay.corrupt,
                replay.corrupt_bytes,
                replay.records.len()
            );
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || w.run(rx))
            .context("starting the journal thread")?;
        Ok((Journal { tx }, replay))
    }

    /// Appends one encoded report; returns once it is on stable storage.
    pub async fn append(&self, payload: std::sync::Arc<[u8]>, end_ns: i64) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Cmd::Append { payload, end_ns, done })
            .map_err(|_| "the journal thread has stopped".to_string())?;
        wait.await.map_err(|_| "the journal thread has stopped".to_string())?
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            // Everything queued meanwhile goes in the same write and sync.
            let batch: Vec<Cmd> = std::iter::once(first).chain(rx.try_iter()).collect();
            let mut buf = Vec::new();
            let mut newest = i64::MIN;
            for Cmd::Append { payload, end_ns, .. } in &batch {
                buf.extend_from_slice(&frame(payload));
                newest = newest.max(*end_ns);
            }
            let result = self.write(&buf).map_err(|e| e.to_string());
            if result.is_ok() {
                self.newest_ns = self.newest_ns.max(newest);
            }
            for Cmd::Append { done, .. } in batch {
                let _ = done.send(result.clone());
            }
            if let Err(e) = self.maintain() {
                log::warn!("journal: {e:#}");
            }
        }
    }

    /// Writes and syncs `buf` at the end of the current segment; on
    /// failure, cuts the segment back to where it was.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self.file.write_all(buf).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.file.set_len(self.bytes) {
                    log::error!("journal: cannot cut a failed write back off ({cut}); its records will be skipped");
                }
                Err(e)
            }
        }
    }

    /// Starts a new segment when the current one is full or old; deletes
    /// segments past the retention.
    fn maintain(&mut self) -> anyhow::Result<()> {
        if self.bytes >= SEGMENT_BYTES || (self.bytes > 0 && self.opened.elapsed() > self.retention) {
            let file = create_segment(&self.dir, self.n + 1)?;
            self.closed.push((self.n, self.newest_ns));
            (self.file, self.n, self.bytes, self.opened, self.newest_ns) =
                (file, self.n + 1, 0, Instant::now(), i64::MIN);
        }
        let oldest = crate::metrics::now_unix_ns() - self.retention.as_nanos() as i64;
        while let Some(&(n, newest)) = self.closed.first() {
            if newest >= oldest {
                break;
            }
            std::fs::remove_file(segment_path(&self.dir, n)).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })?;
            self.closed.remove(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_record_is_skipped_and_the_rest_kept() {
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + i as usize]).collect();
        let mut data: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        // Damage the third record's payload, and tear the last one.
        let third = 2 * FRAME_HEADER + 100 + 101;
        data[third + FRAME_HEADER + 10] ^= 0xff;
        let whole = data.len();
        data.truncate(whole - 7);
        let mut out = Replay::default();
        let good = read_segment(&data, &mut out);
        assert_eq!(out.records, vec![payloads[0].clone(), payloads[1].clone(), payloads[3].clone()]);
        assert_eq!((out.corrupt, out.corrupt_bytes), (1, (FRAME_HEADER + 102) as u64));
        assert_eq!(good, whole - (FRAME_HEADER + 104), "the torn last record is where the good prefix ends");
        // Damaged headers too: a wrong length, a wrong magic.
        let mut data: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        data[4] = 0xff;
        data[FRAME_HEADER + 100] = b'X';
        let mut out = Replay::default();
        read_segment(&data, &mut out);
        assert_eq!(out.records, payloads[2..].to_vec());
        assert_eq!(out.corrupt, 1);
    }
}
