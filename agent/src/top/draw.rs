//! Drawing the view: the host header and the process list, one process's
//! screen, the help. Every line is cut to the terminal's width (never
//! wrapped); the table's cells are fitted to their columns by
//! [`model::fit`].

use ratatui::{
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Clear, Paragraph},
    Frame,
};

use super::{
    model::{self, fit, thousands, Col},
    state::{Screen, State},
};
use crate::{
    diagnose,
    report::{ProcessReport, Report},
    units::duration,
};

const REVERSED: Style = Style::new().add_modifier(Modifier::REVERSED);
const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);

pub fn draw(f: &mut Frame, s: &mut State, log: Option<&str>) {
    let area = f.area();
    if area.height == 0 || area.width == 0 {
        return;
    }
    let mut lines = vec![title(s, area.width)];
    match s.screen {
        Screen::List => list(&mut lines, s, area),
        Screen::Process(pid) => process(&mut lines, s, pid, area),
    }
    // The last line: what keys do, the filter being typed, or the last log line.
    let hint = if s.editing {
        Line::styled(format!("filter by name: {}_   (Enter: keep, Esc: clear)", s.filter), BOLD)
    } else if let Some(l) = log {
        Line::styled(l.to_string(), Style::new().fg(Color::Yellow))
    } else {
        Line::styled(
            match s.screen {
                Screen::List => "?:help  /:filter  Enter:open  p:pause  a c r d n l s ... :sort  q:quit",
                Screen::Process(_) => "Esc:back  Up/Down:scroll  p:pause  ?:help  q:quit",
            },
            Style::new().add_modifier(Modifier::DIM),
        )
    };
    let body = area.height.saturating_sub(1) as usize;
    lines.truncate(body);
    lines.resize(body, Line::default());
    lines.push(hint);
    f.render_widget(Paragraph::new(lines), area);
    if s.help {
        help(f, area);
    }
}

fn title(s: &State, width: u16) -> Line<'static> {
    let Some(r) = &s.report else {
        return Line::styled("hostprobe top: attaching the probes, waiting for the first interval...", BOLD);
    };
    let time = r.time.get(11..19).unwrap_or(&r.time);
    let mut t = format!("hostprobe top  {time}  host {}  every {}", r.host, duration(r.interval_ns));
    match s.screen {
        Screen::List => {
            t.push_str(&format!("  {} processes", r.processes.len()));
            let arrow = if s.sort.descending() != s.reverse { "v" } else { "^" };
            t.push_str(&format!("  sort {} {arrow}", s.sort.header()));
            if !s.filter.is_empty() {
                t.push_str(&format!("  filter \"{}\" ({} shown)", s.filter, s.rows.len()));
            }
        }
        Screen::Process(pid) => t.push_str(&format!("  process {pid}")),
    }
    if s.paused {
        t.push_str("  PAUSED (p: resume)");
    }
    Line::styled(fit(&t, width, false), BOLD)
}

