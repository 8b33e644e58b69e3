//! `hostprobe top`, and `run`'s live view on a terminal: an interactive
//! view of each interval's [`Report`] (the same one the text and JSON
//! outputs print), busiest first by the time processes are active (on a
//! CPU or waiting for one, the disk, the network or a lock), not by time
//! inside syscalls (which idle processes fill with their waits).
//!
//! The view runs on its own thread: it owns the terminal (raw mode, the
//! alternate screen), reads keys, and draws when a report or a key comes.
//! The terminal is restored on every way out: `q` or Ctrl-C (keys, in raw
//! mode), the end of the run (SIGTERM, SIGINT, `--duration`), an error, and
//! a panic (a panic hook). While the view is on, the agent's log (stderr)
//! goes through a pipe, so it does not scribble over the screen; warnings
//! show on the view's last line, and are printed again when it closes.

mod draw;
mod model;
mod state;

use std::{
    collections::VecDeque,
    io::{self, BufRead as _, IsTerminal as _, Write as _},
    os::fd::FromRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        mpsc::{self, TryRecvError},
        Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyEventKind},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    Terminal,
};

use crate::{output::Sink, report::Report};

/// The interactive view: a [`Sink`] that hands each report to the view's thread.
pub struct View {
    tx: Option<mpsc::SyncSender<Report>>,
    ui: Option<JoinHandle<()>>,
}

/// The terminal is in raw mode on the alternate screen.
static ON: AtomicBool = AtomicBool::new(false);
/// The real stderr while the log goes to the view (-1: not captured).
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
/// Log lines written while the view was on, with when they came.
static LOG: Mutex<VecDeque<(Instant, String)>> = Mutex::new(VecDeque::new());
static LOG_READER: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);
/// Log lines kept.
const LOG_LINES: usize = 200;
/// How long a warning stays on the view's last line.
const WARNING_SHOWN: Duration = Duration::from_secs(10);

