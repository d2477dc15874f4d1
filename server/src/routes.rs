//! The endpoints: OpenAI's completions, chat completions and models; llama.cpp's health,
//! metrics, infill, tokenize and detokenize. Generation requests become [`Job`]s for the
//! engine thread; a handler waits for its jobs (or streams their progress) and answers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::{self, ApiError, Obj, Prompt};
use crate::chat::{Failure, Template};
use crate::common::{CacheArg, GenArgs};
use crate::common::find_stop;
use crate::worker::{render, Job, Outcome, Progress, RuleSpec};

/// What every handler reads.
pub struct App {
    pub tok: dlm::Tokenizer,
    pub diffusion: dlm::model::DiffusionParams,
    /// The server's generation flags: a request's defaults.
    pub defaults: GenArgs,
    pub n_predict: usize,
    pub n_ctx: usize,
    pub n_vocab: usize,
    /// Causal attention: keys/values of a block depend on nothing after it, so Fast-dLLM's
    /// caches do not apply.
    pub causal: bool,
    pub max_steps: usize,
    pub max_queue: usize,
    pub model_id: String,
    /// The GGUF file, as given.
    pub model_path: String,
    /// Sequences per pass at most.
    pub max_batch: usize,
    pub model_meta: Value,
    pub created: u64,
    pub chat: Result<Template, String>,
    pub jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub shutting_down: AtomicBool,
    pub next_id: AtomicU64,
    /// Seed of requests without one, when the server was given none: a clock-seeded counter.
    pub seeds: AtomicU64,
    pub api_key: Option<String>,
    pub max_body: usize,
    /// How long a client may take to send a request body.
    pub timeout: std::time::Duration,
}

pub type Shared = State<Arc<App>>;

/// A request body within `--max-body`, or the reason it is not.
pub type Body = Result<Bytes, BytesRejection>;

