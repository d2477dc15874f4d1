//! The engine thread: it owns the model and a [`dlm::engine::Engine`], admits queued requests
//! at step boundaries (up to `-b` sequences and the activation budget of one pass), runs one
//! pass for all of them, and publishes each sequence's progress. A request whose client has
//! gone (its receiver dropped) is cancelled before the next pass.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlm::engine::{Engine, SeqId};
use dlm::generate::GenParams;
use dlm::sample::UnmaskRule;
use dlm::Tokenizer;
use tokio::sync::watch;

use crate::common::{canvas_text, find_stop};
use crate::metrics::Metrics;

/// How the unmasking rule is made (on the engine thread: rules are not `Send`).
#[derive(Clone, Copy, Debug)]
pub struct RuleSpec {
    pub rule: UnmaskRule,
    pub threshold: f32,
    pub eps: Option<f32>,
    pub alg_temp: Option<f32>,
}

/// One sequence to generate.
pub struct Job {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
    pub params: GenParams,
    pub rule: RuleSpec,
    /// Text after which the output ends, once everything before it is final.
    pub stops: Vec<String>,
    /// Whether the prompt is shown before the text (its first token keeps its leading space).
    pub continues: bool,
    /// Whether to publish the whole canvas after each pass.
    pub canvas: bool,
    pub progress: watch::Sender<Progress>,
    pub queued: Instant,
}

/// A sequence as its client sees it; replaced after every pass that moves it.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The final left-to-right tokens of the span: committed, no mask before them, ending
    /// before the first EOS.
    pub fixed: Vec<u32>,
    /// Passes this sequence took part in.
    pub steps: usize,
    /// The span with its masks, when the job asked for the canvas.
    pub canvas: Option<(Vec<u32>, Vec<bool>)>,
    /// Set once, last.
    pub done: Option<Result<Outcome, String>>,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    /// The tokens of the text (cut before EOS, and where a stop string was found).
    pub tokens: Vec<u32>,
    pub stop: Option<String>,
    /// Whether a committed EOS ended the text.
    pub eos: bool,
    pub steps: usize,
    pub queue_seconds: f64,
    pub seconds: f64,
}

/// What the server's handlers and the engine thread share besides the channel.
pub struct Limits {
    pub max_batch: usize,
    /// Tokens (canvases, a guided one twice) one pass may hold.
    pub pass_tokens: usize,
}

struct Active {
    id: SeqId,
    job: Job,
    started: Instant,
    /// Length of `fixed` last searched for stop strings.
    checked: usize,
    stop: Option<(usize, String)>,
}

/// Runs until every sender of `rx` is gone and the last sequence has finished (or `cancel` is
/// set, which ends everything at the next step boundary).
pub fn run(model: dlm::Model, tok: Tokenizer, rx: Receiver<Job>, limits: Limits, metrics: Arc<Metrics>) {
    // A bug here must not leave a server that answers /health but never generates: the panic
    // hook has printed the line; end the process so a supervisor restarts it.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(model, tok, rx, limits, metrics)));
    if r.is_err() {
        dlm::cli::exit_now(101);
    }
}

