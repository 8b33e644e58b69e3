//! What the collector keeps: per agent, the sequences it acknowledged and a
//! window of its reports, twice over:
//! - merged exactly ([`super::rollup`]): the current minute merged as its
//!   reports arrive, then one report per minute for the last [`FINE`], then
//!   one per [`COARSE`], up to `--retention`; closed ones deflated;
//! - as received (snappy), for the last `--full-resolution`, as memory
//!   allows: a query whose window they cover whole is answered from them,
//!   at the agents' own intervals.
//!
//! Over all agents, the window is bounded by `--max-memory`: past it the
//! reports as received go first (oldest first; the minutes still hold
//! them), then the oldest buckets, counted, and every answer says from when
//! the collector holds everything it received.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use prost::Message as _;

use super::{
    query::{Packing, Part},
    rollup,
};
use crate::wire::pb;

/// The span of a bucket that reports are merged into as they arrive.
pub const MINUTE: i64 = 60_000_000_000;
/// How long buckets stay a minute long.
pub const FINE: i64 = 10 * MINUTE;
/// The span of older buckets.
pub const COARSE: i64 = 10 * MINUTE;

pub struct Limits {
    pub retention: Duration,
    pub max_memory: usize,
    pub max_agents: usize,
    pub rate: f64,
    pub burst: f64,
    pub max_age: Duration,
    pub max_future: Duration,
    pub full_resolution: Duration,
}

/// One agent as the collector knows it.
pub struct AgentState {
    /// Highest sequence stored, per epoch (a few recent epochs).
    acked: VecDeque<(u64, u64)>,
    /// Closed buckets, oldest first.
    window: VecDeque<Bucket>,
    /// The current minute's reports, merged as they arrive.
    open: Option<Open>,
    /// Reports as received, in arrival order, and the latest interval end
    /// of one dropped from them (or never put there).
    raw: VecDeque<Raw>,
    raw_dropped_to: i64,
    tokens: f64,
    refilled: Instant,
    last_seen: Instant,
}

impl AgentState {
    fn new(burst: f64) -> Self {
        let now = Instant::now();
        Self {
            acked: VecDeque::new(),
            window: VecDeque::new(),
            open: None,
            raw: VecDeque::new(),
            raw_dropped_to: i64::MIN,
            tokens: burst,
            refilled: now,
            last_seen: now,
        }
    }

    pub fn acked(&self, epoch: u64) -> u64 {
        self.acked.iter().find(|(e, _)| *e == epoch).map_or(0, |(_, s)| *s)
    }

