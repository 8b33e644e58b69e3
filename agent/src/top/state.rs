//! What the view shows and how keys change it: the report on screen, the
//! sort, the filter, the selection, the open process, and each process's
//! syscall counts since the view started. No terminal here.

use std::{
    collections::{BTreeMap, HashMap},
    rc::Rc,
};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::model::{self, Col, Row};
use crate::report::{ProcessReport, Report};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    List,
    Process(u32),
}

/// What a key asks of the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Redraw,
    Quit,
}

/// A syscall's calls and failures since the view started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Total {
    pub calls: u64,
    pub errors: u64,
}

pub struct State {
    /// The report on screen (frozen while paused).
    pub report: Option<Rc<Report>>,
    /// The newest report that came while paused.
    pending: Option<Rc<Report>>,
    /// The rows of `report`, filtered and sorted.
    pub rows: Vec<Row>,
    pub sort: Col,
    pub reverse: bool,
    pub filter: String,
    pub editing: bool,
    pub paused: bool,
    pub help: bool,
    pub screen: Screen,
    /// Selected row, and the first row shown.
    pub selected: usize,
    pub offset: usize,
    selected_pid: Option<u32>,
    /// Rows that fit on the screen (set when drawn).
    pub page: usize,
    /// Scroll of the process screen.
    pub scroll: u16,
    /// Per pid: calls and failures per syscall name since the view started.
    pub totals: HashMap<u32, BTreeMap<String, Total>>,
    /// The last report that had the open process, and where in it.
    pub last_seen: Option<(Rc<Report>, usize)>,
    /// Reports received.
    pub reports: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            report: None,
            pending: None,
            rows: Vec::new(),
            sort: Col::Active,
            reverse: false,
            filter: String::new(),
            editing: false,
            paused: false,
            help: false,
            screen: Screen::List,
            selected: 0,
            offset: 0,
            selected_pid: None,
            page: 10,
            scroll: 0,
            totals: HashMap::new(),
            last_seen: None,
            reports: 0,
        }
    }
}

impl State {
    /// Takes a new interval's report: counted at once, shown unless paused.
    pub fn add(&mut self, r: Report) {
        self.reports += 1;
        let open = match self.screen {
            Screen::Process(pid) => Some(pid),
            Screen::List => None,
        };
        for p in &r.processes {
            let t = self.totals.entry(p.pid).or_default();
            for s in &p.syscalls {
                if !t.contains_key(&s.name) {
                    t.insert(s.name.clone(), Total::default());
                }
                if let Some(e) = t.get_mut(&s.name) {
                    e.calls += s.latency.count;
                    e.errors += s.latency.errors;
                }
            }
        }
        // A pid that exited can come back as another process: forget it
        // (unless it is on screen).
        for p in r.processes.iter().filter(|p| p.exited && Some(p.pid) != open) {
            self.totals.remove(&p.pid);
        }
        let r = Rc::new(r);
        if self.paused {
            self.pending = Some(r);
        } else {
            self.show(r);
        }
    }

    fn show(&mut self, r: Rc<Report>) {
        self.report = Some(r);
        self.refresh();
    }

    /// Rebuilds the rows (after a new report, a sort or a filter), keeping
    /// the selection on the same process.
    pub fn refresh(&mut self) {
        let Some(r) = &self.report else { return };
        if let Screen::Process(pid) = self.screen {
            if let Some(i) = r.processes.iter().position(|p| p.pid == pid) {
                self.last_seen = Some((r.clone(), i));
            }
        }
        let mut rows = model::rows(r);
        model::filter(&mut rows, &self.filter);
        model::sort(&mut rows, self.sort, self.reverse);
        self.rows = rows;
        if let Some(pid) = self.selected_pid {
            if let Some(i) = self.rows.iter().position(|r| r.pid == pid) {
                self.selected = i;
            }
        }
        self.clamp();
    }

    /// Keeps the selection in the rows and on the page.
    pub fn clamp(&mut self) {
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
        self.selected_pid = self.rows.get(self.selected).map(|r| r.pid);
        let page = self.page.max(1);
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + page {
            self.offset = self.selected + 1 - page;
        }
        self.offset = self.offset.min(self.rows.len().saturating_sub(page));
    }

    fn select(&mut self, to: usize) {
        self.selected = to;
        self.selected_pid = None;
        self.clamp();
    }

    /// The open process's figures: from the report on screen, or the last
    /// one it was in (with `false`: not seen in the interval on screen).
    pub fn open_process(&self) -> Option<(&ProcessReport, &Report, bool)> {
        let Screen::Process(pid) = self.screen else { return None };
        if let Some(r) = &self.report {
            if let Some(p) = r.processes.iter().find(|p| p.pid == pid) {
                return Some((p, r, true));
            }
        }
        let (r, i) = self.last_seen.as_ref()?;
        let p = r.processes.get(*i).filter(|p| p.pid == pid)?;
        Some((p, r, false))
    }

