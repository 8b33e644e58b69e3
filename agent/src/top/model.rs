//! The rows of the process list: what each column shows, how each sorts,
//! the name filter, and which columns fit a width. Pure: built from one
//! [`Report`], no terminal.

use std::cmp::Ordering;

use unicode_width::UnicodeWidthChar as _;

use crate::{
    diagnose::{self, Kind},
    report::{ProcessReport, Report},
    units::duration,
};

/// One process in one interval. Shares are thread-equivalents: 1.0 = one
/// thread for the whole interval.
#[derive(Debug, Clone)]
pub struct Row {
    pub pid: u32,
    pub comm: String,
    pub exited: bool,
    pub verdict: Option<Kind>,
    /// On a CPU or waiting for one, the disk, the network or a lock: the
    /// time that is not idle (`None` without the off-CPU probe).
    pub active: Option<f64>,
    pub cpu: Option<f64>,
    pub runq: Option<f64>,
    pub disk: Option<f64>,
    pub net: Option<f64>,
    pub lock: Option<f64>,
    pub calls_per_s: f64,
    pub errors_per_s: f64,
    pub p99_ns: u64,
    pub io_per_s: f64,
    /// Time inside syscalls: the order when nothing else tells processes
    /// apart (no off-CPU probe).
    pub syscall_ns: u64,
}

impl Row {
    pub fn new(p: &ProcessReport, interval_ns: u64) -> Row {
        let per_s = |n: u64| n as f64 * 1e9 / interval_ns.max(1) as f64;
        let thread_time = p.offcpu.as_ref().map_or(0, |o| o.on_cpu_ns + o.runqueue_ns + o.blocked_io_ns + o.sleep_ns);
        let shares = diagnose::shares(p);
        let scale = thread_time as f64 / interval_ns.max(1) as f64;
        let part = |f: fn(&diagnose::Shares) -> f64| shares.as_ref().map(|s| f(s) * scale);
        Row {
            pid: p.pid,
            comm: if p.exited { format!("{}*", p.meta.comm) } else { p.meta.comm.clone() },
            exited: p.exited,
            verdict: p.verdict.as_ref().map(|v| v.kind),
            active: part(|s| s.on_cpu + s.runqueue + s.disk + s.network + s.lock),
            cpu: part(|s| s.on_cpu),
            runq: part(|s| s.runqueue),
            disk: part(|s| s.disk),
            net: part(|s| s.network),
            lock: part(|s| s.lock),
            calls_per_s: per_s(p.syscall_total.count),
            errors_per_s: per_s(p.syscall_total.errors),
            p99_ns: p.syscall_total.p99_ns,
            io_per_s: per_s(p.disk.iter().map(|d| d.count).sum()),
            syscall_ns: p.syscall_total.total_ns,
        }
    }
}

/// Every process of a report as a row (the agent included: it is a
/// process on the host like any other).
pub fn rows(r: &Report) -> Vec<Row> {
    r.processes.iter().map(|p| Row::new(p, r.interval_ns)).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Pid,
    Comm,
    Verdict,
    Active,
    Cpu,
    Runq,
    Disk,
    Net,
    Lock,
    Calls,
    Errors,
    P99,
    Io,
}

/// Longest and shortest name column.
pub const COMM_MIN: u16 = 10;
pub const COMM_MAX: u16 = 32;

impl Col {
    /// In the order they are shown.
    pub const ALL: [Col; 13] = [
        Col::Pid,
        Col::Comm,
        Col::Verdict,
        Col::Active,
        Col::Cpu,
        Col::Runq,
        Col::Disk,
        Col::Net,
        Col::Lock,
        Col::Calls,
        Col::Errors,
        Col::P99,
        Col::Io,
    ];
    /// Which columns go first when the terminal is narrow.
    const PRIORITY: [Col; 13] = [
        Col::Pid,
        Col::Comm,
        Col::Active,
        Col::Verdict,
        Col::Cpu,
        Col::Runq,
        Col::Disk,
        Col::Lock,
        Col::Net,
        Col::Calls,
        Col::P99,
        Col::Errors,
        Col::Io,
    ];