fn body(b: Body) -> Result<Obj, ApiError> {
    match b {
        Ok(bytes) => api::object(&bytes),
        Err(e) => Err(ApiError::new(e.status(), "invalid_request_error", e.body_text())),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Which response shape a generation request wants.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Completion,
    Chat,
    Infill,
}

/// A generation request, read and checked.
struct Gen {
    prompts: Vec<(Vec<u32>, String)>,
    suffix: Vec<u32>,
    n_gen: usize,
    gen: GenArgs,
    seed: u64,
    n: usize,
    stops: Vec<String>,
    stream: bool,
    canvas: bool,
    usage_chunk: bool,
    echo: bool,
    continues: bool,
}

/// Response ids: `cmpl-…`, `chatcmpl-…`.
fn response_id(app: &App, shape: Shape) -> String {
    let n = app.next_id.fetch_add(1, Ordering::Relaxed);
    let p = match shape {
        Shape::Chat => "chatcmpl",
        _ => "cmpl",
    };
    format!("{p}-{:x}{n:06x}", app.created)
}

impl App {
    /// BOS + prompt as dlm-run lays it out (BOS alone for an empty prompt).
    fn prefix(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tok.prompt_ids(text).map_err(|e| ApiError::field("prompt", format!("cannot tokenize the prompt: {e}")))
    }

    /// The request's prompts (text, ids, or a list of them), each with its text.
    fn prompts(&self, o: &Obj) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
        let mut prompts = Vec::new();
        for p in api::prompts(o, self.n_vocab)? {
            prompts.push(match p {
                Prompt::Text(t) => (self.prefix(&t)?, t),
                Prompt::Tokens(ids) => {
                    let text = self.tok.decode(&ids).unwrap_or_default();
                    (ids, text)
                }
            });
        }
        Ok(prompts)
    }

    /// The suffix continues the text: no BOS.
    fn suffix(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tok.suffix_ids(text).map_err(|e| ApiError::field("suffix", format!("cannot tokenize the suffix: {e}")))
    }

    /// Reads the generation fields of `o` over the server's defaults, as dlm-run reads its flags.
    fn gen(&self, o: &Obj, prompts: Vec<(Vec<u32>, String)>, suffix: Vec<u32>, shape: Shape) -> Result<Gen, ApiError> {
        let _ = api::string(o, "model")?;
        let _ = api::string(o, "user")?;
        if api::wants_logprobs(o) {
            return Err(ApiError::field("logprobs", "`logprobs`: log-probabilities are not available from a diffusion model's parallel decoding"));
        }
        api::refuse_unsupported(o)?;
        let max = self.n_ctx as u64;
        let n_gen = match shape {
            Shape::Infill => api::integer(o, "n_predict", 1, max)?.or(api::integer(o, "max_tokens", 1, max)?),
            Shape::Chat => api::integer(o, "max_completion_tokens", 1, max)?.or(api::integer(o, "max_tokens", 1, max)?),
            Shape::Completion => api::integer(o, "max_tokens", 1, max)?,
        }
        .map(|n| n as usize);
        // Without max_tokens: the server's -n, within the room the longest prompt leaves.
        let longest = prompts.iter().map(|p| p.0.len()).max().unwrap_or(0) + suffix.len();
        let n_gen = n_gen.unwrap_or_else(|| self.n_predict.min(self.n_ctx.saturating_sub(longest)).max(1));
        let mut g = self.defaults.clone();
        if let Some(t) = api::number(o, "temperature", 0.0, 100.0, false)? {
            g.temp_flag = Some(t);
        }
        if let Some(p) = api::number(o, "top_p", 0.0, 1.0, true)? {
            g.top_p_flag = Some(p);
        }
        if let Some(k) = api::integer(o, "top_k", 0, self.n_vocab as u64)? {
            g.top_k_flag = Some(k as usize);
        }
        if let Some(s) = api::integer(o, "steps", 1, self.max_steps as u64)? {
            g.steps_flag = Some(s as usize);
        }
        if let Some(b) = api::integer(o, "block_length", 1, max)? {
            g.block_length_flag = Some(b as usize);
        }
        if let Some(u) = api::choice(o, "unmask")? {
            g.unmask_flag = Some(u);
            g.diffusion_algorithm = None;
        }
        if let Some(t) = api::number(o, "threshold", 0.0, 1.0, true)? {
            g.threshold_flag = Some(t);
        }
        if let Some(c) = api::choice::<CacheArg>(o, "cache")? {
            g.cache = c;
        }
        if self.causal && g.cache != CacheArg::None {
            return Err(ApiError::field("cache", "`cache`: this model's attention is causal, so the key/value caches of block decoding do not apply; use \"none\""));
        }
        if let Some(s) = api::number(o, "cfg_scale", 0.0, dlm::generate::MAX_CFG_SCALE as f64, false)? {
            g.cfg_scale = s;
        }
        if let Some(e) = api::number(o, "eps", 0.0, 1.0, true)? {
            if e >= 1.0 {
                return Err(ApiError::field("eps", format!("`eps` must be below 1, got {e}")));
            }
            g.diffusion_eps = Some(e);
        }
        if let Some(t) = api::number(o, "alg_temp", 0.0, 1e6, false)? {
            if g.diffusion_eps.is_none() {
                return Err(ApiError::field("alg_temp", "`alg_temp` needs `eps` (Dream's timestep schedule)"));
            }
            g.diffusion_alg_temp = Some(t);
        }
        if let Some(b) = api::boolean(o, "add_gumbel_noise")? {
            g.diffusion_add_gumbel_noise = b;
        }
        let seed = match api::integer(o, "seed", 0, u64::MAX)? {
            Some(s) => s,
            None => g.seed.unwrap_or_else(|| self.seeds.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)),
        };
        let n = api::integer(o, "n", 1, 16)?.unwrap_or(1) as usize;
        let most = api::MAX_PROMPTS.min(self.max_queue);
        if prompts.len() * n > most {
            return Err(ApiError::field("n", format!("{} prompt(s) × n = {n} is more than the {most} sequences one request may queue", prompts.len())));
        }
        g.resolve(&self.diffusion, n_gen).map_err(|e| {
            let msg = field_names(&format!("{e:#}"));
            // The field the message names first.
            let param = FIELDS.iter().filter_map(|f| msg.find(&format!("`{f}`")).map(|at| (at, *f))).min().map(|(_, f)| f);
            let err = ApiError::bad(msg);
            ApiError { param: param.map(str::to_owned), ..err }
        })?;
        if g.diffusion_add_gumbel_noise && (api::has(o, "top_k") || api::has(o, "top_p")) {
            return Err(ApiError::field("add_gumbel_noise", "`add_gumbel_noise` draws from the whole distribution: drop `top_k` and `top_p`"));
        }
        for (prefix, _) in &prompts {
            let len = prefix.len() + n_gen + suffix.len();
            if len > self.n_ctx {
                let param = if shape == Shape::Chat { "max_completion_tokens" } else { "max_tokens" };
                return Err(ApiError::field(param, format!("prompt ({}) + max_tokens ({n_gen}) + suffix ({}) = {len} tokens exceeds the context of {}", prefix.len(), suffix.len(), self.n_ctx))
                    .code("context_length_exceeded"));
            }
        }
        let stream_options = match o.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(so)) => api::boolean(so, "include_usage")?.unwrap_or(false),
            Some(v) => return Err(ApiError::field("stream_options", format!("`stream_options` must be an object, got {}", api::kind(v)))),
        };
        let continues = match shape {
            Shape::Chat => false,
            _ => true,
        };
        Ok(Gen {
            prompts,
            suffix,
            n_gen,
            gen: g,
            seed,
            n,
            stops: api::stops(o)?,
            stream: api::boolean(o, "stream")?.unwrap_or(false),
            canvas: api::boolean(o, "stream_canvas")?.unwrap_or(false),
            usage_chunk: stream_options,
            echo: shape == Shape::Completion && api::boolean(o, "echo")?.unwrap_or(false),
            continues,
        })
    }

    /// Queues one job per prompt and choice; the receivers in choice order.
    fn submit(&self, r: &Gen) -> Result<Vec<watch::Receiver<Progress>>, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down"));
        }
        let k = r.prompts.len() * r.n;
        let queued = self.metrics.queued.load(Ordering::Relaxed);
        if queued + k > self.max_queue {
            let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", format!("the queue is full ({queued} sequences waiting, --max-queue {}): retry later", self.max_queue));
            e.retry_after = Some(1);
            return Err(e.code("queue_full"));
        }
        let guard = self.jobs.lock().map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the engine is gone"))?;
        let Some(tx) = guard.as_ref() else {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down"));
        };
        let rule = RuleSpec { rule: r.gen.unmask, threshold: r.gen.threshold, eps: r.gen.diffusion_eps, alg_temp: r.gen.diffusion_alg_temp };
        let mut out = Vec::with_capacity(k);
        for (prefix, prompt) in &r.prompts {
            for c in 0..r.n {
                let seed = r.seed.wrapping_add(c as u64);
                let params = r.gen.params_for(self.diffusion.mask_id, self.diffusion.shift_logits, self.tok.eos, r.n_gen, seed);
                let (progress, rx) = watch::channel(Progress::default());
                let job = Job {
                    prefix: prefix.clone(),
                    suffix: r.suffix.clone(),
                    params,
                    rule,
                    stops: r.stops.clone(),
                    continues: r.continues && !prompt.is_empty(),
                    canvas: r.canvas && r.stream,
                    progress,
                    queued: Instant::now(),
                };
                self.metrics.queued.fetch_add(1, Ordering::Relaxed);
                self.metrics.prompt(prefix.len() + r.suffix.len());
                if tx.send(job).is_err() {
                    self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                    return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the engine has stopped"));
                }
                out.push(rx);
            }
        }
        Ok(out)
    }
}

