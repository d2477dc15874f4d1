//! Chat messages rendered into a prompt with the model's Jinja chat template
//! (`tokenizer.chat_template`, or `--chat-template FILE`), as llama.cpp's server and mistral.rs
//! do: minijinja, with Python's string methods (`.strip()`, `.startswith()`) that Hugging Face
//! templates call, and their `raise_exception`.

use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value;

pub struct Template {
    env: Environment<'static>,
    /// The source, for the child process that renders it.
    source: String,
    /// Rendered in a child process under limits (Linux, unless the child cannot start).
    isolated: bool,
}

/// The longest rendered prompt accepted: rendering stops there, whatever the template does.
const MAX_RENDERED: usize = 4 << 20;

/// Interpreter instructions one rendering may take (bounds the time of a template's loops).
const FUEL: u64 = 50_000_000;

/// Why rendering failed.
#[derive(Debug)]
pub struct RenderError {
    pub message: String,
    pub kind: Failure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The template's own logic refused (`raise_exception`, an undefined method): the request.
    Logic,
    /// A limit (prompt size, fuel, memory, CPU, wall time) stopped it: a template that hits one
    /// on a one-message probe is refused at start.
    Limit,
    /// The server could not render now (no renderer process, every slot busy for too long):
    /// not the request's fault.
    Unavailable,
}

impl RenderError {
    fn logic(message: String) -> Self {
        RenderError { message, kind: Failure::Logic }
    }
    fn limit(message: String) -> Self {
        RenderError { message, kind: Failure::Limit }
    }
}

impl Template {
    /// Compiles `source`; the error says what is wrong and where.
    pub fn new(source: String) -> Result<Template, String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> { Err(Error::new(ErrorKind::InvalidOperation, msg)) });
        // Templates that stamp today's date (LLaMA 3's) get it (UTC).
        env.add_function("strftime_now", |fmt: String| -> String { strftime(&fmt, now()) });
        // Bounded work: a template's loops cannot run away.
        env.set_fuel(Some(FUEL));
        env.add_template_owned("chat", source.clone()).map_err(|e| describe(&e))?;
        Ok(Template { env, source, isolated: cfg!(target_os = "linux") })
    }

    /// The prompt for `messages` ([{role, content}]), ending where the assistant's reply starts.
    /// On Linux it is rendered in a child process with limits on memory and CPU time (see
    /// [`isolated`]): minijinja has no bound on the memory a template's string operations take,
    /// and a template that doubles a string 30 times, or repeats a long message once per turn
    /// into a variable, would otherwise end the whole server on a failed allocation.
    pub fn render(&self, messages: &Value, bos: &str, eos: &str) -> Result<String, RenderError> {
        #[cfg(target_os = "linux")]
        if self.isolated {
            return isolated::render(&self.source, messages, bos, eos);
        }
        self.render_here(messages, bos, eos)
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// From now on renders in this process (when the child process cannot run at all).
    pub fn render_in_process(&mut self) {
        self.isolated = false;
    }

    /// Renders in this process: bounded in instructions (fuel) and in output (the prompt cap,
    /// checked as it is written), not in the memory of the template's own variables.
    pub fn render_here(&self, messages: &Value, bos: &str, eos: &str) -> Result<String, RenderError> {
        let t = self.env.get_template("chat").map_err(|e| RenderError::logic(describe(&e)))?;
        let ctx = minijinja::context! { messages => messages, add_generation_prompt => true, bos_token => bos, eos_token => eos };
        let mut out = Capped { bytes: Vec::new(), over: false };
        if let Err(e) = t.render_captured_to(ctx, &mut out) {
            return Err(if out.over {
                RenderError::limit(format!("the rendered prompt is longer than {} MiB", MAX_RENDERED >> 20))
            } else if e.kind() == ErrorKind::OutOfFuel {
                RenderError::limit(format!("{} (more than {FUEL} template instructions)", describe(&e)))
            } else {
                RenderError::logic(describe(&e))
            });
        }
        String::from_utf8(out.bytes).map_err(|_| RenderError::logic("the rendered prompt is not UTF-8".into()))
    }
}

