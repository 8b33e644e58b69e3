//! Where reports go on the command line: plain periodic text, or one JSON
//! object per line (the live view on a terminal is [`crate::top`]).

use std::io::{self, Write};

use crate::{
    report::{Latency, Report, SyscallReport},
    units::duration,
};

pub trait Sink: Send {
    /// Takes one interval's report (the last user of it: the view keeps it).
    fn emit(&mut self, report: Report) -> io::Result<()>;
}

/// One JSON object per interval per line.
pub struct Json<W>(pub W);

impl<W: Write + Send> Sink for Json<W> {
    fn emit(&mut self, report: Report) -> io::Result<()> {
        serde_json::to_writer(&mut self.0, &report)?;
        self.0.write_all(b"\n")?;
        self.0.flush()
    }
}

/// A table per interval, appended: for logs and pipes.
pub struct Text<W>(pub W);

impl<W: Write + Send> Sink for Text<W> {
    fn emit(&mut self, report: Report) -> io::Result<()> {
        let mut buf = String::new();
        table(&report, usize::MAX, &mut buf);
        buf.push('\n');
        self.0.write_all(buf.as_bytes())?;
        self.0.flush()
    }
}

/// A count per second with thousands separators.
fn rate(n: u64, interval_ns: u64) -> String {
    let per_s = if interval_ns == 0 { 0 } else { (n as u128 * 1_000_000_000 / interval_ns as u128) as u64 };
    let digits = per_s.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn top_syscalls(list: &[SyscallReport], total_ns: u64) -> String {
    list.iter()
        .take(3)
        .map(|s| {
            let pct = (s.latency.total_ns * 100).checked_div(total_ns).unwrap_or(0);
            format!("{} {pct}%", s.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(out: &mut String, pid: &str, comm: &str, verdict: &str, l: &Latency, list: &[SyscallReport], interval_ns: u64) {
    let time_pct = if interval_ns == 0 { 0.0 } else { l.total_ns as f64 * 100.0 / interval_ns as f64 };
    out.push_str(&format!(
        "{pid:>8} {comm:<16} {verdict:<13} {:>10} {:>7} {:>6.1}% {:>7} {:>7} {:>7}  {}\n",
        rate(l.count, interval_ns),
        rate(l.errors, interval_ns),
        time_pct,
        duration(l.p50_ns),
        duration(l.p99_ns),
        duration(l.max_ns),
        top_syscalls(list, l.total_ns),
    ));
}

/// The report as a table of at most `rows` processes.
pub fn table(r: &Report, rows: usize, out: &mut String) {
    let time = r.time.get(11..19).unwrap_or(&r.time);
    let mut probes = Vec::new();
    for p in &r.probes {
        let mut s = p.name.to_string();
        if !p.active {
            s.push_str(" FAILED");
        }
        if p.lost > 0 {
            s.push_str(&format!(" (LOST {} events: maps full)", p.lost));
        }
        if let Some(n) = p.counters.get("missed_start").filter(|n| **n > 0) {
            s.push_str(&format!(" ({n} returns without a seen start)"));
        }
        probes.push(s);
    }
    let shown = r.processes.len().min(rows);
    let total = r.processes.len() as u64 + r.other.as_ref().map_or(0, |o| o.processes);
    out.push_str(&format!(
        "hostprobe {time}  host {}  interval {}  probes: {}  processes: {total} (top {shown} by time in syscalls)\n",
        r.host,
        duration(r.interval_ns),
        probes.join(", "),
    ));
    for p in r.probes.iter().filter_map(|p| p.error.as_ref()) {
        out.push_str(&format!("  ! {p}\n"));
    }
    out.push_str(&format!(
        "{:>8} {:<16} {:<13} {:>10} {:>7} {:>7} {:>7} {:>7} {:>7}  {}\n",
        "PID", "COMM", "VERDICT", "CALLS/s", "ERR/s", "TIME%", "P50", "P99", "MAX", "TOP SYSCALLS BY TIME"
    ));
    for p in r.processes.iter().take(rows) {
        let comm = if p.exited { format!("{}*", p.meta.comm) } else { p.meta.comm.clone() };
        let verdict = p.verdict.as_ref().map_or("-", |v| v.kind.name());
        row(out, &p.pid.to_string(), &comm, verdict, &p.syscall_total, &p.syscalls, r.interval_ns);
    }
    if let Some(o) = &r.other {
        row(out, "", &format!("({} others)", o.processes), "", &o.syscall_total, &o.syscalls, r.interval_ns);
    }
    if r.processes.is_empty() {
        out.push_str("  (no syscalls seen in this interval)\n");
    }
    disk_tables(r, rows, out);
    offcpu_table(r, rows, out);
    tcp_table(r, rows, out);
}

/// The busiest TCP connections: bytes, RTT, retransmits.
fn tcp_table(r: &Report, rows: usize, out: &mut String) {
    let mut list: Vec<(&crate::report::ProcessReport, &crate::report::TcpReport)> =
        r.processes.iter().flat_map(|p| p.tcp.iter().map(move |t| (p, t))).collect();
    if list.is_empty() {
        return;
    }
    list.sort_by_key(|(p, t)| (std::cmp::Reverse(t.bytes_sent + t.bytes_received), p.pid));
    out.push_str(&format!(
        "\n{:>8} {:<16} {:<28} {:<12} {:>5} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7}\n",
        "PID", "COMM", "REMOTE", "STATE", "CONNS", "TX MB/s", "RX MB/s", "CONNECT", "RTT", "RTT p99", "RETRANS"
    ));
    for (p, t) in list.into_iter().take(rows.min(10)) {
        out.push_str(&format!(
            "{:>8} {:<16} {:<28} {:<12} {:>5} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7}\n",
            p.pid,
            p.meta.comm,
            t.remote,
            t.failed.unwrap_or(t.state),
            t.connections,
            mb_per_s(t.bytes_sent, r.interval_ns),
            mb_per_s(t.bytes_received, r.interval_ns),
            t.connect_p50_us.map_or_else(|| "-".to_string(), |us| duration(us * 1_000)),
            duration(t.rtt_last_us * 1_000),
            duration(t.rtt_p99_us * 1_000),
            t.retransmits
        ));
    }
}

/// Where threads wait: the processes with the most run-queue and blocked time.
fn offcpu_table(r: &Report, rows: usize, out: &mut String) {
    let mut list: Vec<(&crate::report::ProcessReport, &crate::report::OffcpuReport)> =
        r.processes.iter().filter_map(|p| p.offcpu.as_ref().map(|o| (p, o))).collect();
    if list.is_empty() {
        return;
    }
    list.sort_by_key(|(p, o)| (std::cmp::Reverse(o.runqueue_ns + o.blocked_io_ns), p.pid));
    let pct = |ns: u64| if r.interval_ns == 0 { 0.0 } else { ns as f64 * 100.0 / r.interval_ns as f64 };
    out.push_str(&format!(
        "\n{:>8} {:<16} {:>7} {:>7} {:>9} {:>7} {:>7}  {}\n",
        "PID", "COMM", "ON-CPU%", "RUNQ%", "RUNQ p99", "D-IO%", "SLEEP%", "SLEEPING IN"
    ));
    for (p, o) in list.into_iter().take(rows.min(10)) {
        let mut top: Vec<String> =
            o.sleep_by_syscall.iter().take(2).map(|s| format!("{} {}", s.name, duration(s.ns))).collect();
        if o.kernel_thread {
            // No syscall to sleep in: say whose sleep it is instead.
            top.push("(kernel thread)".to_string());
        }
        out.push_str(&format!(
            "{:>8} {:<16} {:>6.1}% {:>6.1}% {:>9} {:>6.1}% {:>6.1}%  {}\n",
            p.pid,
            p.meta.comm,
            pct(o.on_cpu_ns),
            pct(o.runqueue_ns),
            duration(o.runqueue_p99_ns),
            pct(o.blocked_io_ns),
            pct(o.sleep_ns),
            top.join(", ")
        ));
    }
}

fn mb_per_s(bytes: u64, interval_ns: u64) -> String {
    if interval_ns == 0 {
        return "0.0".into();
    }
    format!("{:.1}", bytes as f64 * 1e9 / interval_ns as f64 / 1e6)
}

/// Block I/O per device, then the processes that did it.
fn disk_tables(r: &Report, rows: usize, out: &mut String) {
    if r.devices.is_empty() {
        return;
    }
    out.push_str(&format!(
        "\n{:<10} {:<8} {:>8} {:>8} {:>15} {:>15} {:>15} {:>5}\n",
        "DEVICE", "OP", "IO/s", "MB/s", "QUEUE p50/p99", "SERVICE p50/p99", "TOTAL p50/p99", "ERR"
    ));
    let pair = |d: &crate::report::DistReport| format!("{}/{}", duration(d.p50_ns), duration(d.p99_ns));
    for d in &r.devices {
        out.push_str(&format!(
            "{:<10} {:<8} {:>8} {:>8} {:>15} {:>15} {:>15} {:>5}\n",
            d.device,
            d.op,
            rate(d.count, r.interval_ns),
            mb_per_s(d.bytes, r.interval_ns),
            pair(&d.queue),
            pair(&d.service),
            pair(&d.total),
            d.errors
        ));
    }
    let mut by_process: Vec<(&crate::report::ProcessReport, &crate::report::DiskReport)> =
        r.processes.iter().flat_map(|p| p.disk.iter().map(move |d| (p, d))).collect();
    if by_process.is_empty() {
        return;
    }
    by_process.sort_by_key(|(p, d)| (std::cmp::Reverse(d.count), p.pid));
    out.push_str(&format!(
        "{:>8} {:<16} {:<10} {:<8} {:>8} {:>8} {:>15}\n",
        "PID", "COMM", "DEVICE", "OP", "IO/s", "MB/s", "TOTAL p50/p99"
    ));
    for (p, d) in by_process.into_iter().take(rows.min(10)) {
        out.push_str(&format!(
            "{:>8} {:<16} {:<10} {:<8} {:>8} {:>8} {:>15}\n",
            p.pid,
            p.meta.comm,
            d.device,
            d.op,
            rate(d.count, r.interval_ns),
            mb_per_s(d.bytes, r.interval_ns),
            pair(&d.total)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850ns");
        assert_eq!(duration(1_234), "1.2us");
        assert_eq!(duration(45_000), "45us");
        assert_eq!(duration(3_100_000), "3.1ms");
        assert_eq!(duration(20_000_000), "20ms");
        assert_eq!(duration(1_250_000_000), "1.25s");
        assert_eq!(duration(999_999_999), "1.00s");
        assert_eq!(duration(9_999), "10us");
    }

    #[test]
    fn rates_have_separators() {
        assert_eq!(rate(1_234_567, 1_000_000_000), "1,234,567");
        assert_eq!(rate(500, 500_000_000), "1,000");
        assert_eq!(rate(7, 0), "0");
    }
}
