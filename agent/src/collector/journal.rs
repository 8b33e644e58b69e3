//! The journal: every accepted report, on stable storage before the
//! collector acknowledges it, replayed at start.
//!
//! Segments `journal-NNNNNNNN.hpj` in `--data-dir` (0700; files 0600), each a
//! run of records framed by [`crate::wire::frame`] (magic, length, CRC-32,
//! then an encoded `Report`, deflated). One thread owns the
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

/// A report as the journal holds it: deflated (fast level). Reports are
/// repetitive (names, histogram layouts): about a fifth of the bytes to
/// write and sync, for a little CPU on the journal's own thread.
pub(super) fn deflate(report: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut z = flate2::write::DeflateEncoder::new(Vec::with_capacity(report.len() / 4), flate2::Compression::fast());
    z.write_all(report).expect("writing to memory");
    z.finish().expect("writing to memory")
}

/// One report as a record of a segment.
fn record(report: &[u8]) -> Vec<u8> {
    frame(&deflate(report))
}

/// No report is larger (the collector takes messages of `--max-message`,
/// 4M by default).
pub(super) const REPORT_MAX: usize = 256 << 20;

/// The report in a record, if it inflates to at most `max` bytes: a
/// damaged or hostile record (deflate expands up to a thousandfold) costs
/// no more memory than a real one.
pub(super) fn inflate(payload: &[u8], max: usize) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::with_capacity((payload.len() * 4).min(max));
    flate2::read::DeflateDecoder::new(payload).take(max as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() <= max).then_some(out)
}

/// Reads one segment into `out`; returns the length of its good prefix
/// (where a torn last record begins, or the whole file).
pub fn read_segment(data: &[u8], out: &mut Replay) -> usize {
    let mut records = Vec::new();
    let good = scan(data, &mut |r| records.push(r), out);
    out.records.append(&mut records);
    good
}

