//! dlm-server end to end on the trained tiny DiffuLLaMA (`models/diffullama-tiny`, q4_0): two
//! servers on loopback ports the OS picks, driven by the real `openai` Python client and raw
//! sockets (`client.py`), answers compared with `dlm-run`'s; then SIGTERM during a running
//! request: it finishes, and the process exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "../../tests/common/ports.rs"]
mod ports;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `dlm-run` from the same build (the workspace's tests build every binary).
fn dlm_run() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_dlm-server"));
    let run = server.with_file_name("dlm-run");
    assert!(run.exists(), "{} is missing: run the tests of the whole workspace (cargo test --release --workspace)", run.display());
    run
}

/// The trained tiny model in q4_0, with `chat_template` (if any) in its tokenizer_config.json.
fn model(dir: &Path, name: &str, chat_template: Option<&str>) -> PathBuf {
    let src = root().join("models/diffullama-tiny");
    let hf = dir.join(name);
    std::fs::create_dir_all(&hf).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), hf.join(f)).unwrap();
    }
    if let Some(t) = chat_template {
        let path = hf.join("tokenizer_config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        cfg["chat_template"] = t.into();
        std::fs::write(&path, cfg.to_string()).unwrap();
    }
    let out = dir.join(format!("{name}.gguf"));
    let opts = dlm_convert::Options { out_type: dlm_convert::OutType::Q4_0, mask_id: None, name: None, causal: false };
    dlm_convert::Plan::new(&hf, &opts).unwrap().write(&out, |_, _| {}).unwrap();
    out
}

