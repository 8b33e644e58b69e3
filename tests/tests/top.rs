//! `hostprobe top` in a real terminal (tmux): keys in, the screen out.
//! Truth: the workloads' known behaviour (which one burns a CPU, waits for
//! a lock, makes the most syscalls; the exact number of calls one makes),
//! the terminal's own state as tmux reports it (alternate screen, cursor)
//! and `stty` (raw mode or not).

use std::time::Duration;

use hostprobe_tests::{hostprobe, hostprobe_bin, Tmux, Workload};

const INTERVAL: &str = "300ms";
const WAIT: Duration = Duration::from_secs(20);

fn start_top(t: &Tmux, env: &str) {
    t.type_line(&format!("{env}{} top --interval {INTERVAL}", hostprobe_bin().display()));
}

/// The process table on a screen: the header's columns (name, first and
/// last+1 character) and the rows under it.
struct Table {
    cols: Vec<(String, usize, usize)>,
    rows: Vec<Vec<char>>,
}

fn table(screen: &str) -> Option<Table> {
    let lines: Vec<&str> = screen.lines().collect();
    let at = lines.iter().position(|l| l.trim_start().starts_with("PID ") && l.contains(" COMM "))?;
    let header: Vec<char> = lines[at].chars().collect();
    let mut cols = Vec::new();
    let mut i = 0;
    while i < header.len() {
        if header[i] == ' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < header.len() && header[i] != ' ' {
            i += 1;
        }
        cols.push((header[start..i].iter().collect(), start, i));
    }
    let is_row = |l: &str| l.split_whitespace().next().is_some_and(|w| w.parse::<u32>().is_ok());
    let rows = lines[at + 1..].iter().take_while(|l| is_row(l)).map(|l| l.chars().collect()).collect();
    Some(Table { cols, rows })
}

fn left_aligned(name: &str) -> bool {
    name == "COMM" || name == "VERDICT"
}

impl Table {
    /// The text of column `name` in `row`: a right-aligned cell is the
    /// word that ends under its header's end (figures have no spaces); a
    /// left-aligned one runs from its header's start to the next column.
    fn cell(&self, row: &[char], name: &str) -> String {
        let i = self.cols.iter().position(|c| c.0 == name).unwrap_or_else(|| panic!("no column {name}"));
        let (from, to) = if left_aligned(name) {
            (self.cols[i].1, self.cols.get(i + 1).map_or(row.len(), |c| c.1))
        } else {
            let end = self.cols[i].2.min(row.len());
            (row[..end].iter().rposition(|c| *c == ' ').map_or(0, |p| p + 1), end)
        };
        row.get(from.min(row.len())..to.min(row.len())).unwrap_or(&[]).iter().collect::<String>().trim().to_string()
    }

    fn pids(&self) -> Vec<u32> {
        self.rows.iter().map(|r| self.cell(r, "PID").parse().unwrap()).collect()
    }

    /// Every row: no wider than the terminal, each cell where its header
    /// is (right-aligned ones end under the header's end, left-aligned ones
    /// start under its start), and names never run into the next column.
    fn assert_aligned(&self, width: usize, screen: &str) {
        assert!(!self.rows.is_empty(), "no rows:\n{screen}");
        for row in &self.rows {
            let line: String = row.iter().collect();
            assert!(row.len() <= width, "row wider than {width}: {line:?}");
            for (i, (name, start, end)) in self.cols.iter().enumerate() {
                let ch = |at: usize| row.get(at).copied().unwrap_or(' ');
                if left_aligned(name) {
                    assert!(ch(*start) != ' ' && (*start == 0 || ch(start - 1) == ' '), "{name} not aligned: {line:?}");
                    if let Some(next) = self.cols.get(i + 1) {
                        assert_eq!(ch(next.1 - 1), ' ', "{name} runs into {}: {line:?}", next.0);
                    }
                } else {
                    assert!(ch(end - 1) != ' ' && ch(*end) == ' ', "{name} not aligned: {line:?}\n{screen}");
                }
            }
        }
    }
}