/// The fields [`field_names`] may name.
const FIELDS: &[&str] = &["alg_temp", "eps", "add_gumbel_noise", "block_length", "cfg_scale", "threshold", "unmask", "steps", "cache", "top_p", "top_k", "temperature", "max_tokens"];

/// Flag names in a message from the shared flag checks, as this API's fields.
fn field_names(msg: &str) -> String {
    const NAMES: &[(&str, &str)] = &[
        ("--diffusion-alg-temp", "`alg_temp`"),
        ("--diffusion-eps", "`eps`"),
        ("--diffusion-add-gumbel-noise", "`add_gumbel_noise`"),
        ("--block-length", "`block_length`"),
        ("--cfg-scale", "`cfg_scale`"),
        ("--threshold", "`threshold`"),
        ("--unmask", "`unmask`"),
        ("--steps", "`steps`"),
        ("--cache", "`cache`"),
        ("--top-p", "`top_p`"),
        ("--top-k", "`top_k`"),
        ("--temp", "`temperature`"),
        ("-n", "`max_tokens`"),
    ];
    let mut s = msg.to_owned();
    for (flag, field) in NAMES {
        s = s.replace(flag, field);
    }
    s
}

/// The text of a finished choice, cut at its stop string, and why it ended.
fn final_text(app: &App, o: &Outcome, continues: bool) -> (String, &'static str) {
    let mut text = render(&app.tok, &o.tokens, continues);
    if let Some(s) = &o.stop {
        if let Some(at) = text.find(s.as_str()) {
            text.truncate(at);
        }
    }
    let reason = if o.stop.is_some() || o.eos { "stop" } else { "length" };
    (text, reason)
}

