//! `tcpq-agent top`: the engine of `trace` with a sink that keeps a live
//! picture (`tally::Tally`) instead of printing lines, and a screen thread
//! that draws it and reads the keys.
//!
//! Threads: the engine (its own current-thread runtime, as in `trace`);
//! the screen (draws at least once a second, and on every key); the owner
//! lookups (`/proc` walks for listeners no report has named yet, off the
//! engine's thread); the stderr reader (the engine's messages go to the
//! header instead of over the screen, and are printed after exit).
//!
//! The terminal is restored on every way out: `q`/Ctrl-C (raise SIGINT,
//! which the engine treats as Ctrl-C outside a raw terminal), SIGTERM,
//! SIGINT and SIGHUP (the engine stops, the guard drops), errors (the guard
//! drops before `main` prints the error) and panics (the hook restores
//! first).

mod arrange;
mod clients;
mod filter;
mod frame;
mod tally;
mod ui;
mod verdict;

use std::{
    collections::HashMap,
    io::{self, BufRead, Write},
    os::fd::{FromRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use crossterm::{
    event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{backend::CrosstermBackend, Terminal};
use tokio::signal::unix::{signal, SignalKind};

use crate::{cmd::cli::TopArgs, owner::resolve::Resolver};
use arrange::{arrange, SortBy};
use filter::OwnerFilter;
use frame::Frame;
use tally::Tally;

/// Whether the terminal is in raw mode on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The real stderr while ours goes to a pipe (-1 = not redirected).
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

pub fn run(args: TopArgs) -> Result<()> {
    // SAFETY: isatty has no preconditions.
    if unsafe { libc::isatty(0) != 1 || libc::isatty(1) != 1 } {
        bail!("top needs a terminal (stdin and stdout are not a TTY): use `tcpq-agent trace` for a line per event, or `tcpq-agent status` for one table");
    }
    let trace_args = args.to_trace();
    crate::cmd::cli::validate("top", &trace_args)?;
    let filter = OwnerFilter {
        pid: args.pid,
        comm: args.comm.clone(),
        cgroup: args.cgroup.clone(),
        container: args.container.clone(),
    };
    let mut tally = Tally::new(filter, args.port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        // Before the screen can raise SIGINT for `q`: the signals' default
        // action (exit without restoring the terminal) is replaced now.
        let _int = signal(SignalKind::interrupt())?;
        let _term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            // The terminal went away: stop as for SIGTERM.
            if hup.recv().await.is_some() {
                raise(libc::SIGTERM);
            }
        });
        let messages = capture_stderr()?;
        let guard = TermGuard::enter()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (drawn_tx, drawn_rx) = std::sync::mpsc::channel();
        {
            let (frame, stop, messages) = (tally.frame.clone(), stop.clone(), messages.clone());
            std::thread::Builder::new()
                .name("tcpq-screen".into())
                .spawn(move || {
                    let _ = drawn_tx.send(screen(frame, stop, messages));
                })?;
        }
        let owners = {
            let (wanted, owners, stop) = (tally.wanted.clone(), tally.owners.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tcpq-owners".into())
                .spawn(move || owner_lookups(wanted, owners, stop))?
        };
        let result = crate::engine::engine(trace_args.engine(), &mut tally, None).await;
        stop.store(true, Ordering::Relaxed);
        // A terminal that went away (SIGHUP) can leave crossterm's read
        // retrying forever: wait a moment for the screen, never longer; the
        // process exit ends a stuck thread.
        let drawn = drawn_rx
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or(Ok(()));
        let _ = owners.join();
        drop(guard);
        restore_stderr();
        for m in messages.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            eprintln!("{m}");
        }
        result.and(drawn.context("drawing the screen"))
    })
}

fn raise(sig: i32) {
    // SAFETY: plain syscalls on our own pid.
    unsafe {
        libc::kill(libc::getpid(), sig);
    }
}

/// Raw mode and the alternate screen, undone on drop (and by the panic
/// hook).
struct TermGuard;

impl TermGuard {
    fn enter() -> Result<TermGuard> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            restore_stderr();
            previous(info);
        }));
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        ACTIVE.store(true, Ordering::SeqCst);
        execute!(io::stdout(), EnterAlternateScreen, crossterm::cursor::Hide)
            .context("entering the alternate screen")?;
        Ok(TermGuard)
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
        let _ = terminal::disable_raw_mode();
        let _ = io::stdout().flush();
    }
}

/// Sends fd 2 into a pipe whose lines are kept (the last 100) so that the
/// engine's messages do not draw over the screen.
fn capture_stderr() -> Result<Arc<Mutex<Vec<String>>>> {
    let mut fds: [RawFd; 2] = [0; 2];
    // SAFETY: fds is a valid array of two ints; dup/dup2 on open fds.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            bail!("creating a pipe: {}", io::Error::last_os_error());
        }
        let saved = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3);
        if saved < 0 || libc::dup2(fds[1], 2) < 0 {
            bail!("redirecting stderr: {}", io::Error::last_os_error());
        }
        libc::close(fds[1]);
        SAVED_STDERR.store(saved, Ordering::SeqCst);
    }
    // SAFETY: fds[0] is ours alone from here on.
    let reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = lines.clone();
    std::thread::Builder::new()
        .name("tcpq-stderr".into())
        .spawn(move || {
            for l in io::BufReader::new(reader).lines().map_while(Result::ok) {
                let mut v = out.lock().unwrap_or_else(|e| e.into_inner());
                if v.len() >= 100 {
                    v.remove(0);
                }
                v.push(l);
            }
        })?;
    Ok(lines)
}

