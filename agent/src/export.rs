//! `hostprobe run --collector URL`: streams every interval's report to a
//! collector over gRPC (`proto/hostprobe/v1`), reliably: reports wait in a
//! bounded queue (and, with `--spool-dir`, on disk) until the collector
//! acknowledges them, are resent after a reconnect, and a drop forced by a
//! cap is counted, logged and reported, never silent.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _};
use prost::Message as _;
use tokio::sync::Notify;
use tonic::codec::CompressionEncoding;

use crate::{
    grpc::{channel, status_message, token, transport_error, ClientArgs},
    wire::pb,
};

#[derive(Debug, Clone, clap::Args, Default)]
#[command(next_help_heading = "Streaming to a collector")]
pub struct ExportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// This agent's id, unique in the fleet (default: $NODE_NAME when set;
    /// else a SHA-256 of /etc/machine-id, stable across restarts). Without
    /// either, streaming refuses to start rather than collide with another agent.
    #[arg(long, value_name = "ID")]
    pub agent_id: Option<String>,
    /// Reports kept in memory while the collector is unreachable; past it
    /// the oldest are dropped (counted, logged and reported).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub queue: u32,
    /// Keep unacknowledged reports here too, so they survive a long outage
    /// and an agent restart.
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Size cap of --spool-dir (e.g. 500M, 2G); past it the oldest reports go.
    #[arg(long, default_value = "256M", value_parser = crate::units::parse_size, value_name = "SIZE")]
    pub spool_max: u64,
}

