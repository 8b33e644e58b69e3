//! Reports merged exactly: one report of an agent standing for several of
//! its intervals. Counts, bytes and times add; histograms add bucket by
//! bucket (their sums only where every part had one); maxima are the
//! largest; names, states and last values are the newest. Items match by
//! what identifies them: a process by (pid, name), a syscall by number, a
//! disk item by (device, operation), a connection by (remote, local,
//! direction), a probe by name.
//!
//! This is how the collector's window holds an hour of a large fleet: it
//! keeps each agent's reports merged per minute, then per ten minutes, and
//! a query over merged reports answers exactly what it would over the
//! reports themselves (`a_merged_window_answers_as_its_reports_do`).

use crate::wire::pb;

/// Adds `b` into `a` (both checked by the collector: same layout, buckets
/// in range).
fn histogram(a: &mut Option<pb::Histogram>, b: &Option<pb::Histogram>) {
    let Some(b) = b else { return };
    let Some(h) = a else {
        *a = Some(b.clone());
        return;
    };
    if h.bucket == b.bucket {
        // The common case: an agent's histogram keeps its buckets.
        h.count.iter_mut().zip(&b.count).for_each(|(x, y)| *x = x.saturating_add(*y));
    } else {
        let mut pairs: Vec<(u32, u64)> = h.bucket.iter().copied().zip(h.count.iter().copied()).collect();
        pairs.extend(b.bucket.iter().copied().zip(b.count.iter().copied()));
        pairs.sort_by_key(|(bucket, _)| *bucket);
        h.bucket.clear();
        h.count.clear();
        for (bucket, count) in pairs {
            match h.bucket.last() {
                Some(last) if *last == bucket => {
                    let c = h.count.last_mut().expect("as many counts as buckets");
                    *c = c.saturating_add(count);
                }
                _ => {
                    h.bucket.push(bucket);
                    h.count.push(count);
                }
            }
        }
    }
    h.max_ns = h.max_ns.max(b.max_ns);
    h.sum_ns = h.sum_ns.zip(b.sum_ns).map(|(x, y)| x.saturating_add(y));
}

fn add(a: &mut u64, b: u64) {
    *a = a.saturating_add(b);
}

/// The newest non-empty value of a name or label.
fn newest(a: &mut String, b: &str) {
    if !b.is_empty() && a != b {
        *a = b.to_string();
    }
}

/// Merges `from` into `into`, item by item, matched by `same` (first at
/// the same place: an agent lists its items in the same order).
fn items<T: Clone>(into: &mut Vec<T>, from: &[T], same: impl Fn(&T, &T) -> bool, merge: impl Fn(&mut T, &T)) {
    for (i, b) in from.iter().enumerate() {
        let at = match into.get(i) {
            Some(a) if same(a, b) => Some(i),
            _ => into.iter().position(|a| same(a, b)),
        };
        match at {
            Some(at) => merge(&mut into[at], b),
            None => into.push(b.clone()),
        }
    }
}

fn disk(a: &mut pb::DiskStats, b: &pb::DiskStats) {
    add(&mut a.count, b.count);
    add(&mut a.bytes, b.bytes);
    add(&mut a.errors, b.errors);
    add(&mut a.merged, b.merged);
    histogram(&mut a.queue, &b.queue);
    histogram(&mut a.service, &b.service);
    histogram(&mut a.total, &b.total);
}

fn tcp(a: &mut pb::TcpStats, b: &pb::TcpStats) {
    newest(&mut a.state, &b.state);
    histogram(&mut a.rtt, &b.rtt);
    if b.rtt_last_us != 0 {
        a.rtt_last_us = b.rtt_last_us;
    }
    histogram(&mut a.connect, &b.connect);
    add(&mut a.refused, b.refused);
    add(&mut a.timeouts, b.timeouts);
    add(&mut a.retransmits, b.retransmits);
    add(&mut a.resets, b.resets);
    add(&mut a.bytes_sent, b.bytes_sent);
    add(&mut a.bytes_received, b.bytes_received);
    add(&mut a.connections, b.connections);
}