fn restore_stderr() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: saved is the dup of the original stderr.
        unsafe {
            libc::dup2(saved, 2);
            libc::close(saved);
        }
    }
}

/// Owners of listeners no report has named (the engine caches owners only
/// for sockets it reports): `/proc` walked at most every 5 s for new
/// listeners, every 5 s for holders that forked or exited.
fn owner_lookups(
    wanted: Arc<Mutex<tally::Wanted>>,
    owners: Arc<Mutex<HashMap<u32, crate::owner::resolve::Owner>>>,
    stop: Arc<AtomicBool>,
) {
    let mut resolver = Resolver::new(Duration::from_secs(5));
    while !stop.load(Ordering::Relaxed) {
        let (inodes, groups) = wanted.lock().unwrap_or_else(|e| e.into_inner()).clone();
        resolver.set_groups(groups);
        resolver.learn(inodes.iter().copied());
        resolver.retain(|i| inodes.contains(&i));
        let found: HashMap<u32, crate::owner::resolve::Owner> = inodes
            .iter()
            .filter_map(|i| Some((*i, resolver.get(*i)?.clone())))
            .collect();
        *owners.lock().unwrap_or_else(|e| e.into_inner()) = found;
        for _ in 0..10 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The screen: redraws when a new frame arrives, on a key, and at least
/// every second; stops the engine on `q`, Ctrl-C or a terminal error.
fn screen(
    frame: Arc<Mutex<Frame>>,
    stop: Arc<AtomicBool>,
    messages: Arc<Mutex<Vec<String>>>,
) -> io::Result<()> {
    let result = draw_loop(&frame, &stop, &messages);
    if result.is_err() {
        raise(libc::SIGINT);
    }
    result
}

fn draw_loop(
    frame: &Mutex<Frame>,
    stop: &AtomicBool,
    messages: &Mutex<Vec<String>>,
) -> io::Result<()> {
    let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    let mut s = ui::Screen::default();
    let mut shown = Frame::default();
    let mut dirty = true;
    let mut last_draw = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if !s.paused {
            let f = frame.lock().unwrap_or_else(|e| e.into_inner());
            if f.generation != shown.generation {
                shown = f.clone();
                dirty = true;
            }
        }
        if let Some(m) = messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .filter(|m| **m != s.message)
        {
            s.message = m.clone();
            dirty = true;
        }
        if dirty || last_draw.elapsed() >= Duration::from_secs(1) {
            let rows = arrange(&shown.rows, s.sort.unwrap_or(SortBy::Trouble), &s.filter);
            // The top row until a listener is picked with ↑/↓; that one
            // stays selected across re-sorts while it is shown.
            let i = s
                .selected
                .and_then(|k| rows.iter().position(|r| r.key == k))
                .or(if rows.is_empty() { None } else { Some(0) });
            s.table.select(i);
            term.draw(|f| ui::draw(f, &shown, &rows, &mut s))?;
            dirty = false;
            last_draw = std::time::Instant::now();
        }
        if !event::poll(Duration::from_millis(200))? {
            continue;
        }
        let Event::Key(k) = event::read()? else {
            dirty = true; // resize
            continue;
        };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        dirty = true;
        on_key(&mut s, k, &shown);
    }
    Ok(())
}

/// What a key does: while typing a filter, edits it; else sorts, pauses,
/// moves the selection in `shown`'s rows as arranged, or quits.
fn on_key(s: &mut ui::Screen, k: KeyEvent, shown: &Frame) {
    if s.editing {
        match k.code {
            KeyCode::Enter => s.editing = false,
            KeyCode::Esc => {
                s.editing = false;
                s.filter.clear();
            }
            KeyCode::Backspace => {
                s.filter.pop();
            }
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                raise(libc::SIGINT);
            }
            KeyCode::Char(c) => s.filter.push(c),
            _ => {}
        }
        return;
    }
    let rows = arrange(&shown.rows, s.sort.unwrap_or(SortBy::Trouble), &s.filter);
    let at = s.table.selected().filter(|&i| i < rows.len());
    match k.code {
        KeyCode::Char('q') => raise(libc::SIGINT),
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => raise(libc::SIGINT),
        KeyCode::Char('s') => s.sort = Some(s.sort.unwrap_or(SortBy::Trouble).next()),
        KeyCode::Char('/') => s.editing = true,
        KeyCode::Char('p') | KeyCode::Char(' ') => s.paused = !s.paused,
        KeyCode::Down | KeyCode::Char('j') => {
            let i = at.map_or(0, |i| (i + 1).min(rows.len().saturating_sub(1)));
            s.selected = rows.get(i).map(|r| r.key);
        }
        KeyCode::Up | KeyCode::Char('k') => {
            let i = at.map_or(0, |i| i.saturating_sub(1));
            s.selected = rows.get(i).map(|r| r.key);
        }
        _ => {}
    }
}