fn serve(mut model: dlm::Model, tok: Tokenizer, rx: Receiver<Job>, limits: Limits, metrics: Arc<Metrics>) {
    let mut engine = Engine::new();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Active> = Vec::new();
    let mut open = true;
    loop {
        // New requests: wait for one when idle, else take what has arrived.
        if open {
            if active.is_empty() && waiting.is_empty() {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(j) => waiting.push_back(j),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(j) => waiting.push_back(j),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        if metrics.cancel_all.load(Ordering::Relaxed) {
            for job in waiting.drain(..) {
                metrics.queued.fetch_sub(1, Ordering::Relaxed);
                finish(&job, Err("the server is shutting down".into()));
            }
            for a in active.drain(..) {
                engine.remove(a.id);
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                finish(&a.job, Err("the server is shutting down".into()));
            }
            metrics.active.store(0, Ordering::Relaxed);
        }
        // Clients that left: out of the queue and the batch.
        waiting.retain(|j| {
            let gone = j.progress.is_closed();
            if gone {
                metrics.queued.fetch_sub(1, Ordering::Relaxed);
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        active.retain(|a| {
            let gone = a.job.progress.is_closed();
            if gone {
                engine.remove(a.id);
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        admit(&mut engine, &mut waiting, &mut active, &limits, &metrics);
        metrics.active.store(active.len(), Ordering::Relaxed);
        // Caches of sequences that left (cancelled, stopped) go now, not at the next pass.
        engine.free_caches(&mut model);
        if active.is_empty() {
            if !open && waiting.is_empty() {
                return;
            }
            continue;
        }
        let stepped = engine.step(&mut model);
        match stepped {
            Err(e) => {
                let msg = format!("generation failed: {e}");
                dlm::errln!("error: {msg}");
                for a in active.drain(..) {
                    engine.remove(a.id);
                    finish(&a.job, Err(msg.clone()));
                }
            }
            Ok(None) => {
                for a in active.drain(..) {
                    finish(&a.job, Err("the sequence left the engine without a result".into()));
                }
            }
            Ok(Some(st)) => {
                // A failed pass ends only its own sequences.
                for (id, e) in st.failed {
                    let Some(i) = active.iter().position(|a| a.id == id) else { continue };
                    let a = active.swap_remove(i);
                    let msg = format!("generation failed: {e}");
                    dlm::errln!("error: {msg}");
                    finish(&a.job, Err(msg));
                }
                if !st.ran.is_empty() {
                    metrics.pass(st.ran.len(), st.forward_seconds);
                }
                for (id, g) in st.finished {
                    let Some(i) = active.iter().position(|a| a.id == id) else { continue };
                    let mut a = active.swap_remove(i);
                    let fixed = g.tokens.clone();
                    publish(&tok, &mut a, fixed, None, g.steps);
                    let outcome = outcome(&a, g.tokens, g.steps);
                    metrics.generated(outcome.tokens.len());
                    finish(&a.job, Ok(outcome));
                }
                // The others: their final prefix, stop strings, the canvas.
                let mut stopped = Vec::new();
                for (k, a) in active.iter_mut().enumerate() {
                    let Some(v) = engine.view(a.id) else { continue };
                    let (tokens, masked) = (&v.canvas[v.span.clone()], &v.masked[v.span.clone()]);
                    let mut fin = masked.iter().position(|&m| m).unwrap_or(masked.len());
                    if let Some(e) = a.job.params.eos.and_then(|eos| tokens[..fin].iter().position(|&t| t == eos)) {
                        fin = e;
                    }
                    let canvas = a.job.canvas.then(|| (tokens.to_vec(), masked.to_vec()));
                    let steps = v.steps;
                    let fixed = tokens[..fin].to_vec();
                    publish(&tok, a, fixed, canvas, steps);
                    if a.stop.is_some() {
                        stopped.push(k);
                    }
                }
                for k in stopped.into_iter().rev() {
                    let a = active.swap_remove(k);
                    let Some(g) = engine.remove(a.id) else {
                        finish(&a.job, Err("the sequence left the engine without a result".into()));
                        continue;
                    };
                    let outcome = outcome(&a, g.tokens, g.steps);
                    metrics.generated(outcome.tokens.len());
                    finish(&a.job, Ok(outcome));
                }
            }
        }
        metrics.active.store(active.len(), Ordering::Relaxed);
    }
}

/// Moves queued jobs into the engine, first come first served, while the batch has room: at
/// most `max_batch` sequences and `pass_tokens` tokens in a pass (a lone sequence always fits:
/// its length was checked against the context). Sequences with a key/value cache batch like the
/// others (each has its own cache).
fn admit(engine: &mut Engine<'static>, waiting: &mut VecDeque<Job>, active: &mut Vec<Active>, limits: &Limits, metrics: &Metrics) {
    let cost = |j: &Job| (j.prefix.len() + j.params.n_gen + j.suffix.len()) * if j.params.cfg_scale > 0.0 { 2 } else { 1 };
    let mut used: usize = active.iter().map(|a| cost(&a.job)).sum();
    while let Some(j) = waiting.front().filter(|_| active.len() < limits.max_batch) {
        if !active.is_empty() && used + cost(j) > limits.pass_tokens {
            break;
        }
        let job = waiting.pop_front().expect("a front");
        metrics.queued.fetch_sub(1, Ordering::Relaxed);
        let r = job.rule;
        let rule = r.rule.unmasker_with(r.threshold, r.eps, r.alg_temp);
        match engine.add(&job.prefix, &job.suffix, job.params.clone(), rule) {
            Ok(id) => {
                used += cost(&job);
                metrics.queue_wait(job.queued.elapsed().as_secs_f64());
                active.push(Active { id, job, started: Instant::now(), checked: 0, stop: None });
            }
            Err(e) => finish(&job, Err(e.to_string())),
        }
    }
}

/// Publishes `fixed` (and the canvas) when it changed, and searches the final text for the
/// job's stop strings when it grew (as `dlm-run --stop` does after each step).
fn publish(tok: &Tokenizer, a: &mut Active, fixed: Vec<u32>, canvas: Option<(Vec<u32>, Vec<bool>)>, steps: usize) {
    if !a.job.stops.is_empty() && fixed.len() > a.checked && a.stop.is_none() {
        a.checked = fixed.len();
        let text = render(tok, &fixed, a.job.continues);
        if let Some((_, s)) = find_stop(&text, &a.job.stops) {
            // The text is the final prefix as it stands, cut at the stop string by the handler.
            a.stop = Some((fixed.len(), s.to_owned()));
        }
    }
    let changed = a.job.progress.borrow().fixed != fixed || canvas.is_some() || a.job.progress.borrow().steps != steps;
    if changed {
        a.job.progress.send_modify(|p| {
            p.fixed = fixed;
            p.canvas = canvas;
            p.steps = steps;
        });
    }
}

fn outcome(a: &Active, mut tokens: Vec<u32>, steps: usize) -> Outcome {
    if let Some((n, _)) = &a.stop {
        tokens.truncate(*n);
    }
    let eos = a.job.params.eos.is_some() && a.stop.is_none() && tokens.len() < a.job.params.n_gen;
    Outcome {
        tokens,
        stop: a.stop.as_ref().map(|s| s.1.clone()),
        eos,
        steps,
        queue_seconds: a.started.duration_since(a.job.queued).as_secs_f64(),
        seconds: a.job.queued.elapsed().as_secs_f64(),
    }
}

fn finish(job: &Job, r: Result<Outcome, String>) {
    job.progress.send_modify(|p| p.done = Some(r));
}

/// The text of `tokens` as shown after the prompt (`continues`) or alone.
pub fn render(tok: &Tokenizer, tokens: &[u32], continues: bool) -> String {
    canvas_text(tok, tokens, &vec![false; tokens.len()], "", continues)
}