/// Hands each good report of one segment to `each`, counting damage in
/// `out`; returns the length of the segment's good prefix.
fn scan(data: &[u8], each: &mut dyn FnMut(Vec<u8>), out: &mut Replay) -> usize {
    let mut at = 0;
    let mut good = 0;
    while at < data.len() {
        if let Some(p) = unframe(&data[at..]) {
            match inflate(p, REPORT_MAX) {
                Some(report) => each(report),
                None => {
                    out.corrupt += 1;
                    out.corrupt_bytes += (FRAME_HEADER + p.len()) as u64;
                }
            }
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
    /// Opens the journal in `dir` (created 0700 if missing), hands every
    /// report in it to `keep` (which returns the end of its interval, for
    /// deleting segments past the retention), cuts a torn tail off the last
    /// segment, and starts the writer. Returns how many reports it read.
    pub fn open(
        dir: &Path,
        retention: Duration,
        mut keep: impl FnMut(Vec<u8>) -> Option<i64>,
    ) -> anyhow::Result<(Journal, u64)> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating --data-dir {}", dir.display()))?;
        let mut damage = Replay::default();
        let mut read = 0u64;
        let mut closed = Vec::new();
        let segs = segments(dir)?;
        for (i, (n, path)) in segs.iter().enumerate() {
            let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let mut newest = i64::MIN;
            let good = scan(
                &data,
                &mut |r| {
                    read += 1;
                    newest = newest.max(keep(r).unwrap_or(i64::MIN));
                },
                &mut damage,
            );
            if good < data.len() && i + 1 == segs.len() {
                log::warn!("journal {}: {} bytes of a torn last write dropped", path.display(), data.len() - good);
                std::fs::OpenOptions::new().write(true).open(path)?.set_len(good as u64)?;
            } else if good < data.len() {
                damage.corrupt += 1;
                damage.corrupt_bytes += (data.len() - good) as u64;
            }
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
                moved.extend_from_slice(&record(p));
                read += 1;
                keep(p.to_vec());
                buf = &buf[len as usize..];
            }
            w.write(&moved).with_context(|| format!("moving {} into segments", legacy.display()))?;
            std::fs::remove_file(&legacy)?;
            log::info!("journal: {} moved into {}", legacy.display(), segment_path(dir, n).display());
        }
        if damage.corrupt > 0 {
            log::warn!(
                "journal: {} damaged stretches ({} bytes) skipped; the {read} reports around them are kept",
                damage.corrupt,
                damage.corrupt_bytes,
            );
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || w.run(rx))
            .context("starting the journal thread")?;
        Ok((Journal { tx }, read))
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
                buf.extend_from_slice(&record(payload));
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
        let payloads: Vec<Vec<u8>> =
            (0..5usize).map(|i| (0..100 + i).map(|j| (j * 31 + i * 7) as u8).collect()).collect();
        let framed: Vec<Vec<u8>> = payloads.iter().map(|p| record(p)).collect();
        let mut data: Vec<u8> = framed.concat();
        // Damage the third record's payload, and tear the last one.
        let third = framed[0].len() + framed[1].len();
        data[third + FRAME_HEADER + 5] ^= 0xff;
        let whole = data.len();
        data.truncate(whole - 7);
        let mut out = Replay::default();
        let good = read_segment(&data, &mut out);
        assert_eq!(out.records, vec![payloads[0].clone(), payloads[1].clone(), payloads[3].clone()]);
        assert_eq!((out.corrupt, out.corrupt_bytes), (1, framed[2].len() as u64));
        assert_eq!(good, whole - framed[4].len(), "the torn last record is where the good prefix ends");
        // Damaged headers too: a wrong length, a wrong magic.
        let mut data: Vec<u8> = framed.concat();
        data[4] = 0xff;
        data[framed[0].len()] = b'X';
        let mut out = Replay::default();
        read_segment(&data, &mut out);
        assert_eq!(out.records, payloads[2..].to_vec());
        assert_eq!(out.corrupt, 1);
    }

    use proptest::{collection::vec, prelude::*};
    use prost::Message as _;

    use crate::wire::fuzzing::{self, damage};

    /// A segment as the writer makes it: real reports of several sizes (one
    /// empty), each a record.
    struct Segment {
        data: Vec<u8>,
        reports: Vec<Vec<u8>>,
        /// Where each report's record is in `data`.
        ranges: Vec<std::ops::Range<usize>>,
    }

    fn segment() -> &'static Segment {
        static SEGMENT: std::sync::OnceLock<Segment> = std::sync::OnceLock::new();
        SEGMENT.get_or_init(|| {
            let mut reports: Vec<Vec<u8>> =
                (1..=5).map(|seq| fuzzing::sample_report(seq, 7, 1_800_000_000_000_000_000).encode_to_vec()).collect();
            reports.insert(2, Vec::new());
            reports[4].truncate(40);
            let (mut data, mut ranges) = (Vec::new(), Vec::new());
            for r in &reports {
                let start = data.len();
                data.extend_from_slice(&record(r));
                ranges.push(start..data.len());
            }
            Segment { data, reports, ranges }
        })
    }

    /// A stretch of a segment: a good record, or damage of some kind.
    #[derive(Debug, Clone)]
    enum Piece {
        Record(Vec<u8>),
        Garbage(Vec<u8>),
        /// A header with a wrong checksum, and a length that may reach
        /// past the end or into the next records.
        BadHeader(u32, u32),
        /// A record whose checksum holds but whose payload is not deflate
        /// data (or is, by chance).
        NotDeflate(Vec<u8>),
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            3 => vec(any::<u8>(), 0..300).prop_map(Piece::Record),
            1 => vec(any::<u8>(), 1..64).prop_map(Piece::Garbage),
            1 => (1..2048u32, any::<u32>()).prop_map(|(len, crc)| Piece::BadHeader(len, crc)),
            1 => vec(any::<u8>(), 0..64).prop_map(Piece::NotDeflate),
        ]
    }

    proptest! {
        #![proptest_config(fuzzing::config(1_000))]

        /// Any bytes as a segment: no panic, and the good prefix is a
        /// prefix.
        #[test]
        fn fuzz_journal_bytes(data in vec(any::<u8>(), 0..4096)) {
            let mut out = Replay::default();
            let good = read_segment(&data, &mut out);
            prop_assert!(good <= data.len());
        }

        /// Records among damage of every kind: each good record is read,
        /// in order, and nothing else but what checks out; damage before a
        /// good record is counted.
        #[test]
        fn fuzz_journal_pieces(pieces in vec(piece(), 0..12)) {
            let (mut data, mut want, mut damaged) = (Vec::new(), Vec::new(), false);
            let mut want_corrupt = 0;
            for p in &pieces {
                match p {
                    Piece::Record(r) => {
                        data.extend_from_slice(&record(r));
                        want.push(r.clone());
                        want_corrupt += u64::from(std::mem::take(&mut damaged));
                    }
                    Piece::Garbage(g) => {
                        data.extend_from_slice(g);
                        damaged = true;
                    }
                    Piece::BadHeader(len, crc) => {
                        data.extend_from_slice(crate::wire::FRAME_MAGIC);
                        data.extend_from_slice(&len.to_le_bytes());
                        data.extend_from_slice(&crc.to_le_bytes());
                        damaged = true;
                    }
                    Piece::NotDeflate(p) => {
                        // What a good record after damage would be taken
                        // as: the damage counted, then this.
                        want_corrupt += u64::from(std::mem::take(&mut damaged));
                        data.extend_from_slice(&frame(p));
                        match inflate(p, REPORT_MAX) {
                            Some(r) => want.push(r),
                            None => want_corrupt += 1,
                        }
                    }
                }
            }
            let mut out = Replay::default();
            let good = read_segment(&data, &mut out);
            prop_assert_eq!(&out.records, &want);
            prop_assert_eq!(out.corrupt, want_corrupt);
            prop_assert_eq!(good == data.len(), !damaged, "a damaged tail is cut off, nothing else");
        }

        /// A real segment damaged once: every record the damage did not
        /// reach is read, in order, nothing else, and the damage is noticed
        /// (counted, or cut off as a torn tail) unless it left whole
        /// records only.
        #[test]
        fn fuzz_journal_damaged(d in damage()) {
            let Segment { data, reports, ranges } = segment();
            let mut damaged = data.clone();
            let hit = d.apply(&mut damaged);
            let mut out = Replay::default();
            let good = read_segment(&damaged, &mut out);
            // Records by their place in the segment (None: not one of them).
            let got: Vec<Option<usize>> = out.records.iter().map(|r| reports.iter().position(|x| x == r)).collect();
            let untouched: Vec<usize> = (0..reports.len()).filter(|i| !fuzzing::touches(&hit, &ranges[*i])).collect();
            // A record the damage reached may still be whole: a byte
            // deleted at its end and the same byte moved up behind it.
            let read: Vec<usize> = got.iter().flatten().copied().collect();
            prop_assert!(
                got.iter().all(Option::is_some) && read.windows(2).all(|w| w[0] < w[1]) && untouched.iter().all(|i| read.contains(i)),
                "damage at {:?} of records at {:?}: read {:?}", hit, ranges, got
            );
            // Unless what is left is whole records and nothing else (the
            // damage took whole records away), it is noticed.
            let whole: Vec<u8> = read.iter().flat_map(|i| &data[ranges[*i].clone()]).copied().collect();
            if whole != damaged {
                prop_assert!(out.corrupt > 0 || good < damaged.len(), "damage unnoticed: {hit:?}");
            }
        }
    }

    /// A record that inflates past the largest report is damage, and is
    /// not inflated further (a deflate bomb in the journal).
    #[test]
    fn a_record_that_inflates_too_far_is_refused() {
        let report = vec![0u8; 100_000];
        let payload = deflate(&report);
        assert!(payload.len() < 1_000, "zeros deflate a hundredfold");
        assert_eq!(inflate(&payload, 100_000), Some(report));
        assert_eq!(inflate(&payload, 99_999), None);
    }
}