/// Waits for a job's end.
async fn outcome(mut rx: watch::Receiver<Progress>) -> Result<Outcome, ApiError> {
    let done = rx.wait_for(|p| p.done.is_some()).await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the engine stopped"))?;
    match done.done.clone().expect("waited for") {
        Ok(o) => Ok(o),
        Err(e) if e.contains("shutting down") => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e)),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e)),
    }
}

/// What `/metrics` and the log line learn about a generation request.
#[derive(Clone, Debug)]
pub struct Note(pub String);

async fn generation(app: Arc<App>, shape: Shape, r: Gen) -> Result<Response, ApiError> {
    let rxs = app.submit(&r)?;
    let id = response_id(&app, shape);
    let created = now();
    let model = app.model_id.clone();
    if r.stream {
        return Ok(stream(app, shape, r, rxs, id, created).into_response());
    }
    let mut choices = Vec::new();
    let (mut completion, mut steps, mut queued, mut busy) = (0, 0, 0f64, 0f64);
    let n_choices = rxs.len();
    for (i, rx) in rxs.into_iter().enumerate() {
        let out = outcome(rx).await?;
        let prompt = &r.prompts[i / r.n];
        let (mut text, reason) = final_text(&app, &out, r.continues && !prompt.1.is_empty());
        completion += out.tokens.len();
        steps += out.steps;
        queued = queued.max(out.queue_seconds);
        busy = busy.max(out.seconds - out.queue_seconds);
        if r.echo {
            text = format!("{}{text}", prompt.1);
        }
        choices.push(match shape {
            Shape::Chat => json!({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": null}),
            Shape::Completion => json!({"index": i, "text": text, "finish_reason": reason, "logprobs": null}),
            Shape::Infill => json!({"index": i, "content": text, "stop": true, "stop_type": if out.stop.is_some() { "word" } else if out.eos { "eos" } else { "limit" },
                "stopping_word": out.stop.clone().unwrap_or_default(), "tokens_predicted": out.tokens.len(), "steps": out.steps}),
        });
    }
    let prompt_tokens: usize = r.prompts.iter().map(|p| p.0.len() + r.suffix.len()).sum();
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion});
    let note = Note(format!("{n_choices} sequence(s), {completion} tokens, {steps} steps, seed {}, queued {:.0} ms, denoised {:.0} ms", r.seed, queued * 1e3, busy * 1e3));
    let mut resp = match shape {
        Shape::Infill if n_choices == 1 => {
            let mut c = choices.pop().expect("one");
            c["model"] = json!(model);
            c["seed"] = json!(r.seed);
            c["tokens_evaluated"] = json!(prompt_tokens);
            Json(c).into_response()
        }
        Shape::Infill => Json(json!({"results": choices, "model": model, "seed": r.seed})).into_response(),
        Shape::Chat => Json(json!({"id": id, "object": "chat.completion", "created": created, "model": model, "choices": choices, "usage": usage, "system_fingerprint": fingerprint(), "seed": r.seed})).into_response(),
        Shape::Completion => Json(json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices, "usage": usage, "system_fingerprint": fingerprint(), "seed": r.seed})).into_response(),
    };
    resp.extensions_mut().insert(note);
    Ok(resp)
}