/// A figure as shown: 12%, 1,234, 850ns / 1.2us / 3.1ms / 1.25s; `-` (no
/// figure) as `missing`.
fn figure(s: &str, missing: f64) -> f64 {
    if s == "-" {
        return missing;
    }
    let s = s.trim_end_matches('%').replace(',', "");
    for (unit, scale) in [("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9)] {
        if let Some(n) = s.strip_suffix(unit) {
            return n.parse::<f64>().unwrap() * scale;
        }
    }
    s.parse().unwrap_or_else(|_| panic!("not a figure: {s:?}"))
}

/// Waits for a frame sorted by `header` with rows, and returns it.
fn sorted_by(t: &Tmux, header: &str) -> (String, Table) {
    let screen = t.wait_for(&format!("a table sorted by {header}"), WAIT, |s| {
        s.lines().next().is_some_and(|l| l.contains(&format!("sort {header} ")))
            && table(s).is_some_and(|t| !t.rows.is_empty())
    });
    let tab = table(&screen).unwrap();
    (screen, tab)
}

/// Waits for the shell's prompt on the last line written, with the main
/// screen and the cursor back.
fn assert_terminal_restored(t: &Tmux, way: &str) -> String {
    let screen = t.wait_for(&format!("prompt after {way}"), WAIT, |s| {
        s.lines().rev().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with(Tmux::PROMPT.trim_end()))
    });
    assert_eq!(t.pane("#{alternate_on}"), "0", "{way}: still on the alternate screen:\n{screen}");
    assert_eq!(t.pane("#{cursor_flag}"), "1", "{way}: the cursor is hidden");
    t.type_line("stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e echo -e -icanon -e -echo -e isig -e -isig | sort | tr '\\n' ' '; echo");
    let modes_line = |l: &str| {
        let words: Vec<&str> = l.split_whitespace().collect();
        !words.is_empty() && words.iter().all(|w| ["echo", "icanon", "isig", "-echo", "-icanon", "-isig"].contains(w))
    };
    let modes = t.wait_for("stty's modes", WAIT, |s| s.lines().any(modes_line));
    assert!(
        modes.lines().any(|l| l.trim() == "echo icanon isig"),
        "{way}: the terminal is not back in its normal mode (echo, canonical, signals):\n{modes}"
    );
    t.type_line("clear");
    t.wait_for("a cleared screen", WAIT, |s| s.lines().filter(|l| !l.trim().is_empty()).count() == 1);
    screen
}

#[test]
fn the_busy_process_comes_first_not_the_agent_or_idle_daemons() {
    let mut spin = Workload::spawn(&["spin", "30000", "0"]);
    let mut idle: Vec<Workload> = vec![
        Workload::spawn(&["epoll-idle", "30000"]),
        Workload::spawn(&["pipe-read", "30000"]),
        // Four threads parked on a lock held 200 ms at a time: long waits, idle.
        Workload::spawn(&["contend", "4", "200", "30000"]),
    ];
    let t = Tmux::new(80, 24);
    start_top(&t, "");
    t.wait_for("the view", WAIT, |s| table(s).is_some());
    spin.go();
    idle.iter_mut().for_each(Workload::go);
    // Three refreshes in a row (each its own interval) with the busy one seen.
    let mut frames = Vec::new();
    while frames.len() < 3 {
        let screen = t.wait_for("a new interval with the busy process", WAIT, |s| {
            let time = s.lines().next().unwrap_or("").to_string();
            table(s).is_some_and(|t| t.pids().contains(&spin.pid()))
                && !frames.iter().any(|(f, _): &(String, String)| *f == time)
        });
        frames.push((screen.lines().next().unwrap_or("").to_string(), screen));
    }
    let agent = t.shell_children();
    for (_, screen) in &frames {
        let tab = table(screen).unwrap();
        tab.assert_aligned(80, screen);
        let pids = tab.pids();
        let at = pids.iter().position(|p| *p == spin.pid()).unwrap();
        let row = &tab.rows[at];
        // Truth: it burns a CPU all the time (less when others compete: a
        // busy shared machine); the daemons are idle.
        assert_eq!(tab.cell(row, "VERDICT"), "cpu-bound", "{screen}");
        assert!(figure(&tab.cell(row, "CPU%"), 0.0) >= 40.0, "{screen}");
        // First, or behind only other busy processes (this machine is
        // shared: a compiler may be running), never behind an idle one or
        // the agent.
        for above in &tab.rows[..at] {
            let pid: u32 = tab.cell(above, "PID").parse().unwrap();
            assert!(!agent.contains(&pid), "the agent ranks above the busy process:\n{screen}");
            assert!(tab.cell(above, "VERDICT") != "idle", "an idle process ranks above the busy one:\n{screen}");
        }
        for w in &idle {
            if let Some(row) = tab.rows.iter().find(|r| tab.cell(r, "PID") == w.pid().to_string()) {
                assert_eq!(tab.cell(row, "VERDICT"), "idle", "{screen}");
            }
        }
    }
    // Long names (kernel threads: `kworker/u8:1-flush-254:0`) are cut to
    // their column, and the row stays aligned.
    t.keys(&["/"]);
    t.type_line("kworker");
    let screen = t.wait_for("cut kworker names", WAIT, |s| {
        table(s).is_some_and(|tab| tab.rows.iter().any(|r| tab.cell(r, "COMM").ends_with('~')))
    });
    let tab = table(&screen).unwrap();
    tab.assert_aligned(80, &screen);
    assert!(tab.rows.iter().all(|r| tab.cell(r, "COMM").starts_with("kworker")), "{screen}");
    t.keys(&["q"]);
    assert_terminal_restored(&t, "q");
}