impl View {
    /// Takes over the terminal and starts the view's thread; `stop` is
    /// called when the user quits (the agent then ends its run).
    pub fn start(stop: impl FnOnce() + Send + 'static) -> io::Result<View> {
        if !io::stdout().is_terminal() {
            return Err(io::Error::other(
                "the interactive view needs a terminal on stdout; piped, use --output text or --output json",
            ));
        }
        install_panic_hook();
        enter()?;
        let terminal = match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::sync_channel(2);
        let ui = std::thread::Builder::new().name("view".into()).spawn(move || {
            let quit = ui_loop(terminal, rx);
            restore();
            if quit {
                stop();
            }
        });
        match ui {
            Ok(ui) => Ok(View { tx: Some(tx), ui: Some(ui) }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Sink for View {
    fn emit(&mut self, report: Report) -> io::Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(report).is_ok());
        if sent {
            return Ok(());
        }
        // The view has ended: the user quit (a broken pipe, as when a
        // reader of the text output goes away), or it panicked.
        self.tx = None;
        match self.ui.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(io::Error::other("the interactive view failed (see the panic above)")),
            _ => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(ui) = self.ui.take() {
            let _ = ui.join();
        }
        restore();
    }
}

/// Draws and reads keys until the user quits (true) or no more reports come (false).
fn ui_loop(mut terminal: Terminal<CrosstermBackend<io::Stdout>>, rx: mpsc::Receiver<Report>) -> bool {
    let mut s = state::State::default();
    let mut dirty = true;
    // For the end-to-end test of the panic hook: panics once a report is on screen.
    let panic_for_test = std::env::var_os("HOSTPROBE_TOP_TEST_PANIC").is_some();
    loop {
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    s.add(r);
                    dirty = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        if dirty {
            let warning = last_warning();
            if let Err(e) = terminal.draw(|f| draw::draw(f, &mut s, warning.as_deref())) {
                log::error!("drawing the view: {e}");
                return true;
            }
            dirty = false;
            if panic_for_test && s.report.is_some() {
                panic!("HOSTPROBE_TOP_TEST_PANIC is set: the view panics to test that the terminal is restored");
            }
        }
        match event::poll(Duration::from_millis(100)) {
            Ok(false) => {}
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => match s.key(k) {
                    state::Action::Quit => return true,
                    state::Action::Redraw => dirty = true,
                    state::Action::None => {}
                },
                Ok(Event::Resize(..)) => dirty = true,
                Ok(_) => {}
                Err(e) => {
                    log::error!("reading the terminal: {e}");
                    return true;
                }
            },
            Err(e) => {
                log::error!("reading the terminal: {e}");
                return true;
            }
        }
    }
}

fn enter() -> io::Result<()> {
    terminal::enable_raw_mode()?;
    ON.store(true, Ordering::SeqCst);
    if let Err(e) = execute!(io::stdout(), EnterAlternateScreen, cursor::Hide) {
        restore();
        return Err(e);
    }
    capture_stderr();
    Ok(())
}

/// Gives the terminal back as it was: normal mode, the main screen, the
/// cursor, the log on stderr. Safe to call any number of times, from any
/// thread, and from the panic hook.
fn restore() {
    if ON.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
    release_stderr();
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Sends stderr (the log) into a pipe read by a thread, until [`release_stderr`].
fn capture_stderr() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    // SAFETY: duplicating our own stderr; the copy is ours to close.
    let saved = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: fds[1] is the pipe's write end, which we own; after dup2 the
    // copy on fd 2 keeps it open.
    if saved < 0 || unsafe { libc::dup2(fds[1], libc::STDERR_FILENO) } < 0 {
        // SAFETY: closing descriptors we own.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
            if saved >= 0 {
                libc::close(saved);
            }
        }
        return;
    }
    // SAFETY: closing our copy of the write end (fd 2 holds it).
    unsafe { libc::close(fds[1]) };
    SAVED_STDERR.store(saved, Ordering::SeqCst);
    // SAFETY: fds[0] is the pipe's read end, owned by this File from now on.
    let pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let reader = std::thread::Builder::new().name("view-log".into()).spawn(move || {
        for line in io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back((Instant::now(), plain(&line)));
        }
    });
    if let (Ok(r), Ok(mut slot)) = (reader, LOG_READER.lock()) {
        *slot = Some(r);
    }
}

/// Puts stderr back and prints there what the log said other than INFO.
fn release_stderr() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved < 0 {
        return;
    }
    // SAFETY: saved is our copy of the real stderr; dup2 closes the pipe's
    // write end on fd 2, which ends the reader.
    unsafe {
        libc::dup2(saved, libc::STDERR_FILENO);
        libc::close(saved);
    }
    if !std::thread::panicking() {
        if let Some(r) = LOG_READER.lock().ok().and_then(|mut r| r.take()) {
            let _ = r.join();
        }
    }
    if let Ok(mut log) = LOG.try_lock() {
        let mut err = io::stderr().lock();
        for (_, line) in log.drain(..).filter(|(_, l)| !l.contains(" INFO ")) {
            let _ = writeln!(err, "{line}");
        }
    }
}

/// `line` without terminal escapes (the log is colored when stderr was a
/// terminal at start-up).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then a final byte in @..~.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The newest warning or error of the last [`WARNING_SHOWN`].
fn last_warning() -> Option<String> {
    let log = LOG.try_lock().ok()?;
    let (at, line) = log.iter().rev().find(|(_, l)| l.contains(" WARN ") || l.contains(" ERROR"))?;
    (at.elapsed() < WARNING_SHOWN).then(|| line.clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_lose_their_colors() {
        let colored = "\x1b[90m[\x1b[0m2026-12-01T05:57:20Z \x1b[32mINFO \x1b[0m\x1b[90m]\x1b[0m running probes";
        assert_eq!(super::plain(colored), "[2026-12-01T05:57:20Z INFO ] running probes");
    }
}