struct Server {
    child: Child,
    url: String,
    /// stderr lines after the "serving" line.
    log: mpsc::Receiver<String>,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        Self::start_in(Command::new(env!("CARGO_BIN_EXE_dlm-server")), model, extra)
    }

    /// Started by `cmd` (the binary itself, or a wrapper such as `prlimit` that runs it).
    fn start_in(mut cmd: Command, model: &Path, extra: &[&str]) -> Server {
        let mut child = cmd
            .args(["-m", model.to_str().unwrap(), "--port", "0", "-t", "2", "--backend", "cpu", "-b", "8", "--shutdown-timeout", "20", "--timeout", "5"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("dlm-server did not start");
            if let Some(at) = line.split(" on http://").nth(1) {
                let url = format!("http://{}", at.split_whitespace().next().unwrap());
                return Server { child, url, log: rx };
            }
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("dlm-server did not exit within {limit:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renders only the user's messages, and refuses roles it does not know (as real templates do).
const TEMPLATE: &str = "{% for m in messages %}{% if m.role not in ['user', 'system', 'assistant'] %}{{ raise_exception('roles are user, system and assistant') }}{% endif %}{% endfor %}{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}";

#[test]
fn openai_client_against_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = model(tmp.path(), "tiny", None);
    let chat = model(tmp.path(), "tiny-chat", Some(TEMPLATE));
    let a = Server::start(&plain, &["--max-queue", "12"]);
    let b = Server::start(&chat, &["--api-key", "sekret-1", "--alias", "tiny"]);
    let out = Command::new("python3")
        .arg(root().join("server/tests/client.py"))
        .arg(&a.url)
        .args(["--dlm-run", dlm_run().to_str().unwrap(), "--model", plain.to_str().unwrap()])
        .args(["--chat-url", &b.url, "--chat-key", "sekret-1"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    let log = a.lines();
    assert!(out.status.success(), "client.py failed:\n{stdout}\n{stderr}\nserver log (last lines):\n{}", log[log.len().saturating_sub(30)..].join("\n"));
    // One line per request, no internal error, no panic.
    assert!(log.iter().filter(|l| l.contains(" POST /v1/completions ")).count() > 100, "request lines: {}", log.len());
    assert!(!log.iter().chain(b.lines().iter()).any(|l| l.contains("internal error") || l.contains("panicked")), "{log:?}");
}

/// The GGUF carries the template the converter read (PyPI `gguf` reads it back).
#[test]
fn converter_writes_the_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let file = model(tmp.path(), "tiny-chat", Some(TEMPLATE));
    let script = "import sys, gguf\nr = gguf.GGUFReader(sys.argv[1])\nf = r.fields['tokenizer.chat_template']\nprint(bytes(f.parts[f.data[0]]).decode(), end='')";
    let out = Command::new("python3").args(["-c", script, file.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), TEMPLATE);
}

/// Sends a completion request and gives it 300 ms to start.
fn send(addr: &str, body: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    conn
}

/// `GET path` on a connection of its own: the status code and the whole response.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = conn.read_to_string(&mut resp);
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, resp)
}

/// A replica behind a balancer while its model loads: GET /health answers 503 "loading model"
/// and any other request 503 with Retry-After, instead of a connection that hangs. (The load
/// here waits on an RPC peer that accepts and never answers, which fails it after the 5 s
/// greeting timeout: exit 2, one line.)
#[test]
fn health_says_loading_until_the_model_is_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = model(tmp.path(), "tiny", None);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    // A port below the kernel's ephemeral range: one taken from the kernel and released could
    // be handed to something else before the server binds it.
    let port = ports::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlm-server"))
        .args(["-m", plain.to_str().unwrap(), "--port", &port.to_string(), "-t", "2", "--rpc", &peer])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(3), "dlm-server is not listening while it loads");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, health) = get(&addr, "/health");
    assert_eq!(code, 503, "{health}");
    assert!(health.contains(r#""status":"loading model""#), "{health}");
    let mut conn = send(&addr, r#"{"prompt": "copy 1:", "max_tokens": 4}"#);
    let mut resp = String::new();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = conn.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("retry-after: 5") && resp.contains(r#""code":"loading""#), "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(4), "the checks ran past the load: {:?}", t0.elapsed());
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.lines().any(|l| l.starts_with("error: --rpc") && l.contains("no answer")), "{err}");
}

/// SIGTERM while a request runs: no new connections, the running request completes with its
/// full answer, then the process exits 0.
#[test]
fn sigterm_lets_running_requests_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = model(tmp.path(), "tiny", None);
    let mut s = Server::start(&plain, &[]);
    let addr = s.url.trim_start_matches("http://").to_owned();
    // About 3 s of passes: one position each (at temperature 100 no EOS ends the text early).
    let body = r#"{"prompt": "Today is a wonderful day,", "max_tokens": 64, "steps": 400, "unmask": "confidence", "seed": 3, "temperature": 100, "top_p": 1}"#;
    let mut conn = send(&addr, body);
    // What a balancer's autoscaler reads: the running sequence, nothing queued.
    let (code, metrics) = get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("\ndlm_active_sequences 1\n") && metrics.contains("\ndlm_queue_length 0\n"), "{metrics}");
    s.signal("-TERM");
    // Draining: the listener is closed (a balancer's next connection is refused and goes to
    // another replica) while the running request goes on.
    let t0 = Instant::now();
    while TcpStream::connect(&addr).is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(2), "still accepting connections after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut resp = String::new();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let json: serde_json::Value = serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["choices"][0]["finish_reason"], "length", "{json}");
    assert_eq!(json["usage"]["completion_tokens"], 64, "{json}");
    assert_eq!(s.wait(Duration::from_secs(30)), Some(0));
    let log = s.lines();
    assert!(log.iter().any(|l| l.starts_with("shutting down")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("dlm-server: stopped")), "{log:?}");
    // A second signal cancels a running request at once (503), and the exit is still 0.
    let mut s = Server::start(&plain, &[]);
    let addr = s.url.trim_start_matches("http://").to_owned();
    let body = r#"{"prompt": "Today is a wonderful day,", "max_tokens": 100, "steps": 4000, "unmask": "confidence", "seed": 3, "temperature": 100, "top_p": 1}"#;
    let mut conn = send(&addr, body);
    s.signal("-INT");
    std::thread::sleep(Duration::from_millis(300));
    s.signal("-INT");
    let mut resp = String::new();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let t0 = Instant::now();
    let _ = conn.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(t0.elapsed() < Duration::from_secs(3), "cancelled, not finished: {:?}", t0.elapsed());
    assert_eq!(s.wait(Duration::from_secs(30)), Some(0));
}

/// `dlm-server` under an address-space limit of 4 GiB (`prlimit`, util-linux): what a
/// container's memory limit does to it.
fn limited() -> Command {
    let mut c = Command::new("prlimit");
    c.arg(format!("--as={}", 4u64 << 30)).arg("--").arg(env!("CARGO_BIN_EXE_dlm-server"));
    c
}

/// One request on its own connection: the status and the body.
fn post(url: &str, path: &str, body: &str) -> (u16, String) {
    request(url, "POST", path, body)
}