fn fingerprint() -> String {
    format!("dlm-{}", env!("CARGO_PKG_VERSION"))
}

/// The longest end of `text` that begins some stop string (held back while streaming: the
/// next pass may complete it).
fn partial_stop(text: &str, stops: &[String]) -> usize {
    let mut keep = 0;
    for s in stops.iter().filter(|s| !s.is_empty()) {
        for (i, _) in s.char_indices().skip(1) {
            if i > keep && text.ends_with(&s[..i]) {
                keep = i;
            }
        }
    }
    keep
}

/// Server-sent events: text as soon as a left-to-right prefix of a choice is final (committed,
/// no mask before it), the canvas after each pass with `stream_canvas`, a last chunk with the
/// finish reason, then `[DONE]`.
fn stream(app: Arc<App>, shape: Shape, r: Gen, rxs: Vec<watch::Receiver<Progress>>, id: String, created: u64) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let r = Arc::new(r);
    let completion = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let per_choice = rxs.into_iter().enumerate().map(|(i, rx)| {
        let (app, r, id, completion) = (app.clone(), r.clone(), id.clone(), completion.clone());
        let continues = r.continues && !r.prompts[i / r.n].1.is_empty();
        let first = r.echo.then(|| r.prompts[i / r.n].1.clone());
        let state = (rx, String::new(), false, first, usize::MAX);
        stream::unfold(state, move |(mut rx, mut sent, finished, first, mut last_canvas)| {
            let (app, r, id, completion) = (app.clone(), r.clone(), id.clone(), completion.clone());
            async move {
                if finished {
                    return None;
                }
                let chunk = |text: Option<String>, reason: Option<&str>, extra: Option<(&str, Value)>| {
                    let choice = match shape {
                        Shape::Chat => {
                            let mut delta = json!({});
                            if let Some(t) = text {
                                delta = json!({"role": "assistant", "content": t});
                            }
                            json!({"index": i, "delta": delta, "finish_reason": reason, "logprobs": null})
                        }
                        Shape::Completion => json!({"index": i, "text": text.unwrap_or_default(), "finish_reason": reason, "logprobs": null}),
                        Shape::Infill => json!({"index": i, "content": text.unwrap_or_default(), "stop": reason.is_some()}),
                    };
                    let object = if shape == Shape::Chat { "chat.completion.chunk" } else { "text_completion" };
                    // llama.cpp's /infill streams its objects bare (`content`, `stop`, `index`).
                    let mut c = if shape == Shape::Infill { choice } else { json!({"id": id, "object": object, "created": created, "model": app.model_id, "choices": [choice]}) };
                    if let Some((k, v)) = extra {
                        c[k] = v;
                    }
                    Event::default().data(c.to_string())
                };
                let mut events = Vec::new();
                if let Some(f) = first.filter(|f| !f.is_empty()) {
                    events.push(chunk(Some(f), None, None));
                }
                // Wait for the next change (or the end).
                if rx.changed().await.is_err() {
                    let e = json!({"error": {"message": "the engine stopped", "type": "server_error", "param": null, "code": null}});
                    events.push(Event::default().data(e.to_string()));
                    return Some((stream::iter(events), (rx, sent, true, None, last_canvas)));
                }
                let p = rx.borrow_and_update().clone();
                if let Some(done) = &p.done {
                    match done {
                        Ok(o) => {
                            completion.fetch_add(o.tokens.len(), Ordering::Relaxed);
                            let (text, reason) = final_text(&app, o, continues);
                            let rest = match text.strip_prefix(sent.as_str()) {
                                Some(rest) => rest.to_owned(),
                                None => {
                                    // Cannot happen with a decoder whose prefixes decode to prefixes.
                                    dlm::errln!("warning: streamed text {sent:?} is not a prefix of the final text {text:?}; the rest is not sent");
                                    String::new()
                                }
                            };
                            if !rest.is_empty() {
                                events.push(chunk(Some(rest), None, None));
                            }
                            events.push(chunk(None, Some(reason), Some(("seed", json!(r.seed.wrapping_add((i % r.n) as u64))))));
                        }
                        Err(msg) => {
                            let e = json!({"error": {"message": msg, "type": "server_error", "param": null, "code": null}});
                            events.push(Event::default().data(e.to_string()));
                        }
                    }
                    return Some((stream::iter(events), (rx, sent, true, None, last_canvas)));
                }
                let mut text = render(&app.tok, &p.fixed, continues);
                if let Some((at, _)) = find_stop(&text, &r.stops) {
                    text.truncate(at);
                } else {
                    let hold = partial_stop(&text, &r.stops);
                    text.truncate(text.len() - hold);
                }
                // An incomplete character (a byte token waiting for the rest) is held back.
                while text.ends_with('\u{FFFD}') {
                    text.pop();
                }
                if let Some(new) = text.strip_prefix(sent.as_str()).filter(|n| !n.is_empty()) {
                    events.push(chunk(Some(new.to_owned()), None, None));
                    sent = text;
                }
                if let Some((tokens, masked)) = &p.canvas {
                    if p.steps != last_canvas {
                        last_canvas = p.steps;
                        let runs = app.tok.decode_canvas(tokens, masked, continues).unwrap_or_default();
                        let left = masked.iter().filter(|&&m| m).count();
                        events.push(chunk(None, None, Some(("canvas", json!({"step": p.steps, "masked": left, "runs": runs})))));
                    }
                }
                Some((stream::iter(events), (rx, sent, false, None, last_canvas)))
            }
        })
        .flatten()
    });
    let merged = stream::select_all(per_choice.map(Box::pin));
    let prompt_tokens: usize = r.prompts.iter().map(|p| p.0.len() + r.suffix.len()).sum();
    let usage = r.usage_chunk.then(|| {
        let object = if shape == Shape::Chat { "chat.completion.chunk" } else { "text_completion" };
        (object, app.model_id.clone(), id.clone())
    });
    let tail = stream::once(async move {
        let mut out = Vec::new();
        if let Some((object, model, id)) = usage {
            let c = completion.load(Ordering::Relaxed);
            let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": c, "total_tokens": prompt_tokens + c});
            out.push(Event::default().data(json!({"id": id, "object": object, "created": created, "model": model, "choices": [], "usage": usage}).to_string()));
        }
        if shape != Shape::Infill {
            out.push(Event::default().data("[DONE]"));
        }
        stream::iter(out)
    })
    .flatten();
    let all = merged.chain(tail).map(Ok::<_, Infallible>);
    Sse::new(all).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(1)))
}