#[test]
fn each_key_sorts_by_its_column_and_slash_filters_by_name() {
    let mut spin = Workload::spawn(&["spin", "30000", "0"]);
    let mut chatty = Workload::spawn(&["chatty", "30000"]);
    // Three threads taking a lock held 5 ms in turn: short waits, contention.
    let mut contend = Workload::spawn(&["contend", "3", "5", "30000"]);
    let mut idle = Workload::spawn(&["epoll-idle", "30000"]);
    let t = Tmux::new(200, 50);
    start_top(&t, "");
    t.wait_for("the view", WAIT, |s| table(s).is_some());
    for w in [&mut spin, &mut chatty, &mut contend, &mut idle] {
        w.go();
    }
    let ours = [spin.pid(), chatty.pid(), contend.pid(), idle.pid()];
    t.wait_for("the workloads", WAIT, |s| table(s).is_some_and(|tab| ours.iter().all(|p| tab.pids().contains(p))));
    let agent = t.shell_children();

    // key, column, natural order, and who must be first (workloads' truth).
    let keys: [(&str, &str, bool, &[u32]); 13] = [
        ("c", "CPU%", true, &[spin.pid(), chatty.pid()]),
        ("s", "SYSC/s", true, &[chatty.pid()]),
        ("l", "LOCK%", true, &[contend.pid()]),
        ("r", "RUNQ%", true, &[]),
        ("d", "DISK%", true, &[]),
        ("n", "NET%", true, &[]),
        ("e", "ERR/s", true, &[]),
        ("t", "P99", true, &[]),
        ("o", "IO/s", true, &[]),
        ("i", "PID", false, &[]),
        ("m", "COMM", false, &[]),
        ("v", "VERDICT", false, &[]),
        ("a", "ACTIVE%", true, &[]),
    ];
    for (key, header, descending, first) in keys {
        t.keys(&[key]);
        let (screen, tab) = sorted_by(&t, header);
        tab.assert_aligned(200, &screen);
        if !first.is_empty() {
            // Ahead of the other workloads and the agent (not necessarily
            // of everything: the machine is shared, a compiler may run).
            let pids = tab.pids();
            let rank = |p: &u32| pids.iter().position(|x| x == p).unwrap_or(usize::MAX);
            let best = first.iter().map(rank).min().unwrap();
            assert!(best < usize::MAX, "{key}: none of {first:?} shown:\n{screen}");
            for other in ours.iter().chain(&agent).filter(|p| !first.contains(p)) {
                assert!(rank(other) > best, "{key}: {other} ranks above {first:?}:\n{screen}");
            }
        }
        let cells: Vec<String> = tab.rows.iter().map(|r| tab.cell(r, header)).collect();
        for pair in cells.windows(2) {
            let ok = match header {
                "PID" => figure(&pair[0], 0.0) <= figure(&pair[1], 0.0),
                "COMM" => {
                    // Cut names (~) compare on what is shown.
                    let (a, b) = (pair[0].to_lowercase(), pair[1].to_lowercase());
                    let (a, b) = (a.trim_end_matches(['~', '*']), b.trim_end_matches(['~', '*']));
                    let n = a.chars().count().min(b.chars().count());
                    a.chars().take(n).collect::<String>() <= b.chars().take(n).collect::<String>()
                }
                // No verdict (`-`, no off-CPU figures) last.
                "VERDICT" => {
                    let key = |v: &str| if v == "-" { "~".to_string() } else { v.to_string() };
                    key(&pair[0]) <= key(&pair[1])
                }
                // No syscalls: no p99 (sorted as 0).
                "P99" => figure(&pair[0], 0.0) >= figure(&pair[1], 0.0),
                // `-`: no off-CPU figures, last.
                _ => figure(&pair[0], -1.0) >= figure(&pair[1], -1.0),
            };
            assert!(
                ok,
                "{key}: {header} not {} at {pair:?}:\n{screen}",
                if descending { "descending" } else { "ascending" }
            );
        }
        // The same key again reverses.
        if key == "i" {
            t.keys(&["i"]);
            let screen =
                t.wait_for("pids reversed", WAIT, |s| s.lines().next().is_some_and(|l| l.contains("sort PID v")));
            let pids = table(&screen).unwrap().pids();
            assert!(pids.windows(2).all(|w| w[0] >= w[1]), "{screen}");
        }
    }

    // Pause: the figures stay; resume: they move again.
    t.keys(&["p"]);
    let paused = t.wait_for("paused", WAIT, |s| s.lines().next().is_some_and(|l| l.contains("PAUSED")));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(t.screen().lines().next(), paused.lines().next(), "the clock moved while paused");
    t.keys(&["p"]);
    t.wait_for("resumed", WAIT, |s| s.lines().next() != paused.lines().next());

    // `/workload` keeps only the workloads.
    t.keys(&["/"]);
    t.type_line("workload");
    let screen = t.wait_for("the filtered list", WAIT, |s| {
        s.lines().next().is_some_and(|l| l.contains("filter \"workload\"")) && table(s).is_some()
    });
    let tab = table(&screen).unwrap();
    assert!(tab.rows.iter().all(|r| tab.cell(r, "COMM").starts_with("workload")), "{screen}");
    for pid in ours {
        assert!(tab.pids().contains(&pid), "{pid} filtered out:\n{screen}");
    }
    // Esc clears the filter.
    t.keys(&["Escape"]);
    t.wait_for("the whole list", WAIT, |s| {
        table(s).is_some_and(|tab| tab.rows.iter().any(|r| !tab.cell(r, "COMM").starts_with("workload")))
    });
    t.keys(&["q"]);
    assert_terminal_restored(&t, "q");
}