fn request(url: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(conn, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

/// Doubles a string 31 times (16 GiB) when a message says "boom"; else the user's messages.
const DOUBLING: &str = "{% for m in messages %}{% if m.content == 'boom' %}{% set ns = namespace(s='abcdefgh') %}{% for i in range(31) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}{% endif %}{{ m.content }}{% endfor %}";

/// Chat templates that would take gigabytes: the request gets a 400 naming the limit, the
/// server goes on serving (the same request from before the fix aborted the process), and a
/// template that fails its start-up probe is refused at start (`--chat-template`: exit 2) or
/// turned off with a warning (the GGUF's).
#[test]
fn chat_templates_that_would_take_gigabytes_get_a_400() {
    let tmp = tempfile::tempdir().unwrap();
    // Every message's turn repeats the first message: 925 KB of body renders to terabytes.
    let repeat = "{% for m in messages %}{% for n in messages %}{{ messages[0].content }}{% endfor %}{% endfor %}";
    let repeating = model(tmp.path(), "repeat", Some(&format!("{{% if messages[0].content == 'boom' %}}{DOUBLING}{{% else %}}{repeat}{{% endif %}}")));
    let s = Server::start_in(limited(), &repeating, &[]);
    let mut messages = vec![serde_json::json!({"role": "user", "content": "a".repeat(900_000)})];
    messages.extend((0..700).map(|_| serde_json::json!({"role": "user", "content": "b"})));
    let big = serde_json::json!({"messages": messages, "max_tokens": 2}).to_string();
    assert!(big.len() > 900_000 && big.len() < 1 << 20, "{}", big.len());
    let (status, body) = post(&s.url, "/v1/chat/completions", &big);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("longer than 4 MiB"), "{body}");
    let (status, body) = post(&s.url, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "boom"}], "max_tokens": 2}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than 1 GiB of memory"), "{body}");
    // Still serving, chat included.
    let (status, body) = post(&s.url, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "copy 12:"}], "max_tokens": 2, "steps": 2}"#);
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&s.url, "/v1/completions", r#"{"prompt": "copy 12:", "max_tokens": 2, "steps": 2}"#);
    assert_eq!(status, 200, "{body}");
    let log = s.lines();
    let status_of = |l: &String| l.split_whitespace().nth(3).map(str::to_owned);
    assert!(!log.iter().any(|l| status_of(l).is_some_and(|s| s.starts_with('5')) || l.contains("panicked")), "{log:?}");
    drop(s);

    // A template that takes gigabytes on any conversation fails its probe at start.
    let plain = model(tmp.path(), "plain", None);
    let file = tmp.path().join("doubling.jinja");
    std::fs::write(&file, DOUBLING.replace("m.content == 'boom'", "true")).unwrap();
    let out = limited().args(["-m", plain.to_str().unwrap(), "--port", "0", "--chat-template", file.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: --chat-template") && err.contains("more than 1 GiB of memory"), "{err}");
    let embedded = model(tmp.path(), "doubling", Some(&DOUBLING.replace("m.content == 'boom'", "true")));
    let s = Server::start_in(limited(), &embedded, &[]);
    let (status, body) = post(&s.url, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--chat-template FILE"), "{body}");
}

/// Fields that ask for what dlm does not do are a 400 naming the field (they were accepted and
/// ignored), neutral values pass; llama-server's `/completion` and `/props` answer, and the
/// endpoints dlm lacks are a 404 that lists those it has.
#[test]
fn unsupported_fields_are_refused_and_llama_server_endpoints_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let chat = model(tmp.path(), "tiny-chat", Some(TEMPLATE));
    let s = Server::start(&chat, &[]);
    let json = |b: &str| serde_json::from_str::<serde_json::Value>(b).unwrap_or_else(|e| panic!("{e}: {b}"));
    let asks = [
        ("response_format", r#"{"type": "json_object"}"#),
        ("tools", r#"[{"type": "function", "function": {"name": "f"}}]"#),
        ("tool_choice", r#""required""#),
        ("logit_bias", r#"{"50256": -100}"#),
        ("presence_penalty", "0.5"),
        ("frequency_penalty", "-1"),
        ("repeat_penalty", "1.1"),
        ("best_of", "3"),
        ("grammar", r#""root ::= \"a\"""#),
        ("json_schema", r#"{"type": "object"}"#),
        ("min_p", "0.05"),
        ("mirostat", "2"),
    ];
    for (field, value) in asks {
        for (path, head) in [("/v1/completions", r#""prompt": "copy 12:""#), ("/v1/chat/completions", r#""messages": [{"role": "user", "content": "copy 12:"}]"#)] {
            let (status, body) = post(&s.url, path, &format!(r#"{{{head}, "max_tokens": 2, "{field}": {value}}}"#));
            assert_eq!(status, 400, "{path} {field}: {body}");
            let e = &json(&body)["error"];
            assert_eq!(e["param"], field, "{body}");
            assert_eq!(e["code"], "unsupported_parameter", "{body}");
        }
    }
    let neutral = r#"{"prompt": "copy 12:", "max_tokens": 2, "steps": 2, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "repeat_penalty": 1.0, "best_of": 1}"#;
    let (status, body) = post(&s.url, "/v1/completions", neutral);
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&s.url, "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "copy 12:"}], "max_tokens": 2, "steps": 2, "tools": [], "tool_choice": "auto", "response_format": "text"}"#);
    assert_eq!(status, 200, "{body}");

    // /completion: llama-server's request and answer, the text of /v1/completions.
    let (status, native) = post(&s.url, "/completion", r#"{"prompt": "copy 58213:", "n_predict": 8, "seed": 5, "temperature": 0}"#);
    assert_eq!(status, 200, "{native}");
    let (_, openai) = post(&s.url, "/v1/completions", r#"{"prompt": "copy 58213:", "max_tokens": 8, "seed": 5, "temperature": 0}"#);
    let native = json(&native);
    assert_eq!(native["content"], json(&openai)["choices"][0]["text"], "{native}");
    assert_eq!(native["stop"], true);
    // Token ids as the prompt, and llama-server's default n_predict -1 (as many as fit).
    let ids = json(&post(&s.url, "/tokenize", r#"{"content": "copy 58213:", "add_special": true}"#).1)["tokens"].clone();
    let (status, by_ids) = post(&s.url, "/completion", &format!(r#"{{"prompt": {ids}, "n_predict": 8, "seed": 5, "temperature": 0}}"#));
    assert_eq!(status, 200, "{by_ids}");
    assert_eq!(json(&by_ids)["content"], native["content"], "{by_ids}");
    let (status, body) = post(&s.url, "/completion", r#"{"prompt": "copy 12:", "n_predict": -1, "steps": 2}"#);
    assert_eq!(status, 200, "{body}");
    let (status, props) = request(&s.url, "GET", "/props", "");
    assert_eq!(status, 200, "{props}");
    let props = json(&props);
    assert_eq!(props["chat_template"], TEMPLATE);
    assert_eq!(props["default_generation_settings"]["n_ctx"], 128, "{props}");
    assert!(props["total_slots"].as_u64().unwrap() >= 1, "{props}");
    // A request's defaults follow its own max_tokens: DiffuLLaMA's change from 64 tokens on.
    let by_length = &props["meta"]["defaults_by_length"];
    assert_eq!((by_length[0]["max_tokens_below"].as_u64(), by_length[1]["max_tokens_from"].as_u64()), (Some(64), Some(64)), "{props}");
    assert_eq!((&by_length[0]["block_length"], &by_length[0]["threshold"], &by_length[0]["steps"]), (&serde_json::Value::Null, &serde_json::json!(0.5), &serde_json::json!(64)), "{props}");
    assert_eq!((&by_length[1]["block_length"], &by_length[1]["threshold"], &by_length[1]["steps"]), (&serde_json::json!(32), &serde_json::json!(0.9), &serde_json::json!(64)), "{props}");
    assert!(by_length[1]["steps_rule"].as_str().is_some_and(|r| r.contains("one per token")), "{props}");
    for (method, path, why) in [("GET", "/slots", "no slots"), ("POST", "/v1/embeddings", "no embeddings"), ("GET", "/v2/nope", "no such endpoint: /v2/nope")] {
        let (status, body) = request(&s.url, method, path, "{}");
        assert_eq!(status, 404, "{path}: {body}");
        let m = json(&body)["error"]["message"].as_str().unwrap().to_owned();
        assert!(m.contains(why) && m.contains("/v1/chat/completions") && m.contains("/props") && !m.contains('\u{1b}'), "{m}");
    }
}

/// deploy/ (Dockerfiles, Kubernetes manifests) checked without a container engine or cluster
/// (scripts/check_deploy.py): manifests against the Kubernetes API schemas, the container's
/// arguments parsed by this dlm-server, probes, metric and grace period consistent with it.
#[test]
fn deploy_files_agree_with_the_server() {
    let out = Command::new("python3").arg(root().join("scripts/check_deploy.py")).arg(env!("CARGO_BIN_EXE_dlm-server")).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The web page (`GET /`) in a real headless Chromium driven by Playwright (server/tests/web.py):
/// it loads with nothing from elsewhere, a prompt shows the API's text for the same settings,
/// the canvas shows masked positions between steps, a refused chat shows the server's error;
/// the screenshot is kept in target/test-artifacts/.
#[test]
fn web_page_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = model(tmp.path(), "tiny", None);
    let s = Server::start(&plain, &[]);
    let shots = root().join("target/test-artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("dlm-server-page.png");
    let out = Command::new("python3").arg(root().join("server/tests/web.py")).arg(&s.url).arg(&shot).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "web.py failed (scripts/setup.sh installs chromium and playwright):\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "no screenshot at {}", shot.display());
}