/// Parsing, tokenizing and rendering a template take time in proportion to the body (up to
/// `--max-body`): on the blocking pool, never on the threads that serve connections.
async fn off_thread<T: Send + 'static>(app: &Arc<App>, f: impl FnOnce(&App) -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    let app = app.clone();
    match tokio::task::spawn_blocking(move || f(&app)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error while reading the request")),
    }
}

pub async fn completions(State(app): Shared, b: Body) -> Result<Response, ApiError> {
    let r = off_thread(&app, move |app| {
        let o = body(b)?;
        let prompts = app.prompts(&o)?;
        let suffix = app.suffix(api::string(&o, "suffix")?.unwrap_or(""))?;
        app.gen(&o, prompts, suffix, Shape::Completion)
    })
    .await?;
    generation(app, Shape::Completion, r).await
}

pub async fn chat(State(app): Shared, b: Body) -> Result<Response, ApiError> {
    let r = off_thread(&app, move |app| {
        let o = body(b)?;
        let messages = api::messages(&o)?;
        let template = app.chat.as_ref().map_err(|e| ApiError::field("messages", e.clone()).code("no_chat_template"))?;
        let piece = |id: Option<u32>| id.and_then(|i| app.tok.id_to_token(i)).unwrap_or_default();
        let (bos, eos) = (piece(app.tok.bos), piece(app.tok.eos));
        let mut text = template.render(&messages, &bos, &eos).map_err(|e| match e.kind {
            Failure::Unavailable => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.message),
            Failure::Logic | Failure::Limit => ApiError::field("messages", format!("the chat template failed: {}", e.message)),
        })?;
        // The tokenizer adds BOS itself: a template that writes it too would make two.
        if app.tok.add_bos && !bos.is_empty() {
            if let Some(rest) = text.strip_prefix(bos.as_str()) {
                text = rest.to_owned();
            }
        }
        let prompts = vec![(app.prefix(&text)?, text)];
        app.gen(&o, prompts, Vec::new(), Shape::Chat)
    })
    .await?;
    generation(app, Shape::Chat, r).await
}