#[test]
fn enter_opens_a_process_with_its_real_figures() {
    const CALLS: u64 = 123;
    let mut w = Workload::spawn(&["steady", &CALLS.to_string(), "20"]);
    let t = Tmux::new(120, 50);
    start_top(&t, "");
    t.wait_for("the view", WAIT, |s| table(s).is_some());
    w.go();
    let pid = w.pid();
    t.keys(&["/"]);
    t.type_line("workload");
    t.wait_for("the workload", WAIT, |s| table(s).is_some_and(|tab| tab.pids().first() == Some(&pid)));
    t.keys(&["Enter"]);
    t.wait_for("its screen", WAIT, |s| s.lines().next().is_some_and(|l| l.contains(&format!("process {pid}"))));
    w.wait();
    // Truth: the workload made exactly CALLS getppid calls, all while the view was on.
    let screen = t.wait_for("its getppid count", WAIT, |s| {
        s.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"getppid") && w.get(2) == Some(&CALLS.to_string().as_str())
        })
    });
    for section in ["WHERE ITS TIME WENT", "SYSCALLS", "DISK", "TCP CONNECTIONS", "OFF-CPU", "asleep in nanosleep"] {
        assert!(screen.contains(section), "no {section}:\n{screen}");
    }
    assert!(screen.lines().nth(1).is_some_and(|l| l.contains(&pid.to_string()) && l.contains("verdict")), "{screen}");
    // Esc goes back to the list.
    t.keys(&["Escape"]);
    t.wait_for("the list", WAIT, |s| table(s).is_some());
    t.keys(&["q"]);
    assert_terminal_restored(&t, "q");
}

#[test]
fn the_terminal_is_restored_on_ctrl_c_sigterm_and_panic() {
    let t = Tmux::new(100, 30);
    let view_on = |t: &Tmux| {
        t.wait_for("the view", WAIT, |s| table(s).is_some());
        assert_eq!(t.pane("#{alternate_on}"), "1", "the view is on the alternate screen");
    };

    start_top(&t, "");
    view_on(&t);
    t.keys(&["C-c"]);
    assert_terminal_restored(&t, "Ctrl-C");

    start_top(&t, "");
    view_on(&t);
    let agents = t.shell_children();
    assert_eq!(agents.len(), 1, "{agents:?}");
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(agents[0] as i32, libc::SIGTERM) };
    assert_terminal_restored(&t, "SIGTERM");

    // A panic in the view (a test switch makes it panic once it has drawn a report).
    start_top(&t, "HOSTPROBE_TOP_TEST_PANIC=1 ");
    let screen = t.wait_for("the panic's message", WAIT, |s| s.contains("panicked"));
    assert!(screen.contains("HOSTPROBE_TOP_TEST_PANIC"), "{screen}");
    assert_terminal_restored(&t, "a panic");
}

#[test]
fn top_refuses_a_pipe_and_says_what_to_use() {
    let out = hostprobe().arg("top").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs a terminal") && stderr.contains("--output json"), "{stderr}");
}