/// Where the machine id is (systemd's, then D-Bus's older copy).
const MACHINE_ID_FILES: &[&str] = &["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// The host's machine id (OpenTelemetry's `host.id`), if there is one.
pub fn machine_id() -> Option<String> {
    MACHINE_ID_FILES
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
}

/// This agent's id: `explicit` (--agent-id), else $NODE_NAME, else
/// `hp-` and the first 16 hex digits of SHA-256("hostprobe-agent\n" + machine
/// id) (hashed: the machine id is not to be shown as it is; SHA-256 so the
/// id stays the same across Rust releases). `Err` says what to do.
pub fn agent_id(explicit: Option<&str>) -> Result<String, String> {
    if let Some(id) = explicit.filter(|i| !i.trim().is_empty()) {
        return Ok(id.trim().to_string());
    }
    if let Some(node) = std::env::var("NODE_NAME").ok().filter(|n| !n.trim().is_empty()) {
        return Ok(node.trim().to_string());
    }
    let machine_id = machine_id().ok_or(
        "no agent id: /etc/machine-id is missing or empty (as in most containers) and neither --agent-id \
             (HOSTPROBE_AGENT_ID) nor NODE_NAME is set; agents without one would all share an id and the \
             collector would drop one's reports as duplicates of another's. Set --agent-id, NODE_NAME (the \
             DaemonSet sets it from spec.nodeName), or mount the host's /etc/machine-id read-only",
    )?;
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("hostprobe-agent\n{machine_id}").as_bytes());
    Ok(format!("hp-{}", digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Who this agent is, on every report.
pub fn identity(agent_id: &str, host: &str, epoch: u64) -> pb::AgentIdentity {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    pb::AgentIdentity {
        agent_id: agent_id.to_string(),
        host_name: host.to_string(),
        boot_id: boot_id.trim().to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        epoch,
    }
}

/// A report encoded once: the queue, the spool and the stream share the bytes.
#[derive(Clone)]
struct Encoded {
    sequence: u64,
    bytes: bytes::Bytes,
}

/// Reports not yet acknowledged, in sequence order, mirrored in the spool.
struct Queue {
    reports: VecDeque<Encoded>,
    cap: usize,
    next_seq: u64,
    epoch: u64,
    /// Reports given up on and not acknowledged (sent in `dropped_reports`).
    dropped: u64,
    /// Sequences dropped while they may have been on their way: an
    /// acknowledgement for one takes it back off `dropped`.
    dropped_seqs: std::collections::BTreeSet<u64>,
    spool: Option<Spool>,
}

impl Queue {
    fn drop_oldest(&mut self, why: &str) {
        if let Some(r) = self.reports.pop_front() {
            self.dropped += 1;
            self.dropped_seqs.insert(r.sequence);
            if let Some(s) = &mut self.spool {
                s.remove(r.sequence);
            }
            log::warn!(
                "dropped report {} ({why}); {} dropped so far: the collector has been unreachable too long",
                r.sequence,
                self.dropped
            );
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Notify,
    identity: pb::AgentIdentity,
    /// Set at exit: end the stream cleanly once everything is acknowledged.
    closing: std::sync::atomic::AtomicBool,
    /// Whether a stream to a collector is up (for /readyz).
    connected: Arc<std::sync::atomic::AtomicBool>,
    /// Failed sessions, and when the last one failed (Unix seconds).
    errors: std::sync::atomic::AtomicU64,
    last_error_unix: std::sync::atomic::AtomicI64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first queued report at or after `seq` (the queue is in sequence
    /// order, with gaps where a damaged spool file was skipped).
    fn at_or_after(&self, seq: u64) -> Option<Encoded> {
        let q = self.lock();
        let i = q.reports.partition_point(|r| r.sequence < seq);
        q.reports.get(i).cloned()
    }

    fn ack(&self, epoch: u64, seq: u64) {
        let mut q = self.lock();
        if epoch != q.epoch {
            return;
        }
        // A report dropped after it was sent arrived after all. Acks come
        // in the order of one stream: earlier drops can no longer arrive.
        if q.dropped_seqs.remove(&seq) {
            q.dropped -= 1;
        }
        q.dropped_seqs = q.dropped_seqs.split_off(&seq);
        while q.reports.front().is_some_and(|r| r.sequence <= seq) {
            let r = q.reports.pop_front().expect("checked");
            if let Some(s) = &mut q.spool {
                s.remove(r.sequence);
            }
        }
    }

    fn len(&self) -> usize {
        self.lock().reports.len()
    }
}

/// The agent side of the stream.
pub struct Exporter {
    shared: Arc<Shared>,
}

impl Exporter {
    /// Loads the spool (if any) and starts the sender on the current tokio
    /// runtime. Reports carry `agent_id` and `host`.
    pub fn start(args: &ExportArgs, agent_id: &str, host: &str) -> anyhow::Result<Self> {
        let client = args.client.clone();
        for url in &client.collectors {
            if url.starts_with("http://") && !client.plaintext {
                bail!("--collector {url} is plaintext (http://): use https://, or add --plaintext to send reports unencrypted");
            }
        }
        token(&client)?;
        let now_ns = crate::metrics::now_unix_ns().max(1) as u64;
        let (spool, epoch, next_seq, reports, damaged) = match &args.spool_dir {
            Some(dir) => {
                let (spool, epoch, next, reports, damaged) = Spool::open(dir, args.spool_max, now_ns)?;
                (Some(spool), epoch, next, reports, damaged)
            }
            None => (None, now_ns, 1, VecDeque::new(), 0),
        };
        if !reports.is_empty() {
            log::info!("spool: {} unacknowledged reports from before, to send first", reports.len());
        }
        let shared = Arc::new(Shared {
            // Damaged spool files are reports lost: counted with the dropped.
            queue: Mutex::new(Queue {
                reports,
                cap: args.queue as usize,
                next_seq,
                epoch,
                dropped: damaged,
                dropped_seqs: Default::default(),
                spool,
            }),
            changed: Notify::new(),
            identity: identity(agent_id, host, epoch),
            connected: Default::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
            errors: std::sync::atomic::AtomicU64::new(0),
            last_error_unix: std::sync::atomic::AtomicI64::new(0),
        });
        let first = home(agent_id, client.collectors.len());
        tokio::spawn(sender(shared.clone(), client, first));
        Ok(Self { shared })
    }

    /// Queues an interval's report (and spools it); never blocks on the network.
    pub fn push(&self, report: &crate::report::Report) {
        let mut r = crate::wire::report(report);
        r.agent = Some(self.shared.identity.clone());
        {
            let mut q = self.shared.lock();
            r.sequence = q.next_seq;
            q.next_seq += 1;
            r.dropped_reports = q.dropped;
            while q.reports.len() >= q.cap {
                q.drop_oldest("memory queue full (--queue)");
            }
            let bytes = bytes::Bytes::from(r.encode_to_vec());
            let epoch = r.agent.as_ref().map_or(0, |a| a.epoch);
            while let Some(s) = &mut q.spool {
                let Err(e) = s.add(r.sequence, &bytes, epoch, r.sequence + 1) else { break };
                // A full disk: the oldest reports make room for the newest.
                let full = e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull)
                });
                if !full || q.reports.is_empty() {
                    log::warn!("spool: {e:#}; this report is in memory only");
                    break;
                }
                q.drop_oldest("the spool's filesystem is full");
            }
            while q.spool.as_ref().is_some_and(|s| s.over_cap()) && !q.reports.is_empty() {
                q.drop_oldest("spool full (--spool-max)");
            }
            q.reports.push_back(Encoded { sequence: r.sequence, bytes });
        }
        self.shared.changed.notify_one();
    }

    /// True while a stream to a collector is up (for /readyz).
    pub fn connected(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.shared.connected.clone()
    }

    /// (queue length, failed sessions, when the last failed) for health metrics.
    pub fn health(&self) -> (Option<u64>, u64, Option<i64>) {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.shared.last_error_unix.load(Relaxed);
        (Some(self.shared.len() as u64), self.shared.errors.load(Relaxed), (last > 0).then_some(last))
    }

    /// Waits up to `limit` for the queue to drain (at shutdown).
    pub async fn flush(&self, limit: Duration) {
        let end = tokio::time::Instant::now() + limit;
        while self.shared.len() > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Half-close the stream, and give the collector a moment to see it.
        self.shared.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.changed.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let left = self.shared.len();
        if left > 0 {
            let spooled = self.shared.lock().spool.is_some();
            log::warn!(
                "{left} reports not acknowledged at exit{}",
                if spooled {
                    "; they stay in the spool and go first at the next start"
                } else {
                    " and lost (use --spool-dir to keep them)"
                }
            );
        }
    }
}

/// Which of `n` collectors an agent streams to first: one chosen by its
/// id, so that a fleet given the same list spreads over all of them (and
/// each agent comes back to the same one after a failover).
pub fn home(agent_id: &str, n: usize) -> usize {
    crc32fast::hash(agent_id.as_bytes()) as usize % n.max(1)
}

/// Connects, streams, and reconnects with capped exponential backoff and
/// jitter, trying the collectors in turn from the `first`.
async fn sender(shared: Arc<Shared>, args: ClientArgs, first: usize) {
    let mut failures = 0u32;
    let mut outage_since: Option<std::time::Instant> = None;
    for url in args.collectors.iter().cycle().skip(first) {
        match session(url, &shared, &args, &mut outage_since).await {
            Ok(()) if shared.closing.load(std::sync::atomic::Ordering::Relaxed) => return,
            Ok(()) => failures = 0,
            Err(e) => {
                outage_since.get_or_insert_with(std::time::Instant::now);
                shared.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared
                    .last_error_unix
                    .store(crate::metrics::now_unix_ns() / 1_000_000_000, std::sync::atomic::Ordering::Relaxed);
                failures = failures.saturating_add(1);
                let delay = crate::grpc::backoff(failures);
                log::warn!("collector {url}: {e:#}; {} reports queued; retrying in {delay:.1?}", shared.len());
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One stream to one collector, until it fails.
async fn session(
    url: &str,
    shared: &Shared,
    args: &ClientArgs,
    outage_since: &mut Option<std::time::Instant>,
) -> anyhow::Result<()> {
    let channel = channel(url, args).await?;
    let token = token(args)?;
    // The generated client would take messages to encode; ours are encoded
    // already (once, at push), so the call is made with a codec that sends
    // bytes as they are.
    let mut client = tonic::client::Grpc::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(32);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", t);
    }
    client.ready().await.map_err(|e| anyhow::anyhow!("{}", transport_error(url, &e)))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/hostprobe.v1.Collector/Stream");
    let acks = client
        .streaming(request, path, EncodedCodec)
        .await
        .map_err(|s| {
            // A TLS server answers plaintext HTTP/2 with bytes that fail the
            // stream as Unknown or, from h2's framing, as Internal.
            let hint = if url.starts_with("http://") && matches!(s.code(), tonic::Code::Unknown | tonic::Code::Internal)
            {
                " (the collector may require TLS: use https://)"
            } else {
                ""
            };
            anyhow::anyhow!("{}{hint}", status_message(&s))
        })?
        .into_inner();
    shared.connected.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = stream(url, shared, acks, tx, outage_since).await;
    shared.connected.store(false, std::sync::atomic::Ordering::Relaxed);
    result
}

/// Sends queued reports on an open stream and takes their acknowledgements.
async fn stream(
    url: &str,
    shared: &Shared,
    mut acks: tonic::Streaming<pb::Ack>,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    outage_since: &mut Option<std::time::Instant>,
) -> anyhow::Result<()> {
    let backlog = shared.len();
    match outage_since.take() {
        Some(t) => log::info!(
            "collector {url}: connected after an outage of {:.1?}; catching up on {backlog} queued reports",
            t.elapsed()
        ),
        None => log::info!("collector {url}: connected"),
    }
    let mut catching_up = backlog > 1;
    let mut next = 0u64;
    let mut tx = Some(tx);
    loop {
        let pending = shared.at_or_after(next);
        if pending.is_none() && shared.closing.load(std::sync::atomic::Ordering::Relaxed) {
            tx = None; // end of stream: the collector ends its side
        }
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(a)) => {
                    shared.ack(a.epoch, a.sequence);
                    if catching_up && shared.len() == 0 {
                        catching_up = false;
                        log::info!("collector {url}: caught up (all queued reports acknowledged)");
                    }
                }
                Ok(None) if tx.is_none() => return Ok(()),
                Ok(None) => bail!("the collector closed the stream"),
                Err(s) => bail!("{}", status_message(&s)),
            },
            permit = async { tx.as_ref().expect("checked").reserve().await }, if pending.is_some() && tx.is_some() => {
                let r = pending.expect("checked");
                next = r.sequence + 1;
                permit.context("the stream closed")?.send(r.bytes);
            }
            _ = shared.changed.notified(), if pending.is_none() && tx.is_some() => {}
        }
    }
}

/// Reports on disk: one file per report (`<sequence>.hps`, framed with a
/// checksum by [`crate::wire::frame`]), and `state` (epoch and next
/// sequence) so that numbering survives a restart. A report counts as
/// spooled once its file and the directory entry are synced. Files are
/// 0600 in a 0700 directory: reports name processes and commands.
struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// (sequence, bytes) of the files, oldest first.
    files: VecDeque<(u64, u64)>,
    bytes: u64,
}

/// What opening a spool found: epoch, next sequence, the reports in it, and
/// how many files were damaged (skipped and removed).
type Opened = (Spool, u64, u64, VecDeque<Encoded>, u64);

/// What a spool file holds.
#[derive(Debug, PartialEq)]
enum SpoolFile<'a> {
    /// Report `seq` of this epoch: its encoding.
    Report(&'a [u8]),
    /// A good report of another epoch, or under another sequence's name.
    Foreign,
    /// Checksum or encoding wrong.
    Damaged,
}

/// Reads spool file `seq` (`legacy`: a `.pb` file, unframed) of a spool
/// in epoch `epoch`.
fn spool_file(data: &[u8], legacy: bool, seq: u64, epoch: u64) -> SpoolFile<'_> {
    let payload = if legacy { Some(data) } else { crate::wire::unframe(data) };
    match payload.and_then(|p| Some((p, pb::Report::decode(p).ok()?))) {
        Some((p, r)) if r.sequence == seq && r.agent.as_ref().is_some_and(|a| a.epoch == epoch) => SpoolFile::Report(p),
        Some(_) => SpoolFile::Foreign,
        None => SpoolFile::Damaged,
    }
}

impl Spool {
    fn open(dir: &Path, max_bytes: u64, now_ns: u64) -> anyhow::Result<Opened> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating --spool-dir {}", dir.display()))?;
        let state = dir.join("state");
        let (epoch, mut next) = match std::fs::read_to_string(&state) {
            Ok(s) => {
                let mut it = s.split_whitespace().map(|v| v.parse::<u64>());
                match (it.next(), it.next()) {
                    (Some(Ok(e)), Some(Ok(n))) => (e, n),
                    _ => bail!("{} is not a hostprobe spool state file; move it away to start afresh", state.display()),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (now_ns, 1),
            Err(e) => return Err(e).with_context(|| format!("reading {}", state.display())),
        };
        // `.pb`: unframed reports of agents before checksums.
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .with_context(|| format!("reading --spool-dir {}", dir.display()))?
            .filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?;
                let seq = name.strip_suffix(".hps").or_else(|| name.strip_suffix(".pb"))?.parse().ok()?;
                Some((seq, path))
            })
            .collect();
        files.sort_unstable();
        let mut spool = Spool { dir: dir.to_path_buf(), max_bytes, files: VecDeque::new(), bytes: 0 };
        let mut reports = VecDeque::new();
        let mut damaged = 0;
        for (seq, path) in files {
            let data = std::fs::read(&path).unwrap_or_default();
            let legacy = path.extension().is_some_and(|e| e == "pb");
            match spool_file(&data, legacy, seq, epoch) {
                SpoolFile::Report(p) => {
                    if legacy {
                        spool.write(seq, p)?;
                        let _ = std::fs::remove_file(&path);
                    } else {
                        spool.files.push_back((seq, data.len() as u64));
                        spool.bytes += data.len() as u64;
                    }
                    next = next.max(seq + 1);
                    reports.push_back(Encoded { sequence: seq, bytes: bytes::Bytes::copy_from_slice(p) });
                }
                SpoolFile::Foreign => {
                    log::warn!("spool: {} is from another epoch or misnamed; removed", path.display());
                    let _ = std::fs::remove_file(&path);
                }
                SpoolFile::Damaged => {
                    damaged += 1;
                    log::warn!("spool: {} is damaged (checksum or format); skipped and removed", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        spool.write_state(epoch, next)?;
        Ok((spool, epoch, next, reports, damaged))
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.hps"))
    }

    fn write_state(&self, epoch: u64, next: u64) -> anyhow::Result<()> {
        let tmp = self.dir.join("state.tmp");
        std::fs::write(&tmp, format!("{epoch} {next}\n")).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join("state")).context("replacing the spool state")
    }

    /// Writes report `seq` durably: a temporary file, synced, renamed, and
    /// the directory synced. A failure leaves nothing half-written behind.
    fn write(&mut self, seq: u64, report: &[u8]) -> std::io::Result<()> {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        let (path, framed) = (self.path(seq), crate::wire::frame(report));
        let tmp = path.with_extension("tmp");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&framed).and_then(|()| f.sync_data()))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.files.push_back((seq, framed.len() as u64));
        self.bytes += framed.len() as u64;
        Ok(())
    }

    /// Spools report `sequence`; the state first (a next sequence ahead of
    /// the files is harmless), so that a failure leaves nothing to undo.
    fn add(&mut self, sequence: u64, bytes: &[u8], epoch: u64, next: u64) -> anyhow::Result<()> {
        self.write_state(epoch, next)?;
        self.write(sequence, bytes).with_context(|| format!("writing {}", self.path(sequence).display()))
    }

    fn over_cap(&self) -> bool {
        self.bytes > self.max_bytes
    }

    fn remove(&mut self, seq: u64) {
        while self.files.front().is_some_and(|(s, _)| *s <= seq) {
            let (s, len) = self.files.pop_front().expect("checked");
            self.bytes -= len;
            let _ = std::fs::remove_file(self.path(s));
        }
    }
}

/// Sends reports encoded already; decodes acknowledgements.
#[derive(Clone, Copy)]
struct EncodedCodec;

impl tonic::codec::Codec for EncodedCodec {
    type Encode = bytes::Bytes;
    type Decode = pb::Ack;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;
    fn encoder(&mut self) -> EncodedCodec {
        *self
    }
    fn decoder(&mut self) -> EncodedCodec {
        *self
    }
}

impl tonic::codec::Encoder for EncodedCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: bytes::Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for EncodedCodec {
    type Item = pb::Ack;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<pb::Ack>, tonic::Status> {
        pb::Ack::decode(src).map(Some).map_err(|e| tonic::Status::internal(format!("bad acknowledgement: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use proptest::{collection::vec, prelude::*};

    use super::*;
    use crate::wire::fuzzing::{self, damage};

    /// Spool file 3 of epoch 7, as [`Spool::write`] frames it.
    fn file() -> (Vec<u8>, Vec<u8>) {
        let report = fuzzing::sample_report(3, 7, 1_800_000_000_000_000_000).encode_to_vec();
        (crate::wire::frame(&report), report)
    }

    #[test]
    fn a_spool_file_is_read_back_only_under_its_own_name_and_epoch() {
        let (data, report) = file();
        assert_eq!(spool_file(&data, false, 3, 7), SpoolFile::Report(&report));
        assert_eq!(spool_file(&report, true, 3, 7), SpoolFile::Report(&report));
        assert_eq!(spool_file(&data, false, 4, 7), SpoolFile::Foreign);
        assert_eq!(spool_file(&data, false, 3, 8), SpoolFile::Foreign);
        assert_eq!(spool_file(&data[..data.len() - 1], false, 3, 7), SpoolFile::Damaged);
    }

    proptest! {
        #![proptest_config(fuzzing::config(2_000))]

        /// Any bytes as a spool file, framed or legacy: no panic, and a
        /// report is taken only if it is the one the name and epoch say.
        #[test]
        fn fuzz_spool_bytes(data in vec(any::<u8>(), 0..2048), legacy: bool, seq in 0..4u64, epoch in 0..4u64) {
            if let SpoolFile::Report(p) = spool_file(&data, legacy, seq, epoch) {
                let r = pb::Report::decode(p).unwrap();
                prop_assert_eq!((r.sequence, r.agent.map(|a| a.epoch)), (seq, Some(epoch)));
            }
        }

        /// A real spool file damaged once: refused as damaged, unless its
        /// record is still whole at its start (bytes added after it, or a
        /// byte inserted just before an equal one at its end).
        #[test]
        fn fuzz_spool_damaged(d in damage()) {
            let (framed, report) = file();
            let mut data = framed.clone();
            let hit = d.apply(&mut data);
            let got = spool_file(&data, false, 3, 7);
            if data.starts_with(&framed) {
                prop_assert_eq!(got, SpoolFile::Report(&report));
            } else {
                prop_assert_eq!(got, SpoolFile::Damaged, "damage at {:?} unnoticed", hit);
            }
        }
    }
}