    pub fn key(&mut self, k: KeyEvent) -> Action {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('d')) {
            return Action::Quit;
        }
        if self.editing {
            match k.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !ctrl => self.filter.push(c),
                _ => return Action::None,
            }
            self.refresh();
            return Action::Redraw;
        }
        if self.help {
            return match k.code {
                KeyCode::Char('q') => Action::Quit,
                _ => {
                    self.help = false;
                    Action::Redraw
                }
            };
        }
        match (self.screen, k.code) {
            (_, KeyCode::Char('q')) => return Action::Quit,
            (_, KeyCode::Char('?')) | (_, KeyCode::F(1)) => self.help = true,
            (_, KeyCode::Char('p')) | (_, KeyCode::Char(' ')) => {
                self.paused = !self.paused;
                if let Some(r) = self.pending.take().filter(|_| !self.paused) {
                    self.show(r);
                }
            }
            (Screen::Process(_), KeyCode::Esc | KeyCode::Backspace | KeyCode::Left) => {
                self.screen = Screen::List;
                self.last_seen = None;
                self.refresh();
            }
            (Screen::Process(_), KeyCode::Down | KeyCode::Char('j')) => self.scroll = self.scroll.saturating_add(1),
            (Screen::Process(_), KeyCode::Up | KeyCode::Char('k')) => self.scroll = self.scroll.saturating_sub(1),
            (Screen::Process(_), KeyCode::PageDown) => self.scroll = self.scroll.saturating_add(10),
            (Screen::Process(_), KeyCode::PageUp) => self.scroll = self.scroll.saturating_sub(10),
            (Screen::Process(_), _) => return Action::None,
            (Screen::List, KeyCode::Char('/')) => self.editing = true,
            (Screen::List, KeyCode::Esc) => {
                self.filter.clear();
                self.refresh();
            }
            (Screen::List, KeyCode::Enter | KeyCode::Right) => {
                if let Some(r) = self.rows.get(self.selected) {
                    self.screen = Screen::Process(r.pid);
                    self.scroll = 0;
                    self.last_seen = None;
                    self.refresh();
                }
            }
            (Screen::List, KeyCode::Down | KeyCode::Char('j')) => self.select(self.selected + 1),
            (Screen::List, KeyCode::Up | KeyCode::Char('k')) => self.select(self.selected.saturating_sub(1)),
            (Screen::List, KeyCode::PageDown) => self.select(self.selected + self.page.max(1)),
            (Screen::List, KeyCode::PageUp) => self.select(self.selected.saturating_sub(self.page.max(1))),
            (Screen::List, KeyCode::Home) => self.select(0),
            (Screen::List, KeyCode::End) => self.select(self.rows.len().saturating_sub(1)),
            (Screen::List, KeyCode::Char(c)) => match Col::by_key(c) {
                Some(col) if col == self.sort => {
                    self.reverse = !self.reverse;
                    self.refresh();
                }
                Some(col) => {
                    (self.sort, self.reverse) = (col, false);
                    self.refresh();
                }
                None => return Action::None,
            },
            _ => return Action::None,
        }
        Action::Redraw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{probes::Interval, procinfo::ProcCache, report::build};

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn report(calls: &[(u32, u64)]) -> Report {
        let mut interval = Interval::default();
        for (pid, n) in calls {
            let p = interval.processes.entry(*pid).or_default();
            p.kernel_comm = Some(format!("p{pid}"));
            let mut d = crate::probes::syscall::SyscallData { count: *n, total_ns: n * 1000, ..Default::default() };
            (0..*n).for_each(|_| d.hist.record(1000));
            p.syscalls.insert(crate::syscalls::number("read").unwrap(), d);
        }
        build(interval, usize::MAX, &mut ProcCache::new(false), &mut Default::default(), 1_000_000_000, "h", vec![])
    }

    #[test]
    fn counts_add_up_across_reports_and_pause_freezes_the_screen() {
        let mut s = State::default();
        s.add(report(&[(4_000_001, 10), (4_000_002, 5)]));
        s.key(key(KeyCode::Char('p')));
        s.add(report(&[(4_000_001, 7)]));
        assert_eq!(s.rows.len(), 2, "paused: the first report stays on screen");
        // Pids that cannot exist are reported as exited: forgotten after counting.
        assert!(s.totals.is_empty());
        s.key(key(KeyCode::Char('p')));
        assert_eq!(s.rows.len(), 1, "unpaused: the newest report");
    }

    #[test]
    fn the_open_process_keeps_its_totals_and_last_figures() {
        // This test's own process: alive, so not forgotten as exited.
        let me = std::process::id();
        let mut s = State::default();
        s.add(report(&[(me, 10), (4_000_002, 5)]));
        s.key(key(KeyCode::Char('i')));
        assert_eq!(s.rows[0].pid, me, "sorted by pid");
        s.key(key(KeyCode::Enter));
        assert_eq!(s.screen, Screen::Process(me));
        s.add(report(&[(me, 7)]));
        s.add(report(&[(4_000_002, 7)]));
        let (p, _, current) = s.open_process().expect("still shown");
        assert_eq!((p.pid, current), (me, false));
        assert_eq!(s.totals[&me]["read"], Total { calls: 17, errors: 0 });
        s.key(key(KeyCode::Esc));
        assert_eq!(s.screen, Screen::List);
    }

    #[test]
    fn filter_keys_edit_and_clear() {
        let mut s = State::default();
        s.add(report(&[(4_000_001, 10), (4_000_012, 5)]));
        for k in [KeyCode::Char('/'), KeyCode::Char('1'), KeyCode::Char('2'), KeyCode::Enter] {
            s.key(key(k));
        }
        assert_eq!(s.filter, "12");
        assert_eq!(s.rows.iter().map(|r| r.pid).collect::<Vec<_>>(), [4_000_012]);
        s.key(key(KeyCode::Esc));
        assert_eq!(s.rows.len(), 2);
        assert_eq!(s.key(key(KeyCode::Char('q'))), Action::Quit);
    }
}