/// llama-server's native requests say "as many as fit" with `n_predict: -1` (its default).
fn unlimited_means_default(o: &mut Obj) {
    if o.get("n_predict").and_then(Value::as_i64) == Some(-1) {
        o.remove("n_predict");
    }
}

/// llama-server's `/completion`: `/v1/completions`' prompts (text, ids, or a list of them) with
/// llama.cpp's request names and answer shape (that of `/infill`).
pub async fn completion_native(State(app): Shared, b: Body) -> Result<Response, ApiError> {
    let r = off_thread(&app, move |app| {
        let mut o = body(b)?;
        unlimited_means_default(&mut o);
        let prompts = app.prompts(&o)?;
        app.gen(&o, prompts, Vec::new(), Shape::Infill)
    })
    .await?;
    generation(app, Shape::Infill, r).await
}

pub async fn infill(State(app): Shared, b: Body) -> Result<Response, ApiError> {
    let r = off_thread(&app, move |app| {
        let mut o = body(b)?;
        unlimited_means_default(&mut o);
        let prefix_text = api::string(&o, "input_prefix")?.or(api::string(&o, "prompt")?).unwrap_or("").to_owned();
        let suffix = app.suffix(api::string(&o, "input_suffix")?.unwrap_or(""))?;
        let prompts = vec![(app.prefix(&prefix_text)?, prefix_text)];
        app.gen(&o, prompts, suffix, Shape::Infill)
    })
    .await?;
    generation(app, Shape::Infill, r).await
}

pub async fn tokenize(State(app): Shared, b: Body) -> Result<Response, ApiError> {
    off_thread(&app, move |app| tokenize_body(app, b)).await
}