    pub fn header(self) -> &'static str {
        match self {
            Col::Pid => "PID",
            Col::Comm => "COMM",
            Col::Verdict => "VERDICT",
            Col::Active => "ACTIVE%",
            Col::Cpu => "CPU%",
            Col::Runq => "RUNQ%",
            Col::Disk => "DISK%",
            Col::Net => "NET%",
            Col::Lock => "LOCK%",
            Col::Calls => "SYSC/s",
            Col::Errors => "ERR/s",
            Col::P99 => "P99",
            Col::Io => "IO/s",
        }
    }

    /// What the column says, for the help screen.
    pub fn help(self) -> &'static str {
        match self {
            Col::Pid => "process id",
            Col::Comm => "process name (* when it had exited)",
            Col::Verdict => "its bottleneck in the interval (hostprobe diagnose's rules)",
            Col::Active => "on a CPU or waiting for one, the disk, the network or a lock (default order)",
            Col::Cpu => "on a CPU",
            Col::Runq => "waiting for a CPU (run queue)",
            Col::Disk => "blocked in D state (mostly disk)",
            Col::Net => "asleep waiting on the network",
            Col::Lock => "asleep waiting for a lock (short futex waits, flock, semop)",
            Col::Calls => "syscalls per second",
            Col::Errors => "failed syscalls per second",
            Col::P99 => "99th percentile of its syscalls' latency",
            Col::Io => "block I/O requests per second",
        }
    }

    /// The key that sorts by this column.
    pub fn key(self) -> char {
        match self {
            Col::Pid => 'i',
            Col::Comm => 'm',
            Col::Verdict => 'v',
            Col::Active => 'a',
            Col::Cpu => 'c',
            Col::Runq => 'r',
            Col::Disk => 'd',
            Col::Net => 'n',
            Col::Lock => 'l',
            Col::Calls => 's',
            Col::Errors => 'e',
            Col::P99 => 't',
            Col::Io => 'o',
        }
    }

    pub fn by_key(c: char) -> Option<Col> {
        Col::ALL.into_iter().find(|col| col.key() == c)
    }

    /// Width of the column (the name column's least).
    pub fn width(self) -> u16 {
        match self {
            Col::Pid => 7,
            Col::Comm => COMM_MIN,
            Col::Verdict => 13,
            Col::Active => 7,
            Col::Cpu | Col::Net => 5,
            Col::Runq | Col::Disk | Col::Lock | Col::Errors => 6,
            Col::Calls => 9,
            Col::P99 | Col::Io => 7,
        }
    }

    pub fn right_aligned(self) -> bool {
        !matches!(self, Col::Comm | Col::Verdict)
    }

    /// Names and verdicts read A to Z, pids up; figures largest first.
    pub fn descending(self) -> bool {
        !matches!(self, Col::Pid | Col::Comm | Col::Verdict)
    }

    pub fn text(self, r: &Row) -> String {
        let pct = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{:.0}%", x * 100.0));
        match self {
            Col::Pid => r.pid.to_string(),
            Col::Comm => r.comm.clone(),
            Col::Verdict => r.verdict.map_or("-", Kind::name).to_string(),
            Col::Active => pct(r.active),
            Col::Cpu => pct(r.cpu),
            Col::Runq => pct(r.runq),
            Col::Disk => pct(r.disk),
            Col::Net => pct(r.net),
            Col::Lock => pct(r.lock),
            Col::Calls => thousands(r.calls_per_s.round() as u64),
            Col::Errors => thousands(r.errors_per_s.round() as u64),
            Col::P99 => {
                if r.calls_per_s > 0.0 {
                    duration(r.p99_ns)
                } else {
                    "-".into()
                }
            }
            Col::Io => thousands(r.io_per_s.round() as u64),
        }
    }

    fn compare(self, a: &Row, b: &Row) -> Ordering {
        // A missing figure (no off-CPU probe) sorts below any figure.
        let f = |x: Option<f64>| x.unwrap_or(-1.0);
        match self {
            Col::Pid => a.pid.cmp(&b.pid),
            Col::Comm => a.comm.to_lowercase().cmp(&b.comm.to_lowercase()),
            Col::Verdict => a.verdict.map_or("~", Kind::name).cmp(b.verdict.map_or("~", Kind::name)),
            Col::Active => f(a.active).total_cmp(&f(b.active)),
            Col::Cpu => f(a.cpu).total_cmp(&f(b.cpu)),
            Col::Runq => f(a.runq).total_cmp(&f(b.runq)),
            Col::Disk => f(a.disk).total_cmp(&f(b.disk)),
            Col::Net => f(a.net).total_cmp(&f(b.net)),
            Col::Lock => f(a.lock).total_cmp(&f(b.lock)),
            Col::Calls => a.calls_per_s.total_cmp(&b.calls_per_s),
            Col::Errors => a.errors_per_s.total_cmp(&b.errors_per_s),
            Col::P99 => a.p99_ns.cmp(&b.p99_ns),
            Col::Io => a.io_per_s.total_cmp(&b.io_per_s),
        }
    }
}