    fn set_acked(&mut self, epoch: u64, seq: u64) {
        match self.acked.iter_mut().find(|(e, _)| *e == epoch) {
            Some(a) => a.1 = a.1.max(seq),
            None => {
                self.acked.push_back((epoch, seq));
                if self.acked.len() > 8 {
                    self.acked.pop_front();
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.window.is_empty() && self.open.is_none() && self.raw.is_empty()
    }
}

/// One report as received, snappy compressed (deflate would cost a
/// 1,000-agent collector half a core).
struct Raw {
    from_ns: i64,
    to_ns: i64,
    packed: Arc<[u8]>,
}

/// Reports of one agent merged into one, for a span of time.
pub struct Bucket {
    /// The span: `[start_ns, start_ns + span_ns)` holds the reports'
    /// interval ends.
    start_ns: i64,
    span_ns: i64,
    /// The earliest interval start and the latest end merged.
    pub from_ns: i64,
    pub to_ns: i64,
    /// Reports merged.
    pub reports: u64,
    /// The merged report, encoded, deflated.
    pub deflated: Arc<[u8]>,
}

impl Bucket {
    fn seal(start_ns: i64, span_ns: i64, r: &pb::Report, reports: u64) -> Self {
        Bucket {
            start_ns,
            span_ns,
            from_ns: r.interval_start_unix_ns,
            to_ns: r.interval_end_unix_ns,
            reports,
            deflated: super::journal::deflate(&r.encode_to_vec()).into(),
        }
    }

    fn report(&self) -> Option<pb::Report> {
        pb::Report::decode(&super::journal::inflate(&self.deflated, super::journal::REPORT_MAX)?[..]).ok()
    }

    fn part(&self) -> Part {
        Part {
            bytes: self.deflated.clone(),
            packing: Packing::Deflate,
            reports: self.reports,
            from_ns: self.from_ns,
            to_ns: self.to_ns,
        }
    }
}

/// The bucket being filled.
struct Open {
    start_ns: i64,
    report: pb::Report,
    reports: u64,
    /// Its size as counted: the encoded length of the largest report
    /// merged into it (walking the merged report for its exact length at
    /// every merge would cost a 1,000-agent collector a tenth of a core;
    /// merging adds counts, and items only where they are new).
    size: usize,
}

/// Why a report is not taken.
pub enum Refused {
    /// Already stored: acknowledge it again.
    Duplicate,
    /// At `--max-agents`, none idle.
    Full,
    /// Over `--rate`.
    Rate,
}

fn align(ns: i64, span: i64) -> i64 {
    ns.div_euclid(span) * span
}

#[derive(Default)]
pub struct Store {
    pub agents: HashMap<String, AgentState>,
    /// Bytes the windows take (closed buckets and reports as received, as
    /// kept; open minutes, encoded).
    pub bytes: usize,
    /// (agent, size) of every report kept as received, in arrival order:
    /// each agent's entries are in the order of its `raw`.
    raw_order: VecDeque<(String, usize)>,
    pub rejected: u64,
    /// Keeps the log of rejections bounded.
    pub reject_log: super::service::RejectLog,
    pub evicted_agents: u64,
    /// Since when this collector holds every report it received: its start,
    /// or the oldest report its journal replayed.
    pub holding_since_ns: i64,
    /// The latest end of a bucket dropped for `--max-memory`, and the
    /// reports dropped so.
    pub evicted_to_ns: i64,
    pub evicted_reports: u64,
    /// Reports older than the retention when they arrived (acknowledged,
    /// not kept).
    pub too_old: u64,
}

impl Store {
    pub fn new(holding_since_ns: i64) -> Self {
        Store { holding_since_ns, evicted_to_ns: i64::MIN, ..Default::default() }
    }

    /// Whether report `seq` of (`id`, `epoch`) may be journaled and kept:
    /// the agent's cap, its rate, and duplicates.
    pub fn admit(&mut self, id: &str, epoch: u64, seq: u64, limits: &Limits) -> Result<(), Refused> {
        if !self.agents.contains_key(id) && self.agents.len() >= limits.max_agents {
            self.evict_idle(limits.retention);
            if self.agents.len() >= limits.max_agents {
                return Err(Refused::Full);
            }
        }
        let state = self.agents.entry(id.to_string()).or_insert_with(|| AgentState::new(limits.burst));
        // Token bucket: sustained --rate, bursts up to --burst.
        let t = Instant::now();
        state.tokens = (state.tokens + t.duration_since(state.refilled).as_secs_f64() * limits.rate).min(limits.burst);
        state.refilled = t;
        state.last_seen = t;
        if state.tokens < 1.0 {
            return Err(Refused::Rate);
        }
        state.tokens -= 1.0;
        if seq <= state.acked(epoch) {
            return Err(Refused::Duplicate);
        }
        Ok(())
    }

    /// Records report `r` (`seq` of (`id`, `epoch`); `encoded`, its bytes)
    /// as stored, merges it into its agent's window (unless it already is:
    /// two streams of one agent may race), and keeps it as received if it
    /// is recent. A report whose minute is closed (an agent catching up) is
    /// merged into the bucket that holds its minute.
    pub fn keep(&mut self, id: &str, epoch: u64, seq: u64, r: &pb::Report, encoded: &[u8], limits: &Limits) {
        let state = self.agents.entry(id.to_string()).or_insert_with(|| AgentState::new(limits.burst));
        if seq <= state.acked(epoch) {
            return;
        }
        state.set_acked(epoch, seq);
        let now = crate::metrics::now_unix_ns();
        if r.interval_end_unix_ns < now - limits.retention.as_nanos() as i64 {
            self.too_old += 1;
            return;
        }
        let recent = r.interval_end_unix_ns >= now - limits.full_resolution.as_nanos() as i64;
        // (Snappy refuses only inputs past 4 GiB.)
        if let Some(packed) = recent.then(|| snap::raw::Encoder::new().compress_vec(encoded).ok()).flatten() {
            self.bytes += packed.len();
            self.raw_order.push_back((id.to_string(), packed.len()));
            let (from_ns, to_ns) = (r.interval_start_unix_ns, r.interval_end_unix_ns);
            state.raw.push_back(Raw { from_ns, to_ns, packed: packed.into() });
        } else {
            state.raw_dropped_to = state.raw_dropped_to.max(r.interval_end_unix_ns);
        }
        let minute = align(r.interval_end_unix_ns, MINUTE);
        // Late: its minute is closed (an agent catching up, or a report
        // that arrived after its minute was closed for quiet).
        let late = match &state.open {
            Some(o) => minute < o.start_ns,
            None => state.window.back().is_some_and(|b| minute < b.start_ns + b.span_ns),
        };
        match &mut state.open {
            Some(o) if o.start_ns == minute => {
                rollup::merge(&mut o.report, r);
                o.reports += 1;
                let size = o.size.max(encoded.len());
                self.bytes = self.bytes + size - o.size;
                o.size = size;
            }
            _ if late => {
                // Into the closed bucket of its minute, or a new one.
                let at = state.window.partition_point(|b| b.start_ns + b.span_ns <= r.interval_end_unix_ns);
                let old = state.window.get(at).filter(|b| b.start_ns <= r.interval_end_unix_ns);
                let (start, span, merged, reports, before) = match old.and_then(|b| Some((b, b.report()?))) {
                    Some((b, mut m)) => {
                        rollup::merge(&mut m, r);
                        (b.start_ns, b.span_ns, m, b.reports + 1, b.deflated.len())
                    }
                    None => (minute, MINUTE, r.clone(), 1, 0),
                };
                let bucket = Bucket::seal(start, span, &merged, reports);
                self.bytes = self.bytes + bucket.deflated.len() - before;
                if before > 0 {
                    state.window[at] = bucket;
                } else {
                    state.window.insert(at, bucket);
                }
            }
            _ => {
                let size = encoded.len();
                self.bytes += size;
                let open = Open { start_ns: minute, report: r.clone(), reports: 1, size };
                if let Some(o) = state.open.replace(open) {
                    let bucket = Bucket::seal(o.start_ns, MINUTE, &o.report, o.reports);
                    self.bytes = self.bytes + bucket.deflated.len() - o.size;
                    state.window.push_back(bucket);
                }
            }
        }
        self.shrink(now, limits);
    }

    /// Drops reports as received past `--full-resolution`, then, while the
    /// windows take more than `--max-memory`, reports as received (oldest
    /// first), then the oldest closed buckets over all agents: these are
    /// counted, and said in answers.
    pub fn shrink(&mut self, now: i64, limits: &Limits) {
        let oldest = now - limits.full_resolution.as_nanos() as i64;
        while let Some((id, len)) = self.raw_order.front() {
            let len = *len;
            let Some(agent) = self.agents.get_mut(id) else {
                self.raw_order.pop_front();
                continue;
            };
            let Some(front) = agent.raw.front() else {
                self.raw_order.pop_front();
                continue;
            };
            if self.bytes <= limits.max_memory && front.to_ns >= oldest {
                break;
            }
            agent.raw_dropped_to = agent.raw_dropped_to.max(front.to_ns);
            agent.raw.pop_front();
            self.raw_order.pop_front();
            self.bytes -= len;
        }
        while self.bytes > limits.max_memory {
            let oldest =
                self.agents.values_mut().filter_map(|a| Some((a.window.front()?.to_ns, a))).min_by_key(|(to, _)| *to);
            let Some((_, agent)) = oldest else { return };
            let b = agent.window.pop_front().expect("a front");
            self.bytes -= b.deflated.len();
            self.evicted_to_ns = self.evicted_to_ns.max(b.to_ns);
            self.evicted_reports += b.reports;
        }
    }

    /// For agent `id`, at `now`: closes an open minute that has passed
    /// (its agent went quiet), merges minute buckets older than [`FINE`]
    /// into [`COARSE`] ones, and drops buckets past the retention.
    pub fn maintain(&mut self, id: &str, now: i64, limits: &Limits) {
        let Some(state) = self.agents.get_mut(id) else { return };
        let mut bytes = self.bytes;
        if state.open.as_ref().is_some_and(|o| o.start_ns + MINUTE <= now) {
            let o = state.open.take().expect("open");
            let bucket = Bucket::seal(o.start_ns, MINUTE, &o.report, o.reports);
            bytes = bytes + bucket.deflated.len() - o.size;
            state.window.push_back(bucket);
        }
        let oldest = now - limits.retention.as_nanos() as i64;
        while state.window.front().is_some_and(|b| b.to_ns < oldest) {
            bytes -= state.window.pop_front().expect("a front").deflated.len();
        }
        // Minute buckets whose whole coarse span is older than FINE.
        let mut out: VecDeque<Bucket> = VecDeque::with_capacity(state.window.len());
        let mut pending: Option<(Bucket, pb::Report)> = None;
        let mut added = 0;
        let mut flush = |pending: &mut Option<(Bucket, pb::Report)>, out: &mut VecDeque<Bucket>| {
            if let Some((p, m)) = pending.take() {
                let b = Bucket::seal(p.start_ns, COARSE, &m, p.reports);
                added += b.deflated.len();
                out.push_back(b);
            }
        };
        for b in state.window.drain(..) {
            let coarse = align(b.start_ns, COARSE);
            if b.span_ns != MINUTE || coarse + COARSE > now - FINE {
                flush(&mut pending, &mut out);
                out.push_back(b);
                continue;
            }
            bytes -= b.deflated.len();
            let Some(r) = b.report() else { continue };
            match &mut pending {
                Some((p, m)) if p.start_ns == coarse => {
                    rollup::merge(m, &r);
                    p.reports += b.reports;
                }
                _ => {
                    flush(&mut pending, &mut out);
                    pending = Some((Bucket { start_ns: coarse, span_ns: COARSE, ..b }, r));
                }
            }
        }
        flush(&mut pending, &mut out);
        bytes += added;
        state.window = out;
        self.bytes = bytes;
        self.shrink(now, limits);
    }

    /// Forgets agents that sent nothing for `idle` and have nothing kept.
    /// Only unacknowledged reports are ever sent again, so forgetting what
    /// such an agent had acknowledged lets nothing in twice (but a report
    /// whose acknowledgement was lost on the way, resent after `idle`).
    pub fn evict_idle(&mut self, idle: Duration) {
        let before = self.agents.len();
        self.agents.retain(|_, a| !a.is_empty() || a.last_seen.elapsed() < idle);
        self.evicted_agents += (before - self.agents.len()) as u64;
    }

    /// Every agent's reports ending at or after `since`: as received if
    /// those kept cover it whole, else its buckets (the open one encoded
    /// now). Shared, not copied, so that a query inflates and decodes them
    /// without holding the store.
    pub fn snapshot(&self, since: i64) -> Vec<(String, Vec<Part>)> {
        self.agents
            .iter()
            .map(|(id, a)| {
                if since > a.raw_dropped_to {
                    let parts = a.raw.iter().filter(|r| r.to_ns >= since).map(|r| Part {
                        bytes: r.packed.clone(),
                        packing: Packing::Snappy,
                        reports: 1,
                        from_ns: r.from_ns,
                        to_ns: r.to_ns,
                    });
                    return (id.clone(), parts.collect());
                }
                let mut parts: Vec<Part> = a.window.iter().filter(|b| b.to_ns >= since).map(Bucket::part).collect();
                parts.extend(a.open.as_ref().filter(|o| o.report.interval_end_unix_ns >= since).map(|o| Part {
                    bytes: o.report.encode_to_vec().into(),
                    packing: Packing::Plain,
                    reports: o.reports,
                    from_ns: o.report.interval_start_unix_ns,
                    to_ns: o.report.interval_end_unix_ns,
                }));
                (id.clone(), parts)
            })
            .collect()
    }

    /// The window's size: agents, reports kept, closed buckets, open
    /// minutes, and bytes, for the log.
    pub fn summary(&self) -> String {
        let buckets: usize = self.agents.values().map(|a| a.window.len()).sum();
        let open = self.agents.values().filter(|a| a.open.is_some()).count();
        let reports: u64 = self
            .agents
            .values()
            .map(|a| a.window.iter().map(|b| b.reports).sum::<u64>() + a.open.as_ref().map_or(0, |o| o.reports))
            .sum();
        let closed: usize = self.agents.values().flat_map(|a| &a.window).map(|b| b.deflated.len()).sum();
        let raw: usize = self.raw_order.iter().map(|(_, len)| len).sum();
        format!(
            "window: {} agents, {reports} reports kept in {buckets} closed buckets ({closed} bytes deflated) and {open} \
             open minutes ({} bytes encoded), and {} as received ({raw} bytes snappy), {} bytes in all; {} \
             reports dropped for --max-memory, {} too old",
            self.agents.len(),
            self.bytes - closed - raw,
            self.raw_order.len(),
            self.bytes,
            self.evicted_reports,
            self.too_old
        )
    }

    /// Since when this collector holds everything it received (neither
    /// started later nor dropped anything for memory since).
    pub fn complete_from(&self) -> i64 {
        self.holding_since_ns.max(self.evicted_to_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_agents: usize) -> Limits {
        Limits {
            retention: Duration::from_millis(50),
            max_memory: 1 << 20,
            max_agents,
            rate: 1000.0,
            burst: 1000.0,
            max_age: Duration::from_secs(3600),
            max_future: Duration::from_secs(60),
            full_resolution: Duration::ZERO,
        }
    }

    /// Report `seq` of agent `id`, one second long, ending at `end_ns`.
    fn report(id: &str, seq: u64, end_ns: i64) -> pb::Report {
        let mut r = crate::wire::fuzzing::sample_report(seq, 1, end_ns);
        r.interval_start_unix_ns = end_ns - 1_000_000_000;
        r.agent.as_mut().expect("an identity").agent_id = id.into();
        r
    }

    fn keep(s: &mut Store, id: &str, seq: u64, end_ns: i64, l: &Limits) {
        assert!(s.admit(id, 1, seq, l).is_ok());
        let r = report(id, seq, end_ns);
        s.keep(id, 1, seq, &r, &r.encode_to_vec(), l);
    }

    /// Syscall calls in `parts`, as a query counts them.
    fn calls(parts: &[Part]) -> u64 {
        parts
            .iter()
            .flat_map(|p| p.report().expect("decodes").processes)
            .flat_map(|p| p.syscalls)
            .map(|s| s.count)
            .sum()
    }

    fn hour() -> Limits {
        Limits { retention: Duration::from_secs(3600), max_memory: 1 << 30, ..limits(10) }
    }

    #[test]
    fn reports_merge_per_minute_then_per_ten_and_count_the_same() {
        let l = hour();
        let now = crate::metrics::now_unix_ns();
        let start = align(now, COARSE) - 4 * COARSE;
        let mut s = Store::new(start);
        // 30 minutes, a report every 20 s.
        let ends: Vec<i64> = (1..=90).map(|i| start + i * 20_000_000_000).filter(|e| *e <= now).collect();
        for (i, end) in ends.iter().enumerate() {
            keep(&mut s, "a", i as u64 + 1, *end, &l);
        }
        let one = calls(&[Part::whole(report("a", 1, 0).encode_to_vec().into())]);
        let whole = calls(&s.snapshot(i64::MIN)[0].1);
        assert_eq!(whole, one * ends.len() as u64);
        let kept = |s: &Store| {
            let a = &s.agents["a"];
            a.window.iter().map(|b| b.deflated.len()).sum::<usize>()
                + a.open.as_ref().map_or(0, |o| o.size)
                + a.raw.iter().map(|r| r.packed.len()).sum::<usize>()
        };
        assert_eq!(s.bytes, kept(&s), "memory accounted");
        s.maintain("a", now, &l);
        let parts = &s.snapshot(i64::MIN)[0].1;
        assert_eq!(parts.iter().map(|p| p.reports).sum::<u64>(), ends.len() as u64);
        assert_eq!(calls(parts), whole, "merged exactly");
        let a = &s.agents["a"];
        // Everything older than FINE in ten-minute buckets, the rest per minute.
        for b in &a.window {
            let old = align(b.start_ns, COARSE) + COARSE <= now - FINE;
            assert_eq!(b.span_ns, if old { COARSE } else { MINUTE }, "bucket at {}", b.start_ns);
        }
        assert!(a.window.iter().any(|b| b.span_ns == COARSE) && a.window.iter().any(|b| b.span_ns == MINUTE));
        assert_eq!(s.bytes, kept(&s), "memory accounted");
        // A late report joins its (ten-minute) bucket.
        keep(&mut s, "a", 1_000, start + 30_000_000_000, &l);
        let parts = &s.snapshot(i64::MIN)[0].1;
        assert_eq!(calls(parts), whole + one);
        assert_eq!(parts.len(), s.agents["a"].window.len() + usize::from(s.agents["a"].open.is_some()));
    }

    #[test]
    fn past_the_memory_cap_the_oldest_go_and_answers_say_so() {
        let now = crate::metrics::now_unix_ns();
        let start = align(now, MINUTE) - 20 * MINUTE;
        let mut s = Store::new(start);
        let l = hour();
        for m in 0..20 {
            keep(&mut s, "a", m as u64 + 1, start + m * MINUTE + 1, &l);
            keep(&mut s, "b", m as u64 + 1, start + m * MINUTE + 2, &l);
        }
        assert_eq!(s.complete_from(), start);
        let per_agent = s.bytes / 2;
        let l = Limits { max_memory: per_agent, ..l };
        keep(&mut s, "a", 100, now, &l);
        assert!(s.bytes <= per_agent, "{} > {per_agent}", s.bytes);
        assert!(s.evicted_reports >= 20, "{}", s.evicted_reports);
        let from = s.complete_from();
        assert!(from > start + 9 * MINUTE, "complete only from the newest bucket dropped");
        // What is left is what came after.
        let left: u64 = s.snapshot(i64::MIN).iter().flat_map(|(_, p)| p).map(|p| p.reports).sum();
        assert_eq!(left + s.evicted_reports, 41);
        assert!(s.snapshot(i64::MIN).iter().flat_map(|(_, p)| p).all(|p| p.from_ns >= from - 2 * MINUTE));
    }

    #[test]
    fn recent_windows_are_answered_from_the_reports_as_received() {
        let l = Limits { full_resolution: Duration::from_secs(120), ..hour() };
        let now = crate::metrics::now_unix_ns();
        let mut s = Store::new(now - 10 * MINUTE);
        // A report a second for the last 4 minutes.
        let ends: Vec<i64> = (0..240).rev().map(|i| now - i * 1_000_000_000).collect();
        for (i, end) in ends.iter().enumerate() {
            keep(&mut s, "a", i as u64 + 1, *end, &l);
        }
        let one = calls(&[Part::whole(report("a", 1, 0).encode_to_vec().into())]);
        // The last 30 s: exactly the reports that end in it, one part each.
        let since = now - 30_500_000_000;
        let parts = &s.snapshot(since)[0].1;
        let want = ends.iter().filter(|e| **e >= since).count();
        assert_eq!((parts.len(), calls(parts)), (want, one * want as u64));
        assert!(parts.iter().all(|p| p.reports == 1 && p.to_ns >= since));
        // Past --full-resolution: the minutes, whole.
        let since = now - 150_000_000_000;
        let parts = &s.snapshot(since)[0].1;
        assert!(parts.iter().all(|p| p.reports > 1 || p.from_ns == p.to_ns - 1_000_000_000), "buckets");
        let reports: u64 = parts.iter().map(|p| p.reports).sum();
        assert!(reports >= ends.iter().filter(|e| **e >= since).count() as u64);
        assert_eq!(calls(parts), one * reports);
        // Memory for the minutes, not for the reports as received: those go
        // first, and the windows they no longer cover whole come from the minutes.
        let minutes = s.bytes - s.raw_order.iter().map(|(_, l)| l).sum::<usize>();
        s.shrink(now, &Limits { max_memory: minutes + 500, ..l });
        assert_eq!(s.evicted_reports, 0, "no minute dropped");
        let since = now - 30_500_000_000;
        let parts = &s.snapshot(since)[0].1;
        assert!(parts.iter().any(|p| p.reports > 1), "from the minutes");
        assert_eq!(calls(parts), one * parts.iter().map(|p| p.reports).sum::<u64>());
    }

    #[test]
    fn idle_agents_make_room_for_new_ones() {
        let l = limits(2);
        let now = crate::metrics::now_unix_ns();
        let mut s = Store::new(now);
        for id in ["a", "b"] {
            keep(&mut s, id, 1, now - 10_000_000_000, &l);
        }
        // Their reports are older than the retention: not kept.
        assert!(s.agents.values().all(AgentState::is_empty));
        assert_eq!(s.too_old, 2);
        assert!(matches!(s.admit("c", 1, 1, &l), Err(Refused::Full)), "a and b were seen just now");
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.admit("c", 1, 1, &l).is_ok(), "a and b idle past the retention");
        assert_eq!(s.evicted_agents, 2);
        // A duplicate is refused as such.
        let r = report("c", 1, now);
        s.keep("c", 1, 1, &r, &r.encode_to_vec(), &l);
        assert!(matches!(s.admit("c", 1, 1, &l), Err(Refused::Duplicate)));
    }
}