/// Host figures: CPU in use, run queue, TCP trouble, each disk.
fn host(lines: &mut Vec<Line<'static>>, r: &Report, disk_lines: usize) {
    let interval = r.interval_ns.max(1) as f64;
    let offcpu =
        r.processes.iter().filter_map(|p| p.offcpu.as_ref()).chain(r.other.iter().filter_map(|o| o.offcpu.as_ref()));
    let (mut on_cpu, mut runq, mut seen) = (0u64, 0u64, false);
    for o in offcpu {
        on_cpu += o.on_cpu_ns;
        runq += o.runqueue_ns;
        seen = true;
    }
    let tcp =
        r.processes.iter().flat_map(|p| &p.tcp).chain(r.other.iter().flat_map(|o| &o.tcp)).chain(&r.tcp_unknown_owner);
    let (mut retrans, mut failed) = (0u64, 0u64);
    for t in tcp {
        retrans += t.retransmits;
        failed += t.refused + t.timeouts;
    }
    let cpus = cpus();
    let mut l = if seen {
        format!(
            "CPU {:.0}% of {cpus} CPUs   run queue {:.2} threads",
            on_cpu as f64 * 100.0 / interval / cpus as f64,
            runq as f64 / interval
        )
    } else {
        "CPU -  run queue -  (no offcpu probe)".to_string()
    };
    l.push_str(&format!("   TCP retrans {retrans}, failed connects {failed}"));
    let failed_probes: Vec<&str> = r.probes.iter().filter(|p| !p.active).map(|p| p.name).collect();
    if !failed_probes.is_empty() {
        l.push_str(&format!("   probes not running: {}", failed_probes.join(", ")));
    }
    if let Some(p) = r.probes.iter().find(|p| p.lost > 0) {
        l.push_str(&format!("   LOST {} {} events", p.lost, p.name));
    }
    lines.push(Line::raw(l));
    let pair = |d: &crate::report::DistReport| format!("{}/{}", duration(d.p50_ns), duration(d.p99_ns));
    let mut devices: Vec<&crate::report::DiskReport> = r.devices.iter().collect();
    devices.sort_by_key(|d| std::cmp::Reverse(d.count));
    for d in devices.iter().take(disk_lines) {
        lines.push(Line::raw(format!(
            "disk {:<8} {:<7} {:>7} IO/s   queue {:>13}   service {:>13}   (p50/p99)",
            d.device,
            d.op,
            thousands((d.count as f64 * 1e9 / interval).round() as u64),
            pair(&d.queue),
            pair(&d.service),
        )));
    }
    if devices.len() > disk_lines {
        lines.push(Line::raw(format!("disk ({} more)", devices.len() - disk_lines)));
    } else if devices.is_empty() {
        lines.push(Line::raw("disk: no block I/O in this interval"));
    }
}