fn same_tcp(a: &pb::TcpStats, b: &pb::TcpStats) -> bool {
    a.remote == b.remote && a.local == b.local && a.direction == b.direction
}

fn same_disk(a: &pb::DiskStats, b: &pb::DiskStats) -> bool {
    a.device == b.device && a.op == b.op
}

fn process(a: &mut pb::Process, b: &pb::Process) {
    newest(&mut a.exe, &b.exe);
    newest(&mut a.cgroup, &b.cgroup);
    newest(&mut a.container_id, &b.container_id);
    newest(&mut a.cmdline, &b.cmdline);
    newest(&mut a.k8s_namespace_name, &b.k8s_namespace_name);
    newest(&mut a.k8s_pod_name, &b.k8s_pod_name);
    newest(&mut a.k8s_container_name, &b.k8s_container_name);
    a.exited |= b.exited;
    a.merged = a.merged.max(b.merged);
    items(
        &mut a.syscalls,
        &b.syscalls,
        |a, b| a.nr == b.nr,
        |a, b| {
            newest(&mut a.name, &b.name);
            add(&mut a.count, b.count);
            add(&mut a.errors, b.errors);
            add(&mut a.total_ns, b.total_ns);
            add(&mut a.missed_starts, b.missed_starts);
            histogram(&mut a.latency, &b.latency);
        },
    );
    items(&mut a.disk, &b.disk, same_disk, disk);
    if let Some(bo) = &b.offcpu {
        let ao = a.offcpu.get_or_insert_with(Default::default);
        add(&mut ao.on_cpu_ns, bo.on_cpu_ns);
        add(&mut ao.runqueue_ns, bo.runqueue_ns);
        add(&mut ao.blocked_io_ns, bo.blocked_io_ns);
        add(&mut ao.sleep_ns, bo.sleep_ns);
        histogram(&mut ao.runqueue, &bo.runqueue);
        histogram(&mut ao.offcpu, &bo.offcpu);
        items(
            &mut ao.sleep_by_syscall,
            &bo.sleep_by_syscall,
            |a, b| a.name == b.name,
            |a, b| {
                add(&mut a.ns, b.ns);
                add(&mut a.count, b.count);
            },
        );
    }
    items(&mut a.tcp, &b.tcp, same_tcp, tcp);
}

