//! What every dlm binary does the same way: exit codes, signals, and terminal output that can
//! never panic (a closed pipe or a full disk is an error to report, not a crash).
//!
//! Exit codes (documented in the README):
//! - 0: success, or standard output closed by the reader (`dlm-run … | head -c1`), as `cat` ends
//!   quietly there;
//! - 2: an error, reported in one line on stderr starting `error:` (bad flags, a bad or
//!   unsupported file, a failed write);
//! - 130: interrupted (SIGINT, SIGTERM or SIGHUP): temporary files are removed first;
//! - 101: an internal error (a bug), reported as one line on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

/// `-t`: the machine's cores when not given; more than the cores is capped with a warning
/// (extra threads only wait for each other); 0 is an error.
pub fn threads(asked: Option<usize>) -> Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match asked {
        None => Ok(cores),
        Some(0) => Err("-t/--threads must be at least 1".into()),
        Some(t) if t > cores => {
            crate::errln!("warning: -t {t} is more than the {cores} cores of this machine; using {cores} (extra threads only wait for each other and slow every step down)");
            Ok(cores)
        }
        Some(t) => Ok(t),
    }
}

/// Exit status of a reported error.
pub const EXIT_ERROR: u8 = 2;
/// Exit status after SIGINT, SIGTERM or SIGHUP.
pub const EXIT_INTERRUPTED: i32 = 130;

/// How much goes to stderr besides errors: `--log-disable` (none), the default, `-v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Log {
    Off = 0,
    Normal = 1,
    Verbose = 2,
}

static LOG: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(Log::Normal as u8);

/// Sets what [`errln!`] and [`errp!`] print; an `error:` line from [`exit`] always prints.
pub fn set_log(level: Log) {
    LOG.store(level as u8, std::sync::atomic::Ordering::Relaxed);
}

/// Whether messages of `level` go to stderr.
pub fn logs(level: Log) -> bool {
    LOG.load(std::sync::atomic::Ordering::Relaxed) >= level as u8
}

/// `eprintln!` that ignores a failed write (stderr closed or on a full device), and prints
/// nothing under `--log-disable` ([`set_log`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if $crate::cli::logs($crate::cli::Log::Normal) {
            let _ = writeln!(std::io::stderr(), $($arg)*);
        }
    }};
}

/// `eprint!` that ignores a failed write, and prints nothing under `--log-disable`.
#[macro_export]
macro_rules! errp {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if $crate::cli::logs($crate::cli::Log::Normal) {
            let mut e = std::io::stderr();
            let _ = write!(e, $($arg)*);
            let _ = e.flush();
        }
    }};
}

/// A line on stderr whatever the log level: errors.
pub(crate) fn error_line(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `println!` that returns the write's error (for `?`; [`exit`] turns a closed pipe into a
/// quiet exit).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err(|e| anyhow::Error::new(e).context("writing to standard output"))
    }};
}

/// `--version`'s long form, shared by the binaries: the crate version, the backends this
/// build has, and the linked ggml's version.
pub fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let backends: Vec<&str> = [
            (cfg!(feature = "ggml"), "cpu (ggml)"),
            (cfg!(feature = "cuda"), "cuda (ggml)"),
            (cfg!(feature = "metal"), "metal (ggml)"),
            (cfg!(feature = "vulkan"), "vulkan (ggml)"),
            (cfg!(feature = "wgpu"), "wgpu (WGSL kernels: Vulkan, Metal, DX12)"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        #[cfg(feature = "ggml")]
        let ggml = crate::backend::ggml::version();
        #[cfg(not(feature = "ggml"))]
        let ggml = "not linked".to_string();
        format!("{}\nbackends: {}\nggml: {ggml}", env!("CARGO_PKG_VERSION"), backends.join(", "))
    })
}

/// `--completions SHELL`: the completion script for `cmd` on stdout.
pub fn print_completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write as _;
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    let mut stdout = std::io::stdout();
    stdout.write_all(&out).and_then(|_| stdout.flush()).map_err(|e| anyhow::Error::new(e).context("writing to standard output"))
}

/// Temporary files that an interrupt must remove (the [`crate::atomic::AtomicFile`]s alive).
static TEMP_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) fn register_temp(p: &Path) {
    if let Ok(mut v) = TEMP_FILES.lock() {
        v.push(p.to_path_buf());
    }
}

pub(crate) fn unregister_temp(p: &Path) {
    if let Ok(mut v) = TEMP_FILES.lock() {
        v.retain(|q| q != p);
    }
}

/// What the program shows when interrupted, before it exits (the work done so far).
type InterruptHook = Box<dyn Fn() + Send>;
static ON_INTERRUPT: Mutex<Option<InterruptHook>> = Mutex::new(None);