/// Sorts by `col` (its natural direction, or the other with `reverse`);
/// ties go to the most active, then the most time in syscalls, then the
/// lowest pid.
pub fn sort(rows: &mut [Row], col: Col, reverse: bool) {
    let desc = col.descending() != reverse;
    rows.sort_by(|a, b| {
        let o = col.compare(a, b);
        let o = if desc { o.reverse() } else { o };
        o.then_with(|| Col::Active.compare(b, a)).then_with(|| b.syscall_ns.cmp(&a.syscall_ns)).then(a.pid.cmp(&b.pid))
    });
}

/// Keeps the rows whose name contains `filter` (any case).
pub fn filter(rows: &mut Vec<Row>, filter: &str) {
    if filter.is_empty() {
        return;
    }
    let f = filter.to_lowercase();
    rows.retain(|r| r.comm.to_lowercase().contains(&f));
}

/// The columns that fit in `width`, in the order shown, with their widths:
/// the most useful first, the sort column always; the name column takes
/// what is left, up to [`COMM_MAX`].
pub fn layout(width: u16, sort: Col) -> Vec<(Col, u16)> {
    let cost =
        |cols: &[Col]| -> u16 { cols.iter().map(|c| c.width()).sum::<u16>() + cols.len().saturating_sub(1) as u16 };
    let mut chosen: Vec<Col> = Vec::new();
    for c in Col::PRIORITY {
        chosen.push(c);
        if cost(&chosen) > width && chosen.len() > 2 {
            chosen.pop();
            break;
        }
    }
    if !chosen.contains(&sort) {
        chosen.push(sort);
        // Make room: drop the least useful columns other than the sort's.
        while cost(&chosen) > width && chosen.len() > 3 {
            let at = chosen.len() - 2;
            chosen.remove(at);
        }
    }
    let extra = width.saturating_sub(cost(&chosen)).min(COMM_MAX - COMM_MIN);
    Col::ALL
        .into_iter()
        .filter(|c| chosen.contains(c))
        .map(|c| (c, if c == Col::Comm { COMM_MIN + extra } else { c.width() }))
        .collect()
}

/// `text` cut or padded to exactly `width` terminal cells; cut names end
/// in `~`, so a cut is never mistaken for the whole name.
pub fn fit(text: &str, width: u16, right: bool) -> String {
    let width = usize::from(width);
    let mut out = String::new();
    let mut used = 0;
    let total: usize = text.chars().map(|c| c.width().unwrap_or(0)).sum();
    let room = if total > width { width.saturating_sub(1) } else { width };
    for c in text.chars() {
        // Control characters would move the cursor: show them as '?'.
        let (c, w) = match c.width() {
            Some(w) if !c.is_control() => (c, w),
            _ => ('?', 1),
        };
        if used + w > room {
            break;
        }
        out.push(c);
        used += w;
    }
    if total > width {
        out.push('~');
        used += 1;
    }
    let pad = " ".repeat(width.saturating_sub(used));
    if right {
        pad + &out
    } else {
        out + &pad
    }
}

