//! What the hostile-input suites of both packages share (`tests/hostile.rs` and
//! `convert/tests/hostile.rs`): running a release binary under a time bound and judging how it
//! ended against the documented exit codes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What a case must end with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Want {
    /// Exit 0.
    Ok,
    /// Exit 2 with exactly one stderr line, `error: …`, containing this text.
    Error(&'static str),
}

/// Runs `cmd` with at most `limit` of wall time; kills it past that (a hang is a failure).
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Result<Output, String> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    if cmd.get_program().is_empty() {
        return Err("no program".into());
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
    if let Some(bytes) = stdin {
        let mut w = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        });
    }
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {limit:?} (a hang)"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output { status, stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() })
}

/// Every file under `dir` with its length and a hash of its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                let b = std::fs::read(&p).unwrap();
                let h = b.iter().fold(0xcbf29ce484222325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x100000001b3));
                out.insert(p, (b.len() as u64, h));
            } else {
                out.insert(p, (0, 0));
            }
        }
    }
    out
}

/// Cases judged by this test binary so far ([`assert_clean`] prints it).
static JUDGED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The problems of one finished case (empty: it passed).
pub fn judge(name: &str, r: Result<Output, String>, want: Want) -> Vec<String> {
    JUDGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bad = Vec::new();
    let out = match r {
        Ok(o) => o,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let code = out.status.code();
    if code.is_none() {
        bad.push(format!("{name}: killed by a signal ({:?})", out.status));
    }
    for sign in ["panicked", "internal error", "GGML_ASSERT", "Aborted", "RUST_BACKTRACE", "core dumped"] {
        if stderr.contains(sign) {
            bad.push(format!("{name}: stderr shows `{sign}`"));
        }
    }
    match want {
        Want::Ok if code != Some(0) => bad.push(format!("{name}: exit {code:?}, expected 0")),
        Want::Error(text) => {
            if code != Some(2) {
                bad.push(format!("{name}: exit {code:?}, expected 2"));
            }
            if lines.len() != 1 || !lines[0].starts_with("error: ") {
                bad.push(format!("{name}: expected exactly one `error:` line on stderr"));
            } else if !lines[0].contains(text) {
                bad.push(format!("{name}: the error does not mention `{text}`"));
            }
            if lines.iter().any(|l| l.len() > 600) {
                bad.push(format!("{name}: an error line of {} bytes", lines.iter().map(|l| l.len()).max().unwrap()));
            }
        }
        _ => {}
    }
    if !bad.is_empty() {
        bad.push(format!("    stderr of {name}: {}", stderr.chars().take(800).collect::<String>()));
    }
    bad
}

pub fn assert_clean(problems: Vec<String>) {
    eprintln!("hostile cases judged so far in this binary: {}", JUDGED.load(std::sync::atomic::Ordering::Relaxed));
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.iter().filter(|p| !p.starts_with("    ")).count(), problems.join("\n"));
}

/// `is_char_device` without importing the unix extension trait at every use.
pub trait CharDevice {
    fn is_char_device_like(&self) -> bool;
}

impl CharDevice for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}

#[allow(unsafe_code)]
pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we have not yet waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