/// Removes the partial outputs registered so far (the interrupt handler and fatal paths that
/// end the process without unwinding call it).
pub fn remove_temp_files() {
    // try_lock: a list being changed right now is left alone rather than waited for.
    if let Ok(v) = TEMP_FILES.try_lock() {
        for p in v.iter() {
            let _ = std::fs::remove_file(p);
        }
    }
}

static TURN_RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TURN_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// While `running` (a conversation's turn: `dlm-run -cnv`), SIGINT/SIGTERM/SIGHUP end the turn
/// instead of the program: [`turn_interrupted`] turns true and the handler returns. Outside a
/// turn they end the program as always.
pub fn interrupt_ends_turn(running: bool) {
    TURN_STOP.store(false, std::sync::atomic::Ordering::SeqCst);
    TURN_RUNNING.store(running, std::sync::atomic::Ordering::SeqCst);
}

/// Whether a signal asked the running turn to end.
pub fn turn_interrupted() -> bool {
    TURN_STOP.load(std::sync::atomic::Ordering::SeqCst)
}

/// Sets what an interrupt prints before the program exits 130 (replacing any earlier one).
pub fn on_interrupt(f: impl Fn() + Send + 'static) {
    if let Ok(mut h) = ON_INTERRUPT.lock() {
        *h = Some(Box::new(f));
    }
}

/// The terminal's size (columns, rows) when `fd` is one.
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn terminal_size(fd: i32) -> Option<(usize, usize)> {
    let mut ws: libc::winsize = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points at ours.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

#[cfg(not(unix))]
pub fn terminal_size(_fd: i32) -> Option<(usize, usize)> {
    None
}

/// Installs, once at start: the handler of SIGINT/SIGTERM/SIGHUP (remove temporary files, say
/// "interrupted", exit 130), a SIGBUS handler (a mapped file changed under us: one line, exit
/// 2), and a panic hook that prints one line.
pub fn install() {
    install_hooks();
    // The handler runs on its own thread (not in the signal context): it may lock and do I/O.
    let _ = ctrlc::set_handler(|| {
        // In a conversation turn the first signal ends the turn; a second before the turn has
        // noticed it ends the program as usual.
        if TURN_RUNNING.load(std::sync::atomic::Ordering::SeqCst) && !TURN_STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        remove_temp_files();
        errln!("\ninterrupted");
        // try_lock: a hook being replaced right now is skipped rather than waited for.
        if let Ok(hook) = ON_INTERRUPT.try_lock() {
            if let Some(f) = hook.as_ref() {
                f();
            }
        }
        exit_now(EXIT_INTERRUPTED);
    });
}

/// [`install`] without the interrupt handler, for a program that handles its signals itself
/// (`dlm-server` shuts down gracefully): the one-line panic hook and the SIGBUS handler.
pub fn install_hooks() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.payload().downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| info.payload().downcast_ref::<String>().cloned()).unwrap_or_default();
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        error_line(&format!("error: internal error{at}: {msg} (this is a bug in dlm; please report it with the command line)"));
    }));
    #[cfg(unix)]
    sigbus::install();
}

#[cfg(unix)]
#[allow(unsafe_code)]
mod sigbus {
    const MSG: &[u8] = b"error: a memory-mapped file (the model or a checkpoint shard) was truncated or changed while in use (SIGBUS); nothing may modify it during the run\n";

    /// Set by the first thread to fault: ggml's compute threads read the same truncated pages,
    /// and the message must be printed once.
    static FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    extern "C" fn on_sigbus(_: libc::c_int) {
        if FIRST.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // Another thread is printing and exiting: wait for it (returning would fault again).
            loop {
                // SAFETY: pause(2) is async-signal-safe and only suspends this thread.
                unsafe { libc::pause() };
            }
        }
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a static byte string.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(super::EXIT_ERROR as i32);
        }
    }

    pub fn install() {
        // SAFETY: installs a handler that only calls async-signal-safe functions; the
        // function pointer has the C signature `signal` expects.
        unsafe {
            libc::signal(libc::SIGBUS, on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
}

/// Ends the process at once, from any thread, without running exit handlers: ggml's compute
/// threads may still be inside a graph, and C++ static destructors run by `exit` under them
/// crash the process (seen as SIGSEGV after Ctrl-C).
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) ends the process without touching any state of this one; it never returns.
    unsafe { libc::_exit(code) }
}

#[cfg(not(unix))]
pub fn exit_now(code: i32) -> ! {
    std::process::exit(code)
}

/// Whether process `pid` still runs (a temporary file it owns must not be removed).
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
pub(crate) fn process_alive(_pid: u32) -> bool {
    true
}

/// Whether `e` is a write to a pipe whose reader has gone.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
        || e.chain().any(|c| matches!(c.downcast_ref::<crate::Error>(), Some(crate::Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The process's exit status for `r`: an error is printed as one line (`error: …`, its causes
/// joined by `: `) and exits 2; a closed standard output exits 0 without a word.
pub fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            error_line(&format!("error: {line}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}