fn tokenize_body(app: &App, b: Body) -> Result<Response, ApiError> {
    let o = body(b)?;
    let text = api::string(&o, "content")?.ok_or_else(|| ApiError::field("content", "`content` (the text to tokenize) is required"))?;
    let special = api::boolean(&o, "add_special")?.unwrap_or(false);
    let pieces = api::boolean(&o, "with_pieces")?.unwrap_or(false);
    let mut ids = app.tok.encode(text).map_err(|e| ApiError::field("content", format!("cannot tokenize: {e}")))?;
    if !special && app.tok.add_bos && app.tok.bos.is_some() && ids.first() == app.tok.bos.as_ref() {
        ids.remove(0);
    }
    let tokens: Vec<Value> = if pieces {
        ids.iter().map(|&id| json!({"id": id, "piece": app.tok.decode(&[id]).unwrap_or_default()})).collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(Json(json!({"tokens": tokens})).into_response())
}

pub async fn detokenize(State(app): Shared, b: Body) -> Result<Response, ApiError> {
    off_thread(&app, move |app| detokenize_body(app, b)).await
}

fn detokenize_body(app: &App, b: Body) -> Result<Response, ApiError> {
    let o = body(b)?;
    let ids = match o.get("tokens") {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v.as_u64() {
                Some(t) if (t as usize) < app.tok.vocab_size() => Ok(t as u32),
                _ => Err(ApiError::field("tokens", format!("`tokens[{i}]` must be a token id below {}, got {v}", app.tok.vocab_size()))),
            })
            .collect::<Result<Vec<u32>, _>>()?,
        Some(v) => return Err(ApiError::field("tokens", format!("`tokens` must be an array of token ids, got {}", api::kind(v)))),
        None => return Err(ApiError::field("tokens", "`tokens` is required")),
    };
    let text = app.tok.decode(&ids).map_err(|e| ApiError::field("tokens", format!("cannot decode: {e}")))?;
    Ok(Json(json!({"content": text})).into_response())
}

pub async fn models(State(app): Shared) -> Response {
    Json(json!({"object": "list", "data": [{"id": app.model_id, "object": "model", "created": app.created, "owned_by": "dlm", "meta": app.model_meta}]})).into_response()
}

pub async fn health(State(app): Shared) -> Response {
    if app.shutting_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "shutting down"}))).into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /`: the web page (server/static/index.html, compiled in): a prompt or chat box, the
/// settings that matter for diffusion, and the canvas drawn live from `stream_canvas`. It
/// loads nothing from elsewhere (the Content-Security-Policy says so to the browser too).
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../static/index.html"),
    )
        .into_response()
}

pub async fn metrics(State(app): Shared) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()).into_response()
}

/// The endpoints, for the 404 that names them.
pub const ENDPOINTS: &str = "POST /v1/completions, /v1/chat/completions, /completion, /infill, /tokenize, /detokenize; GET / (web page), /v1/models, /props, /health, /metrics";

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    let why = match uri.path().trim_end_matches('/') {
        "/v1/embeddings" | "/embeddings" | "/embedding" => "dlm-server computes no embeddings. ",
        "/slots" => "dlm-server has no slots: requests share one continuous batch (see /metrics). ",
        _ => "",
    };
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("no such endpoint: {}. {why}It serves {ENDPOINTS}", crate::api::shown(uri.path()))).code("not_found")
}

/// llama-server's `/props`: the settings a request gets by default, the context, the batch,
/// the model and its chat template.
pub async fn props(State(app): Shared) -> Response {
    let m = &app.model_meta;
    Json(json!({
        "default_generation_settings": {"n_ctx": m["n_ctx"], "params": m["defaults"]},
        "total_slots": app.max_batch,
        "model_path": app.model_path,
        "model_alias": app.model_id,
        "chat_template": app.chat.as_ref().map(|t| t.source()).unwrap_or(""),
        "modalities": {"vision": false, "audio": false},
        "build_info": env!("CARGO_PKG_VERSION"),
        "meta": m,
    }))
    .into_response()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "this endpoint does not take that method").code("method_not_allowed")
}

/// `Authorization: Bearer KEY` when `--api-key` is set (every endpoint but /health).
pub fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    // Constant time over the key's length: the comparison does not reveal a matching prefix.
    given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
