//! `dlm-server`: an OpenAI-compatible HTTP server for diffusion language models. One engine
//! thread owns the model and denoises every request's canvas in one continuous batch; requests
//! join at the next step boundary and leave when done (`worker.rs`). The HTTP side is tokio and
//! hyper through axum (`routes.rs`); none of it is in the dlm library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::{FromArgMatches, Parser};
use common::{GenArgs, ModelArgs};
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt as _;

mod api;
mod chat;
#[path = "../../src/bin/common/mod.rs"]
mod common;
mod metrics;
mod routes;
mod worker;

const ENDPOINTS: &str = "Endpoints:
  POST /v1/completions       OpenAI completions (prompt, suffix, stream, stop, seed, ...)
  POST /v1/chat/completions  OpenAI chat, rendered with the model's chat template
  GET  /v1/models            the model served
  POST /infill               llama.cpp's infill: input_prefix + [generated] + input_suffix
  POST /completion           llama.cpp's native completion (prompt, n_predict; its answer shape)
  GET  /props                llama.cpp's: default settings, context, batch, chat template
  POST /tokenize             {\"content\": text} -> {\"tokens\": [...]}
  POST /detokenize           {\"tokens\": [...]} -> {\"content\": text}
  GET  /                     a web page: prompt or chat, the diffusion settings, the canvas live
  GET  /health               {\"status\": \"ok\"} (503 while loading or shutting down; no API key needed)
  GET  /metrics              Prometheus text: requests, tokens, steps, batch, queue, latency

Fields that ask for what dlm does not do get a 400 naming the field: response_format, tools,
logit_bias, presence/frequency/repeat penalties, best_of, logprobs, grammar, json_schema, min_p,
typical_p, mirostat (neutral values such as 0, {} or {\"type\": \"text\"} pass).

Diffusion fields of a request (each defaults to the flag of the same name):
  steps, block_length, unmask, threshold, cache, cfg_scale, eps, alg_temp, add_gumbel_noise,
  top_k; \"stream_canvas\": true also streams the whole canvas after every step.

Example:
  dlm-server -m diffullama-q4.gguf --port 8080
  curl localhost:8080/v1/completions -d '{\"prompt\": \"Today is a wonderful day,\", \"max_tokens\": 32}'";

/// Serve a diffusion language model over HTTP with OpenAI's API, batching concurrent requests.
///
/// Every request's canvas (prompt + max_tokens masks + suffix) joins one batch that the engine
/// denoises step by step; each request keeps its own settings and seed, so its answer equals
/// what dlm-run prints for the same settings and seed, whatever else is in the batch.
#[derive(Parser, Debug)]
#[command(name = "dlm-server", version, allow_negative_numbers = true, after_help = ENDPOINTS)]
struct Args {
    #[command(flatten)]
    m: ModelArgs,
    /// Request defaults: a request's field of the same meaning overrides each
    #[command(flatten)]
    gen: GenArgs,
    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (also from DLM_API_KEY)
    #[arg(long, env = "DLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most sequences denoised together in one pass (lowered to fit 4 GiB of activations)
    #[arg(short = 'b', long = "batch-size", default_value_t = 8)]
    batch_size: usize,
    /// Most sequences waiting for a place in the batch; beyond, requests get 429 with Retry-After
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Tokens generated when a request gives no max_tokens [default: 128, at most half the
    /// context]
    #[arg(short = 'n', long = "n-predict")]
    n_predict: Option<usize>,
    /// Longest canvas (prompt + max_tokens + suffix) [default: the model's trained context]
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    ctx_size: Option<usize>,
    /// Most --steps a request may ask for
    #[arg(long, default_value_t = 4096)]
    max_steps: usize,
    /// Jinja chat template for /v1/chat/completions, replacing the file's tokenizer.chat_template
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    /// The model's name in /v1/models and responses [default: the file's name]
    #[arg(long)]
    alias: Option<String>,
    /// Largest request body in bytes (413 beyond)
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Seconds a client may take to send a request's headers, and again its body (then the
    /// connection is closed); also how long an idle keep-alive connection stays open
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Most open connections; more wait to be accepted
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// On SIGTERM or SIGINT: seconds to let running requests finish before cancelling them (a
    /// second signal cancels at once)
    #[arg(long, default_value_t = 60)]
    shutdown_timeout: u64,
    /// More on stderr: the settings in effect
    #[arg(short = 'v', long, conflicts_with = "log_disable")]
    verbose: bool,
    /// Nothing on stderr but errors (no request lines)
    #[arg(long)]
    log_disable: bool,
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), then exit
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<clap_complete::Shell>,
}

/// The client's address, for the log line.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

/// Endpoints as `/metrics` labels them, aliases under their canonical name (anything else is
/// `other`: label values stay bounded).
const KNOWN: &[(&str, &str)] = &[
    ("/v1/completions", "/v1/completions"),
    ("/completions", "/v1/completions"),
    ("/v1/chat/completions", "/v1/chat/completions"),
    ("/chat/completions", "/v1/chat/completions"),
    ("/v1/models", "/v1/models"),
    ("/models", "/v1/models"),
    ("/infill", "/infill"),
    ("/tokenize", "/tokenize"),
    ("/detokenize", "/detokenize"),
    ("/", "/"),
    ("/health", "/health"),
    ("/v1/health", "/health"),
    ("/metrics", "/metrics"),
];

/// Authentication, then the request, then one log line and the metrics.
async fn around(State(app): State<Arc<routes::App>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let peer = req.extensions().get::<Peer>().map_or_else(|| "-".to_owned(), |p| p.0.to_string());
    let endpoint = KNOWN.iter().find(|k| k.0 == path).map_or("other", |k| k.1);
    // The page is static (no data of the server's): a browser gets it, then sends the key.
    let key = app.api_key.as_deref().filter(|_| endpoint != "/health" && endpoint != "/");
    let resp = match key {
        Some(k) if !routes::authorized(req.headers(), k) => {
            api::ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "authentication_error", "missing or wrong API key: send Authorization: Bearer KEY").code("invalid_api_key").into_response()
        }
        _ => match whole_body(req, app.max_body, app.timeout).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        },
    };
    let status = resp.status().as_u16();
    let streaming = resp.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let generation = matches!(endpoint, "/v1/completions" | "/v1/chat/completions" | "/infill");
    app.metrics.request(endpoint, status, t0.elapsed().as_secs_f64(), generation && !streaming);
    let note = resp.extensions().get::<routes::Note>().map_or_else(String::new, |n| format!(" | {}", n.0));
    let shown: String = path.chars().take(120).collect();
    let how = if streaming { " (streaming)" } else { "" };
    dlm::errln!("{peer} {method} {shown} {status} {:.1} ms{how}{note}", t0.elapsed().as_secs_f64() * 1e3);
    resp
}

/// The request with its body read in full within `timeout` (one deadline for the whole body:
/// a client trickling bytes cannot hold a connection) and at most `max` bytes (413).
async fn whole_body(req: Request, max: usize, timeout: Duration) -> Result<Request, api::ApiError> {
    use axum::http::StatusCode;
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Err(_) => return Err(api::ApiError::new(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", format!("the request body did not arrive within {} s", timeout.as_secs()))),
        Ok(Err(e)) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            return Err(api::ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("the request body is larger than --max-body ({max} bytes)")))
        }
        Ok(Err(e)) => return Err(api::ApiError::bad(format!("reading the request body failed: {e}"))),
        Ok(Ok(b)) => b,
    };
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

fn router(app: Arc<routes::App>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/completions", post(routes::completions))
        .route("/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/chat/completions", post(routes::chat))
        .route("/v1/models", get(routes::models))
        .route("/models", get(routes::models))
        .route("/infill", post(routes::infill))
        .route("/completion", post(routes::completion_native))
        .route("/props", get(routes::props))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/", get(routes::page))
        .route("/health", get(routes::health))
        .route("/v1/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(app.clone(), around))
        .with_state(app)
}

/// Answers every connection with 503 until `done` fires (the model is loaded), then hands the
/// listener back: `GET /health` says `{"status": "loading model"}` (llama-server's readiness
/// answer while it loads), any other request gets an API error saying to retry, both with
/// `Retry-After`. One request per connection, so a client's next request after the load
/// reaches the real server; at most `max_connections` at once, each for at most `timeout`.
async fn while_loading(listener: tokio::net::TcpListener, mut done: tokio::sync::oneshot::Receiver<()>, timeout: Duration, max_connections: usize) -> tokio::net::TcpListener {
    async fn health() -> Response {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, [(axum::http::header::RETRY_AFTER, "5")], axum::Json(serde_json::json!({"status": "loading model"}))).into_response()
    }
    async fn other() -> Response {
        let mut e = api::ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "the model is loading: retry in a few seconds (GET /health answers 200 once it is ready)").code("loading");
        e.retry_after = Some(5);
        e.into_response()
    }
    let router: Router = Router::new().route("/health", axum::routing::any(health)).route("/v1/health", axum::routing::any(health)).fallback(other);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut done => return listener,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the limit: closed at once rather than queued behind a slow load.
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let r = router.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| r.clone().oneshot(req.map(axum::body::Body::new)));
        let conn = hyper::server::conn::http1::Builder::new().timer(TokioTimer::new()).header_read_timeout(timeout).keep_alive(false).serve_connection(TokioIo::new(tcp), svc);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, conn).await;
            drop(permit);
        });
    }
}