/// One line of the table: each column fitted to its width, one space apart.
pub fn line(cols: &[(Col, u16)], cell: impl Fn(Col) -> String) -> String {
    cols.iter().map(|(c, w)| fit(&cell(*c), *w, c.right_aligned())).collect::<Vec<_>>().join(" ")
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: u32, comm: &str, active: Option<f64>, cpu: f64, calls: f64) -> Row {
        Row {
            pid,
            comm: comm.into(),
            exited: false,
            verdict: None,
            active,
            cpu: Some(cpu),
            runq: Some(0.0),
            disk: Some(0.0),
            net: Some(0.0),
            lock: Some(0.0),
            calls_per_s: calls,
            errors_per_s: 0.0,
            p99_ns: 0,
            io_per_s: 0.0,
            syscall_ns: 0,
        }
    }

    #[test]
    fn sorts_by_each_column_in_its_direction() {
        let mut rows = vec![
            row(30, "bash", Some(0.01), 0.01, 10.0),
            row(10, "Zed", Some(1.0), 1.0, 5.0),
            row(20, "awk", None, 0.5, 900.0),
        ];
        sort(&mut rows, Col::Active, false);
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), [10, 30, 20], "missing figures last");
        sort(&mut rows, Col::Calls, false);
        assert_eq!(rows[0].pid, 20);
        sort(&mut rows, Col::Comm, false);
        assert_eq!(rows.iter().map(|r| r.comm.as_str()).collect::<Vec<_>>(), ["awk", "bash", "Zed"]);
        sort(&mut rows, Col::Pid, true);
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), [30, 20, 10]);
    }

    #[test]
    fn filters_by_name_in_any_case() {
        let mut rows = vec![row(1, "Workload", None, 0.0, 0.0), row(2, "bash", None, 0.0, 0.0)];
        filter(&mut rows, "work");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].pid, 1);
    }

    #[test]
    fn names_are_cut_to_their_cells_never_longer() {
        assert_eq!(fit("kworker/u8:2-kvfree_rcu_reclaim", 12, false), "kworker/u8:~");
        assert_eq!(fit("bash", 6, false), "bash  ");
        assert_eq!(fit("42", 5, true), "   42");
        assert_eq!(fit("a\tb", 5, false), "a?b  ");
        // Wide characters count two cells.
        assert_eq!(fit("日本語の名前", 7, false), "日本語~");
        assert_eq!(unicode_width::UnicodeWidthStr::width(fit("日本語の名前", 7, false).as_str()), 7);
    }

    #[test]
    fn layouts_fit_their_width_and_keep_the_sort_column() {
        for width in [40u16, 60, 80, 100, 120, 200, 300] {
            for sort in Col::ALL {
                let cols = layout(width, sort);
                let used: u16 = cols.iter().map(|c| c.1).sum::<u16>() + cols.len() as u16 - 1;
                assert!(used <= width.max(7 + 1 + COMM_MIN + 1 + 7 + 1 + 13), "{width}: {used}");
                assert!(cols.iter().any(|c| c.0 == sort), "{width} {sort:?}");
                assert!(cols.iter().any(|c| c.0 == Col::Pid) && cols.iter().any(|c| c.0 == Col::Comm));
            }
        }
        let wide = layout(200, Col::Active);
        assert_eq!(wide.len(), Col::ALL.len(), "everything fits in 200 columns");
        let narrow: Vec<Col> = layout(80, Col::Active).into_iter().map(|c| c.0).collect();
        assert!(narrow.contains(&Col::Verdict) && narrow.contains(&Col::Active), "{narrow:?}");
        assert!(!narrow.contains(&Col::Errors), "less useful columns go first: {narrow:?}");
    }
}