fn cpus() -> usize {
    // SAFETY: sysconf reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

fn list(lines: &mut Vec<Line<'static>>, s: &mut State, area: Rect) {
    let Some(r) = s.report.clone() else { return };
    let disk_lines = (usize::from(area.height) / 12).max(1);
    host(lines, &r, disk_lines);
    let cols = model::layout(area.width, s.sort);
    let header: Vec<Span> = cols
        .iter()
        .enumerate()
        .flat_map(|(i, (c, w))| {
            let style =
                if *c == s.sort { REVERSED.add_modifier(Modifier::BOLD | Modifier::UNDERLINED) } else { REVERSED };
            let sep = (i > 0).then(|| Span::styled(" ", REVERSED));
            sep.into_iter().chain([Span::styled(fit(c.header(), *w, c.right_aligned()), style)])
        })
        .collect();
    let used: usize = cols.iter().map(|c| usize::from(c.1) + 1).sum::<usize>().saturating_sub(1);
    let mut header = header;
    header.push(Span::styled(" ".repeat(usize::from(area.width).saturating_sub(used)), REVERSED));
    lines.push(Line::from(header));
    s.page = usize::from(area.height).saturating_sub(lines.len() + 1).max(1);
    // The page may have changed with the terminal's size.
    s.clamp();
    if s.rows.is_empty() {
        lines.push(Line::raw(if s.filter.is_empty() {
            "  (no process seen in this interval)".to_string()
        } else {
            format!("  (no process named like \"{}\")", s.filter)
        }));
        return;
    }
    let me = std::process::id();
    for (i, row) in s.rows.iter().enumerate().skip(s.offset).take(s.page) {
        let text = model::line(&cols, |c| c.text(row));
        let style = if i == s.selected {
            REVERSED
        } else if row.pid == me || row.exited {
            Style::new().add_modifier(Modifier::DIM)
        } else if row.verdict.is_some_and(|k| k != diagnose::Kind::Idle) {
            BOLD
        } else {
            Style::new()
        };
        lines.push(Line::styled(text, style));
    }
}

/// Colors of the time shares, in [`diagnose::Shares`]' order.
const SHARES: [(&str, Color, char); 7] = [
    ("on-CPU", Color::Green, '#'),
    ("run queue", Color::Yellow, 'Q'),
    ("disk", Color::Red, 'D'),
    ("network", Color::Blue, 'N'),
    ("lock", Color::Magenta, 'L'),
    ("sleep", Color::DarkGray, '.'),
    ("other", Color::Gray, ' '),
];

fn process(lines: &mut Vec<Line<'static>>, s: &State, pid: u32, area: Rect) {
    let Some((p, r, current)) = s.open_process() else {
        lines.push(Line::raw(format!("process {pid}: not seen yet (Esc: back)")));
        return;
    };
    let mut out: Vec<Line<'static>> = Vec::new();
    let name = if p.exited { format!("{} (exited)", p.meta.comm) } else { p.meta.comm.clone() };
    let d = diagnose::diagnose(p, &r.devices, r.interval_ns);
    let verdict = d.as_ref().map_or("-".to_string(), |d| format!("{}: {}", d.verdict.kind.name(), d.verdict.detail));
    out.push(Line::styled(format!("{:>7} {name}   verdict {verdict}", p.pid), BOLD));
    if !current {
        let time = r.time.get(11..19).unwrap_or(&r.time);
        out.push(Line::styled(
            format!("  not seen in the interval on screen: figures of the interval ending {time}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    if let Some(d) = &d {
        out.extend(d.verdict.evidence.iter().map(|e| Line::raw(format!("  - {e}"))));
        out.push(Line::raw(format!("  next: {}", d.verdict.next)));
    }
    if let Some(exe) = &p.meta.exe {
        out.push(Line::raw(format!(
            "  exe {exe}{}",
            p.meta.cgroup.as_ref().map_or(String::new(), |c| format!("  cgroup {c}"))
        )));
    }

    // Where its time went: one bar.
    out.push(Line::default());
    match (d.as_ref(), p.offcpu.as_ref()) {
        (Some(d), Some(o)) => {
            let total = o.on_cpu_ns + o.runqueue_ns + o.blocked_io_ns + o.sleep_ns;
            out.push(Line::styled(
                format!(
                    "WHERE ITS TIME WENT   {} of thread time in {} ({:.2} threads)",
                    duration(total),
                    duration(r.interval_ns),
                    total as f64 / r.interval_ns.max(1) as f64
                ),
                BOLD,
            ));
            let sh = &d.shares;
            let parts = [sh.on_cpu, sh.runqueue, sh.disk, sh.network, sh.lock, sh.sleep, sh.other];
            let width = usize::from(area.width).saturating_sub(4).min(100);
            let mut spans = vec![Span::raw("  ")];
            let (mut done, mut acc) = (0usize, 0.0);
            for (share, (_, color, c)) in parts.iter().zip(SHARES) {
                acc += share;
                let upto = ((acc * width as f64).round() as usize).min(width);
                let n = upto.saturating_sub(done);
                done = upto;
                spans.push(Span::styled(c.to_string().repeat(n), Style::new().fg(Color::Black).bg(color)));
            }
            out.push(Line::from(spans));
            let mut legend = vec![Span::raw("  ")];
            for (share, (name, color, c)) in parts.iter().zip(SHARES) {
                legend.push(Span::styled(format!("{c}"), Style::new().fg(Color::Black).bg(color)));
                legend.push(Span::raw(format!(" {name} {:.0}%  ", share * 100.0)));
            }
            out.push(Line::from(legend));
        }
        _ => out.push(Line::raw("WHERE ITS TIME WENT   (needs the offcpu probe)")),
    }

    syscalls(&mut out, s, p, r.interval_ns);
    disk(&mut out, p, r.interval_ns);
    tcp(&mut out, p, r.interval_ns);
    offcpu(&mut out, p);

    let room = usize::from(area.height).saturating_sub(lines.len() + 1);
    let scroll = usize::from(s.scroll).min(out.len().saturating_sub(room));
    lines.extend(out.into_iter().skip(scroll).map(|l| cut(l, area.width)));
}

/// A line no wider than `width` (styled spans kept).
fn cut(line: Line<'static>, width: u16) -> Line<'static> {
    let mut left = usize::from(width);
    let style = line.style;
    let spans: Vec<Span<'static>> = line
        .spans
        .into_iter()
        .filter_map(|sp| {
            if left == 0 {
                return None;
            }
            let w = sp.width();
            if w <= left {
                left -= w;
                return Some(sp);
            }
            let text = fit(&sp.content, left as u16, false);
            left = 0;
            Some(Span::styled(text, sp.style))
        })
        .collect();
    Line::from(spans).style(style)
}

fn section(out: &mut Vec<Line<'static>>, title: String, header: String) {
    out.push(Line::default());
    out.push(Line::styled(title, BOLD));
    out.push(Line::styled(header, REVERSED));
}

fn syscalls(out: &mut Vec<Line<'static>>, s: &State, p: &ProcessReport, interval_ns: u64) {
    let totals = s.totals.get(&p.pid);
    let per_s = |n: u64| thousands((n as f64 * 1e9 / interval_ns.max(1) as f64).round() as u64);
    section(
        out,
        format!(
            "SYSCALLS   {} calls/s, {} in syscalls in {}; TOTAL: calls since the view started",
            per_s(p.syscall_total.count),
            duration(p.syscall_total.total_ns),
            duration(interval_ns)
        ),
        format!(
            "  {:<18} {:>10} {:>12} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "SYSCALL", "CALLS/s", "TOTAL", "ERR/s", "TIME%", "P50", "P90", "P99", "MAX"
        ),
    );
    let total = |name: &str| totals.and_then(|t| t.get(name)).map_or(0, |t| t.calls);
    for c in &p.syscalls {
        let l = &c.latency;
        out.push(Line::raw(format!(
            "  {:<18} {:>10} {:>12} {:>8} {:>6.1}% {:>7} {:>7} {:>7} {:>7}",
            fit(&c.name, 18, false),
            per_s(l.count),
            thousands(total(&c.name)),
            per_s(l.errors),
            l.total_ns as f64 * 100.0 / interval_ns.max(1) as f64,
            duration(l.p50_ns),
            duration(l.p90_ns),
            duration(l.p99_ns),
            duration(l.max_ns)
        )));
    }
    // Syscalls it made before, not in this interval.
    let mut earlier: Vec<(&String, u64)> = totals
        .into_iter()
        .flatten()
        .filter(|(name, _)| !p.syscalls.iter().any(|c| &c.name == *name))
        .map(|(name, t)| (name, t.calls))
        .collect();
    earlier.sort_by_key(|(name, n)| (std::cmp::Reverse(*n), (*name).clone()));
    for (name, n) in earlier {
        out.push(Line::styled(
            format!("  {:<18} {:>10} {:>12}", fit(name, 18, false), 0, thousands(n)),
            Style::new().add_modifier(Modifier::DIM),
        ));
    }
    if p.syscalls.is_empty() && totals.is_none_or(|t| t.is_empty()) {
        out.push(Line::raw("  (none seen)"));
    }
}

fn disk(out: &mut Vec<Line<'static>>, p: &ProcessReport, interval_ns: u64) {
    section(
        out,
        "DISK   by device and operation: queue (block layer) and service (device) time".into(),
        format!(
            "  {:<10} {:<6} {:>8} {:>8} {:>17} {:>17} {:>17} {:>5}",
            "DEVICE", "OP", "IO/s", "MB/s", "QUEUE p50/p99", "SERVICE p50/p99", "TOTAL p50/p99", "ERR"
        ),
    );
    let pair = |d: &crate::report::DistReport| format!("{}/{}", duration(d.p50_ns), duration(d.p99_ns));
    let per_s = |n: u64| n as f64 * 1e9 / interval_ns.max(1) as f64;
    for d in &p.disk {
        out.push(Line::raw(format!(
            "  {:<10} {:<6} {:>8} {:>8.1} {:>17} {:>17} {:>17} {:>5}",
            fit(&d.device, 10, false),
            d.op,
            thousands(per_s(d.count).round() as u64),
            per_s(d.bytes) / 1e6,
            pair(&d.queue),
            pair(&d.service),
            pair(&d.total),
            d.errors
        )));
    }
    if p.disk.is_empty() {
        out.push(Line::raw("  (no block I/O of its own in this interval)"));
    }
}

fn tcp(out: &mut Vec<Line<'static>>, p: &ProcessReport, interval_ns: u64) {
    section(
        out,
        "TCP CONNECTIONS".into(),
        format!(
            "  {:<24} {:<12} {:<7} {:>6} {:>9} {:>9} {:>15} {:>7} {:>6}",
            "REMOTE", "STATE", "DIR", "CONNS", "TX KB/s", "RX KB/s", "RTT p50/p99", "RETRANS", "FAILED"
        ),
    );
    let kb = |b: u64| b as f64 * 1e9 / interval_ns.max(1) as f64 / 1e3;
    for t in &p.tcp {
        out.push(Line::raw(format!(
            "  {:<24} {:<12} {:<7} {:>6} {:>9.1} {:>9.1} {:>15} {:>7} {:>6}",
            fit(&t.remote, 24, false),
            t.failed.unwrap_or(t.state),
            t.direction,
            t.connections,
            kb(t.bytes_sent),
            kb(t.bytes_received),
            format!("{}/{}", duration(t.rtt_p50_us * 1_000), duration(t.rtt_p99_us * 1_000)),
            t.retransmits,
            t.refused + t.timeouts
        )));
    }
    if p.tcp.is_empty() {
        out.push(Line::raw("  (no TCP activity in this interval)"));
    }
}

fn offcpu(out: &mut Vec<Line<'static>>, p: &ProcessReport) {
    out.push(Line::default());
    out.push(Line::styled("OFF-CPU   why its threads were not running", BOLD));
    let Some(o) = &p.offcpu else {
        out.push(Line::raw("  (needs the offcpu probe)"));
        return;
    };
    out.push(Line::raw(format!(
        "  waiting for a CPU {} (p50 {}, p99 {} a wait)   blocked in D state {}   asleep {}",
        duration(o.runqueue_ns),
        duration(o.runqueue_p50_ns),
        duration(o.runqueue_p99_ns),
        duration(o.blocked_io_ns),
        duration(o.sleep_ns)
    )));
    if o.kernel_thread {
        out.push(Line::raw("  a kernel thread: it sleeps in no syscall"));
    }
    for sl in o.sleep_by_syscall.iter().take(8) {
        out.push(Line::raw(format!(
            "  asleep in {:<18} {:>8}  {:>7} sleeps",
            sl.name,
            duration(sl.ns),
            thousands(sl.count)
        )));
    }
}

fn help(f: &mut Frame, area: Rect) {
    let mut lines = vec![
        Line::styled("hostprobe top: keys", BOLD),
        Line::raw(""),
        Line::raw("  Up/Down PgUp/PgDn Home/End   move"),
        Line::raw("  Enter                        open the process: where its time went, syscalls, disk, TCP"),
        Line::raw("  Esc                          back to the list (or clear the filter)"),
        Line::raw("  /                            filter by name (Enter keeps it, Esc clears it)"),
        Line::raw("  p or space                   pause (figures stop changing; counting goes on)"),
        Line::raw("  ?                            this help        q, Ctrl-C   quit"),
        Line::raw(""),
        Line::styled("  sort (again: reverse)        percentages: of one thread's time in the interval", BOLD),
    ];
    for c in Col::ALL {
        lines.push(Line::raw(format!("  {}  {:<8} {}", c.key(), c.header(), c.help())));
    }
    lines.push(Line::raw(""));
    lines.push(Line::raw("  any key closes this help"));
    let w = area.width.min(100);
    let h = (lines.len() as u16).min(area.height);
    let r = Rect { x: (area.width - w) / 2, y: (area.height - h) / 2, width: w, height: h };
    let lines: Vec<Line> = lines.into_iter().map(|l| cut(l, w)).collect();
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(lines).style(Style::new().bg(Color::Black).fg(Color::White)), r);
}