/// An output that refuses to grow past [`MAX_RENDERED`] bytes.
struct Capped {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED {
            self.over = true;
            return Err(std::io::Error::other("the prompt limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Rendering in a child process: `dlm-server` runs itself with [`isolated::CHILD_ARG`], sends
/// the template and the messages on its stdin and reads the prompt from its stdout. The child
/// lowers its own limits first (address space: what it has mapped plus 1 GiB; CPU: 10 s, then
/// SIGKILL; no core file; first in line for the out-of-memory killer), so a template that needs
/// more dies alone (a failed allocation aborts it) and the request gets a 400. The parent kills
/// a child still running after 30 s of wall time. Costs a process start per chat request.
#[cfg(target_os = "linux")]
pub mod isolated {
    use std::io::{Read as _, Write as _};
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Command, Stdio};
    use std::sync::{mpsc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use super::{Failure, RenderError, Template, MAX_RENDERED};

    /// The first argument that makes `dlm-server` a renderer.
    pub const CHILD_ARG: &str = "--internal-render-chat-template";
    /// Memory a rendering may take beyond what the child has mapped when it starts.
    const MEMORY: u64 = 1 << 30;
    /// CPU seconds a rendering may take (fuel bounds it first in all but odd cases).
    const CPU_SECONDS: u64 = 10;
    /// Wall time a rendering, and a wait for a free slot, may take.
    const WALL: Duration = Duration::from_secs(30);
    /// Renderings at once: each may take `MEMORY`.
    const AT_ONCE: usize = 2;
    /// The child's exit code for a template's own error (the message on stdout).
    const LOGIC: i32 = 3;
    /// ... and for a limit it noticed itself (the prompt cap, fuel).
    const LIMIT: i32 = 4;
    /// The longest error message a child sends.
    const MAX_MESSAGE: usize = 4096;

    static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

    fn unavailable(what: String) -> RenderError {
        RenderError { message: format!("cannot render the chat template now: {what}"), kind: Failure::Unavailable }
    }

    pub fn render(source: &str, messages: &Value, bos: &str, eos: &str) -> Result<String, RenderError> {
        let _slot = Slot::take().ok_or_else(|| unavailable(format!("{AT_ONCE} renderings have been running for {} s", WALL.as_secs())))?;
        let request = serde_json::json!({"template": source, "messages": messages, "bos": bos, "eos": eos}).to_string();
        let mut child = Command::new("/proc/self/exe")
            .arg(CHILD_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| unavailable(format!("starting the renderer process: {e}")))?;
        // Wall time: killed if still running then. The watchdog ends (and is joined) before the
        // child is reaped, so its pid cannot name another process.
        let (done, finished) = mpsc::channel::<()>();
        let pid = child.id() as libc::pid_t;
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(WALL) == Err(mpsc::RecvTimeoutError::Timeout) {
                // SAFETY: kill(2) with the pid of our own child, not yet reaped (see above).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        // The child reads all of its input before it writes: no deadlock. A child that died
        // early makes this fail (EPIPE): its exit status tells why.
        let _ = child.stdin.take().map(|mut w| w.write_all(request.as_bytes()));
        let mut out = Vec::new();
        let read = child.stdout.take().map(|r| r.take(MAX_RENDERED as u64 + MAX_MESSAGE as u64).read_to_end(&mut out));
        let _ = done.send(());
        let _ = watchdog.join();
        let status = child.wait().map_err(|e| unavailable(format!("waiting for the renderer: {e}")))?;
        let text = || String::from_utf8_lossy(&out).into_owned();
        match (status.code(), status.signal()) {
            (Some(0), _) if matches!(read, Some(Ok(_))) => String::from_utf8(out).map_err(|_| RenderError::logic("the rendered prompt is not UTF-8".into())),
            (Some(LOGIC), _) => Err(RenderError::logic(text())),
            (Some(LIMIT), _) => Err(RenderError::limit(text())),
            (_, Some(sig)) => Err(RenderError::limit(format!(
                "rendering needed more than {} GiB of memory, {CPU_SECONDS} s of CPU or {} s in all (the renderer ended with signal {sig})",
                MEMORY >> 30,
                WALL.as_secs()
            ))),
            (Some(101), _) => Err(RenderError::limit("the renderer failed on this template and these messages (a panic: an operation too large?)".into())),
            (code, _) => Err(unavailable(format!("the renderer exited with {code:?}"))),
        }
    }

    /// One of `AT_ONCE` rendering slots, given back on drop; `None` after waiting `WALL`.
    struct Slot;

    impl Slot {
        fn take() -> Option<Slot> {
            let (busy, freed) = &SLOTS;
            let deadline = Instant::now() + WALL;
            let mut n = busy.lock().unwrap_or_else(|e| e.into_inner());
            while *n >= AT_ONCE {
                let left = deadline.checked_duration_since(Instant::now())?;
                n = freed.wait_timeout(n, left).unwrap_or_else(|e| e.into_inner()).0;
            }
            *n += 1;
            Some(Slot)
        }
    }

    impl Drop for Slot {
        fn drop(&mut self) {
            let (busy, freed) = &SLOTS;
            *busy.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            freed.notify_one();
        }
    }

    /// The child: limits first, then one rendering; its exit code says how it went.
    pub fn child_main() -> i32 {
        limit_self();
        let mut input = String::new();
        if std::io::stdin().read_to_string(&mut input).is_err() {
            return 2;
        }
        let Ok(req) = serde_json::from_str::<Value>(&input) else { return 2 };
        let field = |k: &str| req[k].as_str().unwrap_or("").to_owned();
        let result = Template::new(field("template"))
            .map_err(RenderError::logic)
            .and_then(|t| t.render_here(&req["messages"], &field("bos"), &field("eos")));
        let (text, code) = match result {
            Ok(p) => (p, 0),
            Err(e) => {
                let mut m = e.message;
                if m.len() > MAX_MESSAGE {
                    let cut = (0..=MAX_MESSAGE - 3).rev().find(|&i| m.is_char_boundary(i)).unwrap_or(0);
                    m.truncate(cut);
                    m.push('…');
                }
                (m, if e.kind == Failure::Limit { LIMIT } else { LOGIC })
            }
        };
        let mut out = std::io::stdout().lock();
        if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
            return 2;
        }
        code
    }

    /// Address space: what is mapped now plus `MEMORY` (hard); CPU: `CPU_SECONDS` (SIGXCPU),
    /// then SIGKILL a second later (the hard limit, whatever SIGXCPU's disposition); core
    /// files: none; and this process goes first if the machine runs out of memory. Limits an
    /// operator set lower stay.
    fn limit_self() {
        let mapped = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmSize:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()))
            .map_or(4 << 30, |kb| kb * 1024);
        let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
        for (resource, soft, extra) in [(libc::RLIMIT_AS, mapped + MEMORY, 0), (libc::RLIMIT_CPU, CPU_SECONDS, 1), (libc::RLIMIT_CORE, 0, 0)] {
            let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit only writes the struct passed by reference, which outlives the call.
            if unsafe { libc::getrlimit(resource, &mut old) } != 0 {
                continue;
            }
            let cur = (soft as libc::rlim_t).min(old.rlim_cur);
            let new = libc::rlimit { rlim_cur: cur, rlim_max: cur.saturating_add(extra).min(old.rlim_max) };
            // SAFETY: setrlimit only reads the struct passed by reference, which outlives the call.
            unsafe { libc::setrlimit(resource, &new) };
        }
    }
}

/// An error of minijinja with its line, in one line; a template's own `raise_exception`
/// message as it is.
fn describe(e: &Error) -> String {
    let mut s = match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid operation").to_owned(),
        _ => e.to_string(),
    };
    if let Some(line) = e.line() {
        s = format!("{s} (template line {line})");
    }
    s.replace('\n', " ")
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `secs` (Unix time, UTC) formatted by Python's `%d %m %Y %y %b %B %H %M %S %%`; other
/// directives are kept as written.
fn strftime(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    // Days to a civil date (proleptic Gregorian), after H. Hinnant's `civil_from_days`.
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year.rem_euclid(100)),
            Some('b') => out += &name[..3],
            Some('B') => out += name,
            Some('H') => out += &format!("{:02}", sod / 3600),
            Some('M') => out += &format!("{:02}", sod / 60 % 60),
            Some('S') => out += &format!("{:02}", sod % 60),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_known_dates() {
        // 2024-02-29 13:05:09 UTC (a leap day) and the epoch.
        assert_eq!(strftime("%d %b %Y %H:%M:%S %%", 1_709_211_909), "29 Feb 2024 13:05:09 %");
        assert_eq!(strftime("%Y-%m-%d %B %y", 0), "1970-01-01 January 70");
        assert_eq!(strftime("%d %B %Y", 951_782_400), "29 February 2000");
        assert_eq!(strftime("%q", 0), "%q");
    }

    #[test]
    fn templates_render_and_fail_clearly() {
        let t = Template::new("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}".into()).unwrap();
        let msgs = serde_json::json!([{"role": "user", "content": "  hi  "}]);
        assert_eq!(t.render_here(&msgs, "<s>", "</s>").unwrap(), "<s>[user] hi\n[assistant]");
        let t = Template::new("{{ raise_exception('no system role') }}".into()).unwrap();
        assert_eq!(t.render_here(&msgs, "", "").unwrap_err().message, "no system role (template line 1)");
        assert!(Template::new("{% for %}".into()).err().expect("a syntax error").contains("line 1"));
        // A template that loops for ever runs out of fuel instead of hanging.
        let t = Template::new("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}".into()).unwrap();
        assert_eq!(t.render_here(&msgs, "", "").unwrap_err().kind, Failure::Limit);
        // Output stops at the prompt cap, long before the 10^10 bytes this would write.
        let t = Template::new("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}".into()).unwrap();
        let e = t.render_here(&msgs, "", "").unwrap_err();
        assert!(e.kind == Failure::Limit && e.message.contains("longer than 4 MiB"), "{e:?}");
    }
}