/// Adds report `b` into `a`, both of one agent: `a` then covers both
/// intervals (from the earliest start to the latest end).
pub fn merge(a: &mut pb::Report, b: &pb::Report) {
    if b.agent.is_some() && b.sequence >= a.sequence {
        a.agent.clone_from(&b.agent);
    }
    a.sequence = a.sequence.max(b.sequence);
    a.interval_start_unix_ns = a.interval_start_unix_ns.min(b.interval_start_unix_ns);
    a.interval_end_unix_ns = a.interval_end_unix_ns.max(b.interval_end_unix_ns);
    // Processes by (pid, name): at the same place if there, else through
    // an index (a linear search per process would be quadratic in a
    // host's processes).
    let mut index: Option<std::collections::HashMap<(u32, String), usize>> = None;
    for (i, p) in b.processes.iter().enumerate() {
        if a.processes.get(i).is_some_and(|q| q.pid == p.pid && q.comm == p.comm) {
            process(&mut a.processes[i], p);
            continue;
        }
        let at = index
            .get_or_insert_with(|| a.processes.iter().enumerate().map(|(i, p)| ((p.pid, p.comm.clone()), i)).collect());
        match at.get(&(p.pid, p.comm.clone())) {
            Some(i) => process(&mut a.processes[*i], p),
            None => {
                at.insert((p.pid, p.comm.clone()), a.processes.len());
                a.processes.push(p.clone());
            }
        }
    }
    if let Some(o) = &b.other {
        match &mut a.other {
            Some(a) => process(a, o),
            None => a.other = Some(o.clone()),
        }
    }
    items(&mut a.devices, &b.devices, same_disk, disk);
    items(
        &mut a.probes,
        &b.probes,
        |a, b| a.name == b.name,
        |a, b| {
            a.active = b.active;
            a.error.clone_from(&b.error);
            add(&mut a.lost, b.lost);
        },
    );
    add(&mut a.dropped_reports, b.dropped_reports);
    items(&mut a.tcp_unknown_owner, &b.tcp_unknown_owner, same_tcp, tcp);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message as _;

    use super::*;
    use crate::wire::{fuzzing::sample_report, pb::query_request::By};

    /// Three reports of one agent whose processes, syscalls and histograms
    /// overlap in part.
    fn reports() -> Vec<pb::Report> {
        (1..=3)
            .map(|seq| {
                let mut r = sample_report(seq, 1, 1_000_000_000 * seq as i64);
                r.interval_start_unix_ns = r.interval_end_unix_ns - 1_000_000_000;
                for (i, p) in r.processes.iter_mut().enumerate() {
                    // A process that exists in one report only, another in all.
                    p.pid += if i == 0 { 0 } else { seq as u32 * 100 };
                    for s in &mut p.syscalls {
                        s.count *= seq;
                        if let Some(h) = &mut s.latency {
                            h.bucket.iter_mut().for_each(|b| *b = (*b + seq as u32) % 200);
                            h.sum_ns = if seq == 2 { None } else { h.sum_ns };
                        }
                    }
                }
                r
            })
            .collect()
    }

    fn answer(snapshot: Vec<Arc<[u8]>>, by: By) -> pb::QueryResponse {
        let q = pb::QueryRequest { by: by as i32, limit: 100, ..Default::default() };
        let windows = vec![("a".to_string(), snapshot.into_iter().map(super::super::query::Part::whole).collect())];
        let mut r = super::super::query::answer(&windows, 1, &q);
        r.reports = 0;
        r
    }

    #[test]
    fn a_merged_window_answers_as_its_reports_do() {
        let rs = reports();
        let mut merged = rs[0].clone();
        merge(&mut merged, &rs[1]);
        merge(&mut merged, &rs[2]);
        assert_eq!(merged.interval_start_unix_ns, 0);
        assert_eq!(merged.interval_end_unix_ns, 3_000_000_000);
        assert_eq!(merged.sequence, 3);
        let each: Vec<Arc<[u8]>> = rs.iter().map(|r| Arc::from(r.encode_to_vec())).collect();
        let one: Vec<Arc<[u8]>> = vec![Arc::from(merged.encode_to_vec())];
        for by in [By::Syscalls, By::DiskP99, By::Offcpu, By::TcpRtt] {
            let (a, b) = (answer(each.clone(), by), answer(one.clone(), by));
            assert!(!a.rows.is_empty(), "{by:?}");
            assert_eq!(a, b, "{by:?}");
        }
    }

    #[test]
    fn histograms_add_bucket_by_bucket() {
        let h = |bucket: Vec<u32>, count: Vec<u64>, sum: Option<u64>| {
            Some(pb::Histogram { layout: 1, bucket, count, max_ns: 7, sum_ns: sum })
        };
        let mut a = h(vec![3, 9], vec![1, 2], Some(10));
        histogram(&mut a, &h(vec![9, 1, 4], vec![5, 1, u64::MAX], Some(5)));
        assert_eq!(a, h(vec![1, 3, 4, 9], vec![1, 1, u64::MAX, 7], Some(15)));
        histogram(&mut a, &h(vec![], vec![], None));
        assert_eq!(a.as_ref().unwrap().sum_ns, None, "a part without a sum: no sum");
        let mut none = None;
        histogram(&mut none, &h(vec![2], vec![2], None));
        assert_eq!(none, h(vec![2], vec![2], None));
    }
}