/// Counts SIGINT and SIGTERM from the moment it is made (before the model loads: a signal
/// while loading ends the process at once, with status 0, as there is nothing to finish).
struct Signals {
    count: tokio::sync::watch::Receiver<usize>,
    loading: Arc<AtomicBool>,
}

impl Signals {
    fn install(rt: &tokio::runtime::Runtime) -> anyhow::Result<Signals> {
        let (tx, count) = tokio::sync::watch::channel(0usize);
        let loading = Arc::new(AtomicBool::new(true));
        let during_load = loading.clone();
        #[cfg(unix)]
        let (mut term, mut int) = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            anyhow::Ok((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
        }).context("installing the signal handlers")?;
        rt.spawn(async move {
            loop {
                #[cfg(unix)]
                tokio::select! {
                    Some(()) = term.recv() => {}
                    Some(()) = int.recv() => {}
                    else => return,
                }
                #[cfg(not(unix))]
                if tokio::signal::ctrl_c().await.is_err() {
                    return;
                }
                if during_load.load(Ordering::Relaxed) {
                    dlm::errln!("interrupted while loading the model");
                    dlm::cli::exit_now(0);
                }
                // A third signal: the cancelled work has not wound down (a pass that does not
                // end); stop now, as dlm-run does on its first.
                if *tx.borrow() >= 2 {
                    dlm::errln!("interrupted again: exiting without waiting");
                    dlm::cli::exit_now(dlm::cli::EXIT_INTERRUPTED);
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Signals { count, loading })
    }

    /// Waits until `n` signals have come in all.
    async fn wait(&self, n: usize) {
        let mut c = self.count.clone();
        let _ = c.wait_for(|&k| k >= n).await;
    }
}

/// A connection whose writes must make progress within `limit`: a client that stops reading a
/// stream is dropped instead of holding its connection (and a `--max-connections` place) for
/// ever.
struct Timed {
    io: tokio::net::TcpStream,
    limit: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for Timed {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Timed {
    /// A write's outcome: progress resets the timer; no progress starts it, and an error once it
    /// has run `limit`.
    fn progress(&mut self, cx: &mut std::task::Context<'_>, r: std::task::Poll<std::io::Result<usize>>) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future as _;
        use std::task::Poll;
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading"))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl tokio::io::AsyncWrite for Timed {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(cx, r)
    }
    fn poll_write_vectored(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct ServeOpts {
    timeout: Duration,
    max_connections: usize,
    shutdown: Duration,
}

/// Accepts connections until a signal, then stops accepting, lets running requests finish (for
/// at most `shutdown`, or until a second signal) and cancels the rest.
async fn serve(listener: tokio::net::TcpListener, router: Router, app: Arc<routes::App>, o: ServeOpts, signals: &Signals) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(o.max_connections));
    let stop = signals.wait(1);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, addr) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, never stop serving.
                    dlm::errln!("warning: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let r = router.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Peer(addr));
            r.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(o.timeout)
            .serve_connection(TokioIo::new(Timed { io: tcp, limit: o.timeout, stalled: None }), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    app.shutting_down.store(true, Ordering::Relaxed);
    let running = app.metrics.active.load(Ordering::Relaxed) + app.metrics.queued.load(Ordering::Relaxed);
    dlm::errln!("shutting down: no new connections; {running} sequence(s) running or queued get up to {} s to finish (a second signal cancels them)", o.shutdown.as_secs());
    let wait = graceful.shutdown();
    tokio::pin!(wait);
    tokio::select! {
        _ = &mut wait => return,
        _ = tokio::time::sleep(o.shutdown) => dlm::errln!("shutting down: the grace period is over, cancelling what still runs"),
        _ = signals.wait(2) => dlm::errln!("shutting down: second signal, cancelling what still runs"),
    }
    app.metrics.cancel_all.store(true, Ordering::Relaxed);
    // Cancelled requests answer at once; connections still open after that are dropped.
    let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
}

fn check_args(a: &Args) -> anyhow::Result<()> {
    a.m.path()?;
    for (v, flag) in [(a.batch_size, "-b/--batch-size"), (a.max_queue, "--max-queue"), (a.n_predict.unwrap_or(1), "-n/--n-predict"), (a.max_steps, "--max-steps"), (a.max_connections, "--max-connections")] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if a.timeout == 0 {
        bail!("--timeout must be at least 1 second");
    }
    if a.max_body < 1024 {
        bail!("--max-body must be at least 1024 bytes, got {}", a.max_body);
    }
    if a.api_key.as_deref().is_some_and(|k| k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic())) {
        bail!("--api-key must be printable ASCII without spaces (it is sent in an HTTP header)");
    }
    if let Some(s) = a.gen.steps_flag.filter(|&s| s > a.max_steps) {
        bail!("--steps {s} is more than --max-steps {}", a.max_steps);
    }
    a.gen.check_flags()
}

fn run(a: Args) -> anyhow::Result<()> {
    if let Some(shell) = a.completions {
        return dlm::cli::print_completions(common::command::<Args>(), shell);
    }
    if a.m.list_devices {
        return common::list_devices(&a.m);
    }
    check_args(&a)?;
    let template_flag = match &a.chat_template {
        Some(path) => {
            let text = common::read_text(path, "a chat template", false).context("--chat-template")?;
            Some(chat::Template::new(text).map_err(|e| anyhow::anyhow!("--chat-template {}: {e}", path.display()))?)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")?;
    let signals = Signals::install(&rt)?;
    let addr = format!("{}:{}", a.host, a.port);
    // Bound before the model loads: a port in use fails at once.
    let std_listener = std::net::TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;
    std_listener.set_nonblocking(true).context("setting the socket non-blocking")?;
    let listener = {
        let _rt = rt.enter();
        tokio::net::TcpListener::from_std(std_listener).context("listening")?
    };
    // While the model loads, every request is answered 503 (GET /health: "loading model"), so
    // a balancer's readiness probe and a client both see why instead of a hanging connection.
    let (loaded, loaded_rx) = tokio::sync::oneshot::channel();
    let loading = rt.spawn(while_loading(listener, loaded_rx, Duration::from_secs(a.timeout), a.max_connections));
    let l = common::load(&a.m)?;
    let trained = l.n_ctx();
    let n_ctx = match a.ctx_size {
        None | Some(0) => trained,
        Some(c) => {
            if c > trained {
                dlm::errln!("warning: -c {c} is longer than the {trained} tokens the model was trained on; positions beyond them may give poor text");
            }
            c
        }
    };
    // Learned position embeddings (DiffuGPT) end where they end.
    let positions = l.model.gguf().tensors().iter().find(|t| t.name == "position_embd.weight").and_then(|t| t.shape.get(1)).map(|&n| n as usize);
    if let Some(max) = positions.filter(|&m| n_ctx > m) {
        bail!("-c {n_ctx} is longer than the {max} positions this model has embeddings for");
    }
    let n_predict = match a.n_predict {
        Some(n) if n >= n_ctx => bail!("-n {n} leaves no room for a prompt in a context of {n_ctx} tokens"),
        Some(n) => n,
        None => 128.min(n_ctx / 2).max(1),
    };
    let mut defaults = a.gen.clone();
    defaults.resolve(l.model.diffusion(), n_predict)?;
    let piece = |id: Option<u32>| id.and_then(|i| l.tok.id_to_token(i)).unwrap_or_default();
    let (bos, eos) = (piece(l.tok.bos), piece(l.tok.eos));
    let chat = match (template_flag, &a.chat_template) {
        (Some(mut t), Some(path)) => {
            if let Err(e) = probe(&mut t, &bos, &eos) {
                bail!("--chat-template {}: {e}", path.display());
            }
            Ok(t)
        }
        _ => match l.model.gguf().get(dlm::keys::CHAT_TEMPLATE).and_then(|v| v.as_str()) {
            Some(src) => chat::Template::new(src.to_owned()).and_then(|mut t| probe(&mut t, &bos, &eos).map(|_| t)).map_err(|e| {
                dlm::errln!("warning: {}: the chat template is unusable ({e}); /v1/chat/completions answers 400 (give --chat-template FILE)", l.path.display());
                format!("the model's chat template is unusable ({e}): start dlm-server with --chat-template FILE")
            }),
            None => Err("this model has no chat template (tokenizer.chat_template): use /v1/completions, or start dlm-server with --chat-template FILE".to_owned()),
        },
    };
    let p = l.model.params().clone();
    let pass_tokens = (common::BATCH_MEMORY / common::activation_bytes_per_token(&p)) as usize;
    let seq_max = (n_ctx * if a.gen.cfg_scale > 0.0 { 2 } else { 1 }).max(1);
    let max_batch = a.batch_size.min((pass_tokens / seq_max).max(1)).max(1);
    if max_batch < a.batch_size {
        dlm::errln!("note: -b {} may be lowered at run time: {} full-context sequences fit 4 GiB of activations", a.batch_size, pass_tokens / seq_max);
    }
    let model_id = a.alias.clone().unwrap_or_else(|| l.path.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned()));
    let d = l.model.diffusion().clone();
    let short = common::short;
    let settings = |g: &GenArgs| {
        serde_json::json!({"steps": g.steps, "unmask": common::flag_value(&g.unmask), "block_length": g.block_length, "threshold": short(g.threshold),
            "temperature": short(g.temp), "top_p": short(g.top_p), "top_k": g.top_k})
    };
    let mut defaults_json = settings(&defaults);
    defaults_json["max_tokens"] = n_predict.into();
    let mut meta = serde_json::json!({
        "architecture": p.arch, "n_vocab": p.n_vocab, "n_ctx_train": p.n_ctx_train, "n_ctx": n_ctx, "n_embd": p.n_embd, "n_layer": p.n_layer,
        "mask_token_id": d.mask_id, "shift_logits": d.shift_logits, "backend": l.model.backend_description(),
        "defaults": defaults_json.clone(),
    });
    // A request's defaults follow its own max_tokens: where the family's defaults switch at
    // LONG_ANSWER tokens (DiffuLLaMA's long answers) and the flags leave something to them, say
    // both sets (each resolved at the switch: the last length below it, the first from it).
    let long = dlm::model::LONG_ANSWER;
    let switches = d.sampling_for(long - 1, defaults.unmask) != d.sampling_for(long, defaults.unmask);
    let pinned = a.gen.steps_flag.is_some() && a.gen.block_length_flag.is_some() && a.gen.threshold_flag.is_some();
    if switches && !pinned && n_ctx > long {
        // (The flags that only touch sampling, and warn when useless, are left out of these two
        // resolutions: they do not depend on the length, and the warning is said once already.)
        let at = |n: usize| -> anyhow::Result<serde_json::Value> {
            let mut g = GenArgs { diffusion_alg_temp: None, diffusion_add_gumbel_noise: false, ..defaults.clone() };
            g.resolve(&d, n)?;
            let mut j = settings(&g);
            for k in ["temperature", "top_p", "top_k"] {
                j[k] = defaults_json[k].clone();
            }
            Ok(j)
        };
        let (mut below, mut from) = (at(long - 1)?, at(long)?);
        below["max_tokens_below"] = long.into();
        from["max_tokens_from"] = long.into();
        if a.gen.steps_flag.is_none() {
            from["steps_rule"] = format!("one per token, rounded up to a multiple of {}", dlm::model::LONG_BLOCK).into();
        }
        meta["defaults_by_length"] = serde_json::json!([below, from]);
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let (tx, rx) = std::sync::mpsc::channel();
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let app = Arc::new(routes::App {
        tok: l.tok.clone(),
        diffusion: d,
        defaults,
        n_predict,
        n_ctx,
        n_vocab: p.n_vocab,
        max_steps: a.max_steps,
        max_queue: a.max_queue,
        model_id,
        model_path: l.path.display().to_string(),
        max_batch,
        model_meta: meta,
        created: clock / 1_000_000_000,
        chat,
        jobs: Mutex::new(Some(tx)),
        metrics: metrics.clone(),
        shutting_down: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
        seeds: AtomicU64::new(a.gen.seed.unwrap_or(clock)),
        api_key: a.api_key.clone(),
        max_body: a.max_body,
        timeout: Duration::from_secs(a.timeout),
        causal: p.causal,
    });
    let limits = worker::Limits { max_batch, pass_tokens };
    let (model, tok) = (l.model, l.tok);
    let engine = std::thread::Builder::new()
        .name("dlm-engine".into())
        .spawn(move || worker::run(model, tok, rx, limits, metrics))
        .context("starting the engine thread")?;
    signals.loading.store(false, Ordering::Relaxed);
    let _ = loaded.send(());
    let listener = rt.block_on(loading).context("the listener of the loading phase")?;
    let opts = ServeOpts { timeout: Duration::from_secs(a.timeout), max_connections: a.max_connections, shutdown: Duration::from_secs(a.shutdown_timeout) };
    let r = router(app.clone(), a.max_body);
    rt.block_on(async {
        let local = listener.local_addr().map_or(addr.clone(), |a| a.to_string());
        dlm::errln!("dlm-server: serving {} on http://{local} (batch {max_batch}, queue {}, context {n_ctx}{})", app.model_id, a.max_queue, if app.api_key.is_some() { ", API key required" } else { "" });
        if dlm::cli::logs(dlm::cli::Log::Verbose) {
            dlm::errln!("settings: {} | request defaults: {}", app.model_meta["backend"], app.model_meta["defaults"]);
        }
        serve(listener, r, app.clone(), opts, &signals).await;
        anyhow::Ok(())
    })?;
    // No more requests: the engine ends once its last sequence has (cancelled ones at once).
    app.jobs.lock().map(|mut j| j.take()).ok();
    app.metrics.cancel_all.store(true, Ordering::Relaxed);
    let _ = engine.join();
    rt.shutdown_timeout(Duration::from_secs(1));
    dlm::errln!("dlm-server: stopped");
    Ok(())
}

/// Renders a one-message conversation once, at start: a template that hits a limit (memory,
/// time, the prompt cap) there would on every request, and is refused. A template that refuses
/// the probe by its own logic (`raise_exception`) only gets a warning: real requests may suit it.
/// When the renderer process cannot run at all (no `/proc`, no processes left), rendering
/// moves into this process with a warning: without the memory bound, but chat still works.
fn probe(t: &mut chat::Template, bos: &str, eos: &str) -> Result<(), String> {
    let messages = serde_json::json!([{"role": "user", "content": "Hello"}]);
    let mut result = t.render(&messages, bos, eos);
    if let Some(e) = result.as_ref().err().filter(|e| e.kind == chat::Failure::Unavailable) {
        dlm::errln!("warning: {}; chat templates render inside dlm-server, without a bound on their memory", e.message);
        t.render_in_process();
        result = t.render(&messages, bos, eos);
    }
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.kind == chat::Failure::Logic => {
            dlm::errln!("warning: the chat template refuses a one-message conversation ({}); requests it refuses get a 400", e.message);
            Ok(())
        }
        Err(e) => Err(format!("the chat template fails on a one-message conversation: {}", e.message)),
    }
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    if std::env::args_os().nth(1).is_some_and(|a| a == chat::isolated::CHILD_ARG) {
        return ExitCode::from(chat::isolated::child_main() as u8);
    }
    dlm::cli::install_hooks();
    let matches = common::command::<Args>().get_matches_from(common::init());
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    common::set_log(args.log_disable, args.verbose);
    dlm::cli::exit(run(args))
}
