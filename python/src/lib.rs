//! `dlm._dlm`: the native half of the `dlm` Python package (the typed wrapper is
//! `python/python/dlm/__init__.py`). Flags are parsed by the very structs `dlm-run` parses
//! (`src/bin/common`), from an argument list the wrapper makes of keyword arguments, so a
//! setting means and checks exactly what the flag of the same name does, and a generation with
//! a seed equals `dlm-run`'s with that seed. Every pass runs with the GIL released; a model is
//! used by one thread at a time (a lock), so a pool of Python threads may share it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use clap::Parser;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

#[path = "../../src/bin/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use common::{canvas_text, cut_at_stop, find_stop, GenArgs, Loaded, ModelArgs};
use dlm::generate::{generate, generate_batch, Event, Flow, GenParams, Generation};

/// How the model is loaded: `dlm-run`'s model flags.
#[derive(Parser, Debug)]
#[command(name = "dlm.Model", no_binary_name = true, disable_help_flag = true, disable_version_flag = true)]
struct LoadArgs {
    #[command(flatten)]
    m: ModelArgs,
}

/// One generation call: `dlm-run`'s generation flags and the few of its own it shares.
#[derive(Parser, Debug, Clone)]
#[command(name = "generate", no_binary_name = true, disable_help_flag = true, disable_version_flag = true, allow_negative_numbers = true)]
struct GenCall {
    #[command(flatten)]
    gen: GenArgs,
    #[arg(short = 'n', long = "n-predict")]
    n_predict: Option<usize>,
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    #[arg(long)]
    suffix: Option<String>,
    #[arg(long)]
    stop: Vec<String>,
    /// How masked positions are drawn in stream states.
    #[arg(long, default_value = "_")]
    mask: String,
}

/// A flag name as the Python caller wrote it: `--top-p` → `top_p`.
fn pythonic(msg: &str) -> String {
    let re = regex::Regex::new(r"--([a-z][a-z0-9-]*)").expect("a valid pattern");
    let line = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or(msg).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    re.replace_all(line, |c: &regex::Captures<'_>| c[1].replace('-', "_")).into_owned()
}

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(pythonic(&e.to_string()))
}

/// An error of the run (anyhow chain on one line), as ValueError: they name a bad input.
fn run_error(e: anyhow::Error) -> PyErr {
    PyValueError::new_err(pythonic(&format!("{e:#}").replace('\n', " ")))
}

/// A loaded model with its tokenizer.
#[pyclass(module = "dlm._dlm", name = "Model", frozen)]
struct Model {
    inner: Arc<Mutex<Loaded>>,
}

/// A finished generation as the wrapper receives it.
struct Out {
    text: String,
    tokens: Vec<u32>,
    prompt_tokens: Vec<u32>,
    steps: usize,
    seed: u64,
    stop: Option<String>,
    forward_ms: Vec<f64>,
}

impl Out {
    fn into_dict(self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let d = PyDict::new(py);
        d.set_item("text", self.text)?;
        d.set_item("tokens", self.tokens)?;
        d.set_item("prompt_tokens", self.prompt_tokens)?;
        d.set_item("steps", self.steps)?;
        d.set_item("seed", self.seed)?;
        d.set_item("stop", self.stop)?;
        d.set_item("forward_ms", self.forward_ms)?;
        Ok(d.unbind())
    }
}

fn lock(m: &Mutex<Loaded>) -> MutexGuard<'_, Loaded> {
    // A panic inside a pass is caught by PyO3 and leaves the model as the pass left it; the
    // next call may use it (its state is rebuilt per pass).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything one generation call needs, resolved as `dlm-run` resolves its flags.
struct Plan {
    prefixes: Vec<Vec<u32>>,
    suffix: Vec<u32>,
    params: GenParams,
    call: GenCall,
}

fn plan(l: &Loaded, prompts: &[String], args: &[String]) -> anyhow::Result<Plan> {
    let mut call = GenCall::try_parse_from(args).map_err(|e| anyhow::anyhow!("{}", e.to_string().lines().next().unwrap_or_default().to_string()))?;
    call.gen.check_flags()?;
    let suffix = l.suffix(call.suffix.as_deref().unwrap_or(""))?;
    let trained = l.n_ctx();
    let n_ctx = match call.ctx_size {
        None | Some(0) => trained,
        Some(c) => c,
    };
    let mut prefixes = Vec::with_capacity(prompts.len());
    for p in prompts {
        prefixes.push(l.prefix(p)?);
    }
    let longest = prefixes.iter().map(Vec::len).max().unwrap_or(0) + suffix.len();
    let n_predict = match call.n_predict {
        Some(n) => n,
        // Without n_predict, 128 or the room the context leaves, as dlm-run does.
        None if longest >= n_ctx => anyhow::bail!("the prompt ({longest} tokens) leaves no room to generate in a context of {n_ctx} tokens"),
        None => 128.min(n_ctx - longest),
    };
    for (i, prefix) in prefixes.iter().enumerate() {
        let len = prefix.len() + n_predict + suffix.len();
        if len > n_ctx {
            let which = if prompts.len() > 1 { format!("prompt {i}: ") } else { String::new() };
            anyhow::bail!("{which}prompt ({}) + n_predict ({n_predict}) + suffix ({}) = {len} tokens exceeds the context of {n_ctx} (--ctx-size raises it)", prefix.len(), suffix.len());
        }
    }
    call.gen.resolve(l.model.diffusion(), n_predict)?;
    let seed = call.gen.seed();
    let params = call.gen.params(l, n_predict, call.gen.steps, seed);
    Ok(Plan { prefixes, suffix, params, call })
}

/// The text of a finished generation for `prompt`, cut at a stop string.
fn finish(l: &Loaded, prompt: &str, prefix: &[u32], g: &Generation, p: &Plan) -> anyhow::Result<Out> {
    let tok = &l.tok;
    let render = |t: &[u32]| -> anyhow::Result<String> { Ok(if !prompt.is_empty() { canvas_text(tok, t, &vec![false; t.len()], "", true) } else { tok.decode(t)? }) };
    let (text, stop, kept) = cut_at_stop(&g.tokens, &p.call.stop, render)?;
    Ok(Out {
        text,
        tokens: g.tokens[..kept].to_vec(),
        prompt_tokens: prefix.to_vec(),
        steps: g.steps,
        seed: p.params.seed,
        stop: stop.map(str::to_owned),
        forward_ms: g.forward_seconds.iter().map(|s| s * 1e3).collect(),
    })
}

/// One prompt through `generate` (what `dlm-run -p` runs), `on_state` seeing each step's span;
/// it returns false to stop (a stream whose reader went away).
fn generate_one(l: &mut Loaded, prompt: &str, p: &Plan, mut on_state: impl FnMut(State) -> bool) -> anyhow::Result<Out> {
    let prefix = &p.prefixes[0];
    let span = prefix.len()..prefix.len() + p.params.n_gen;
    let unmasker = p.call.gen.unmasker();
    let (tok, stops, eos) = (l.tok.clone(), p.call.stop.clone(), p.params.eos);
    let mut checked = 0usize;
    let g = generate(&mut l.model, prefix, &p.suffix, &p.params, unmasker().as_mut(), |ev| {
        let Event::Step { step, canvas, masked, committed, .. } = ev;
        let (tokens, masks) = (&canvas[span.clone()], &masked[span.clone()]);
        let text = canvas_text(&tok, tokens, masks, &p.call.mask, !prompt.is_empty());
        if !on_state(State { step: step + 1, text, tokens: tokens.to_vec(), masked: masks.to_vec(), committed }) {
            return Flow::Stop;
        }
        // A stop string in the final prefix (committed, no mask before it, cut at EOS) ends
        // the generation early, as in dlm-run.
        if !stops.is_empty() {
            let mut fin = masks.iter().position(|&m| m).unwrap_or(masks.len());
            if let Some(e) = eos.and_then(|e| tokens[..fin].iter().position(|&t| t == e)) {
                fin = e;
            }
            if fin > checked {
                checked = fin;
                let shown = canvas_text(&tok, &tokens[..fin], &vec![false; fin], "", !prompt.is_empty());
                if find_stop(&shown, &stops).is_some() {
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    })?;
    finish(l, prompt, prefix, &g, p)
}

/// The canvas's generated span after one step.
struct State {
    step: usize,
    text: String,
    tokens: Vec<u32>,
    masked: Vec<bool>,
    committed: usize,
}

impl State {
    fn into_dict(self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let d = PyDict::new(py);
        d.set_item("step", self.step)?;
        d.set_item("text", self.text)?;
        d.set_item("tokens", self.tokens)?;
        d.set_item("masked", self.masked)?;
        d.set_item("committed", self.committed)?;
        Ok(d.unbind())
    }
}

/// The states of a generation running on a thread of its own, one per step.
#[pyclass(module = "dlm._dlm", name = "Stream")]
struct Stream {
    rx: Mutex<mpsc::Receiver<State>>,
    worker: Mutex<Option<std::thread::JoinHandle<anyhow::Result<Out>>>>,
    result: Mutex<Option<Py<PyDict>>>,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyDict>>> {
        let next = py.allow_threads(|| lock_any(&self.rx).recv().ok());
        match next {
            Some(s) => Ok(Some(s.into_dict(py)?)),
            None => {
                self.join(py)?;
                Ok(None)
            }
        }
    }

    /// The finished generation (after the last state; runs the rest of it first).
    fn result(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        while py.allow_threads(|| lock_any(&self.rx).recv().ok()).is_some() {}
        self.join(py)?;
        lock_any(&self.result).as_ref().map(|d| d.clone_ref(py)).ok_or_else(|| PyRuntimeError::new_err("the generation ended without a result"))
    }
}

impl Stream {
    fn join(&self, py: Python<'_>) -> PyResult<()> {
        let Some(h) = lock_any(&self.worker).take() else { return Ok(()) };
        let r = py.allow_threads(|| h.join());
        match r {
            Ok(Ok(out)) => {
                *lock_any(&self.result) = Some(out.into_dict(py)?);
                Ok(())
            }
            Ok(Err(e)) => Err(run_error(e)),
            Err(_) => Err(PyRuntimeError::new_err("internal error: the generation thread panicked (a bug in dlm; please report it)")),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Dropping the receiver makes the worker's next send fail, which stops it at the next
        // step; wait for it so the model is free again when this returns.
        if let Ok(rx) = self.rx.get_mut() {
            let (_, dead) = mpsc::sync_channel(0);
            drop(std::mem::replace(rx, dead));
        }
        if let Some(h) = self.worker.get_mut().ok().and_then(Option::take) {
            let _ = h.join();
        }
    }
}

fn lock_any<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[pymethods]
impl Model {
    #[new]
    fn new(py: Python<'_>, path: String, args: Vec<String>) -> PyResult<Self> {
        let mut argv = vec!["--model".to_string(), path];
        argv.extend(args);
        let a = LoadArgs::try_parse_from(&argv).map_err(value_error)?;
        if a.m.list_devices {
            return Err(PyValueError::new_err("list_devices: use dlm.list_devices()"));
        }
        let l = py.allow_threads(|| common::load(&a.m)).map_err(run_error)?;
        Ok(Model { inner: Arc::new(Mutex::new(l)) })
    }

    /// [{text, tokens, prompt_tokens, steps, seed, stop, forward_ms}] for each prompt: one
    /// prompt through dlm-run's single-prompt path, several batched (each equal to its own run).
    fn generate(&self, py: Python<'_>, prompts: Vec<String>, args: Vec<String>) -> PyResult<Vec<Py<PyDict>>> {
        let inner = self.inner.clone();
        let outs = py
            .allow_threads(move || -> anyhow::Result<Vec<Out>> {
                let mut l = lock(&inner);
                let p = plan(&l, &prompts, &args)?;
                if prompts.len() == 1 {
                    return Ok(vec![generate_one(&mut l, &prompts[0], &p, |_| true)?]);
                }
                let unmasker = p.call.gen.unmasker();
                let batch: Vec<(&[u32], &[u32])> = p.prefixes.iter().map(|x| (x.as_slice(), p.suffix.as_slice())).collect();
                let gens = generate_batch(&mut l.model, &batch, &p.params, &unmasker, |_| Flow::Continue)?;
                prompts.iter().zip(&p.prefixes).zip(&gens).map(|((pr, px), g)| finish(&l, pr, px, g, &p)).collect()
            })
            .map_err(run_error)?;
        outs.into_iter().map(|o| o.into_dict(py)).collect()
    }

    /// A stream of the canvas's states, one per step, for one prompt.
    fn stream(&self, py: Python<'_>, prompt: String, args: Vec<String>) -> PyResult<Stream> {
        let inner = self.inner.clone();
        // The flags are checked here, so a bad one raises at the call, not at the first state.
        py.allow_threads(|| plan(&lock(&inner), std::slice::from_ref(&prompt), &args).map(drop)).map_err(run_error)?;
        let (tx, rx) = mpsc::sync_channel(2);
        let worker = std::thread::Builder::new()
            .name("dlm-stream".into())
            .spawn(move || {
                let mut l = lock(&inner);
                let p = plan(&l, std::slice::from_ref(&prompt), &args)?;
                generate_one(&mut l, &prompt, &p, |s| tx.send(s).is_ok())
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the generation thread: {e}")))?;
        Ok(Stream { rx: Mutex::new(rx), worker: Mutex::new(Some(worker)), result: Mutex::new(None) })
    }

    /// Token ids of `text`; with `bos`, the prompt's layout (BOS first, as generation uses).
    fn tokenize(&self, py: Python<'_>, text: String, bos: bool) -> PyResult<Vec<u32>> {
        let inner = self.inner.clone();
        py.allow_threads(move || {
            let l = lock(&inner);
            if bos {
                l.tok.prompt_ids(&text)
            } else {
                l.tok.suffix_ids(&text)
            }
        })
        .map_err(value_error)
    }

    fn detokenize(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<String> {
        let inner = self.inner.clone();
        py.allow_threads(move || {
            let l = lock(&inner);
            let n = l.model.params().n_vocab;
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= n) {
                return Err(dlm::Error::Invalid(format!("token id {bad} is outside the {n}-token vocabulary")));
            }
            l.tok.decode(&ids)
        })
        .map_err(value_error)
    }

    /// Logits of every position of `tokens` (one full bidirectional pass): float32 bytes,
    /// row-major, `len(tokens) × n_vocab`.
    fn logits<'py>(&self, py: Python<'py>, tokens: Vec<u32>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.inner.clone();
        let v = py.allow_threads(move || lock(&inner).model.forward(&tokens)).map_err(value_error)?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok(PyBytes::new(py, &bytes))
    }

    /// The paper's `eval_forward` score and the ELBO bound of `continuation` after `context`,
    /// as `dlm-score likelihood` computes them.
    #[pyo3(signature = (context, continuation, suffix, levels, draws, seed))]
    fn likelihood(&self, py: Python<'_>, context: String, continuation: String, suffix: String, levels: usize, draws: usize, seed: u64) -> PyResult<Py<PyDict>> {
        let inner = self.inner.clone();
        let r = py
            .allow_threads(move || -> anyhow::Result<dlm::score::Likelihood> {
                let mut l = lock(&inner);
                let p = score_params(&l, levels, draws, seed)?;
                let (ctx, cont) = l.tok.split_continuation(&context, &continuation)?;
                if cont.is_empty() {
                    anyhow::bail!("continuation is empty: nothing to score");
                }
                let suffix = l.suffix(&suffix)?;
                let target = dlm::score::Target::new(&ctx, &cont, &suffix);
                check_len(&l, target.tokens.len())?;
                let (r, _) = dlm::score::likelihoods(&mut l.model, &[target], &[dlm::score::item_seed(p.seed, 0)], &p)?;
                Ok(r.into_iter().next().expect("one target, one likelihood"))
            })
            .map_err(run_error)?;
        likelihood_dict(py, &r)
    }

    /// Scores each of `choices` after `context` (lower is more likely) and picks the lowest,
    /// as `dlm-score choice` does for one item.
    #[pyo3(signature = (context, choices, suffix, levels, draws, seed))]
    fn choose(&self, py: Python<'_>, context: String, choices: Vec<String>, suffix: String, levels: usize, draws: usize, seed: u64) -> PyResult<(usize, Vec<Py<PyDict>>)> {
        let inner = self.inner.clone();
        let c = py
            .allow_threads(move || -> anyhow::Result<dlm::score::Choice> {
                let mut l = lock(&inner);
                let p = score_params(&l, levels, draws, seed)?;
                if choices.is_empty() {
                    anyhow::bail!("choices is empty: nothing to choose from");
                }
                let mut ctx_ids = None;
                let mut conts = Vec::new();
                for (i, ch) in choices.iter().enumerate() {
                    let (ctx, cont) = l.tok.split_continuation(&context, ch)?;
                    if cont.is_empty() {
                        anyhow::bail!("choice {i} is empty: nothing to score");
                    }
                    if ctx_ids.as_ref().is_some_and(|c: &Vec<u32>| *c != ctx) {
                        anyhow::bail!("choice {i} changes how the context tokenizes: give the context without a trailing space");
                    }
                    ctx_ids = Some(ctx);
                    conts.push(cont);
                }
                let suffix = l.suffix(&suffix)?;
                let item = dlm::score::Item { context: ctx_ids.unwrap_or_default(), choices: conts, suffix, label: 0 };
                for c in &item.choices {
                    check_len(&l, item.context.len() + c.len() + item.suffix.len())?;
                }
                let (mut r, _) = dlm::score::choose(&mut l.model, &[item], &[0], &p)?;
                Ok(r.remove(0))
            })
            .map_err(run_error)?;
        let scores = c.scores.iter().map(|s| likelihood_dict(py, s)).collect::<PyResult<Vec<_>>>()?;
        Ok((c.pred, scores))
    }

    /// The likelihood of each (context, continuation) pair, pair i masked with the seed of item
    /// `ids[i]` as `dlm-score choice` seeds the choices of the item on line `ids[i] + 1` (pairs of
    /// one item share it), scored in batched passes (a pair scores the same in any company).
    #[pyo3(signature = (pairs, ids, levels, draws, seed))]
    fn likelihoods(&self, py: Python<'_>, pairs: Vec<(String, String)>, ids: Vec<u64>, levels: usize, draws: usize, seed: u64) -> PyResult<Vec<Py<PyDict>>> {
        if pairs.len() != ids.len() {
            return Err(PyValueError::new_err(format!("{} pairs but {} ids", pairs.len(), ids.len())));
        }
        let inner = self.inner.clone();
        let rs = py
            .allow_threads(move || -> anyhow::Result<Vec<dlm::score::Likelihood>> {
                let mut l = lock(&inner);
                let p = score_params(&l, levels, draws, seed)?;
                let mut targets = Vec::with_capacity(pairs.len());
                for (i, (context, continuation)) in pairs.iter().enumerate() {
                    let (ctx, cont) = l.tok.split_continuation(context, continuation)?;
                    if cont.is_empty() {
                        anyhow::bail!("pair {i}: the continuation is empty: nothing to score");
                    }
                    let t = dlm::score::Target::new(&ctx, &cont, &[]);
                    check_len(&l, t.tokens.len())?;
                    targets.push(t);
                }
                let seeds: Vec<u64> = ids.iter().map(|&id| dlm::score::item_seed(p.seed, id)).collect();
                Ok(dlm::score::likelihoods(&mut l.model, &targets, &seeds, &p)?.0)
            })
            .map_err(run_error)?;
        rs.iter().map(|r| likelihood_dict(py, r)).collect()
    }

    /// The ELBO bound on the negative log-likelihood of all of `text` in nats (and its token
    /// count): the tokens in windows of the model's context (BOS + up to n_ctx − 1 tokens), every
    /// token scored once.
    #[pyo3(signature = (text, levels, draws, seed))]
    fn rolling(&self, py: Python<'_>, text: String, levels: usize, draws: usize, seed: u64) -> PyResult<(f64, usize)> {
        let inner = self.inner.clone();
        py.allow_threads(move || -> anyhow::Result<(f64, usize)> {
            let mut l = lock(&inner);
            let p = score_params(&l, levels, draws, seed)?;
            let tokens = l.tok.suffix_ids(&text)?;
            if tokens.is_empty() {
                return Ok((0.0, 0));
            }
            let ctx = l.n_ctx().max(2);
            let step = if l.tok.bos.is_some() { ctx - 1 } else { ctx };
            let windows: Vec<dlm::score::Target> = tokens.chunks(step).map(|c| dlm::score::Target::new(l.tok.bos.as_slice(), c, &[])).collect();
            let seeds: Vec<u64> = (0..windows.len() as u64).map(|i| dlm::score::item_seed(p.seed, i)).collect();
            let (rs, _) = dlm::score::likelihoods(&mut l.model, &windows, &seeds, &p)?;
            Ok((rs.iter().map(|r| r.elbo * r.n_scored as f64).sum(), tokens.len()))
        })
        .map_err(run_error)
    }

    /// The base file of the KL workflow (`dlm-score perplexity -f TEXT --kl-divergence-base
    /// PATH`): `text` in windows of `ctx` tokens scored by this model, every masked row's
    /// distribution kept at `path`. Returns the summary as JSON (elbo bound, score, windows).
    #[pyo3(signature = (text, path, ctx, levels, draws, seed))]
    fn kl_base(&self, py: Python<'_>, text: String, path: std::path::PathBuf, ctx: Option<usize>, levels: usize, draws: usize, seed: u64) -> PyResult<String> {
        let inner = self.inner.clone();
        py.allow_threads(move || -> anyhow::Result<String> {
            let mut l = lock(&inner);
            let p = score_params(&l, levels, draws, seed)?;
            let ctx = ctx.unwrap_or(l.n_ctx().min(512));
            if ctx < 2 || ctx > l.n_ctx() {
                anyhow::bail!("ctx must be from 2 to the model's context of {}, got {ctx}", l.n_ctx());
            }
            dlm::score::check_destination(&path).map_err(|e| anyhow::anyhow!("path: {e}"))?;
            let mut tokens = l.tok.encode(&text)?;
            if l.tok.add_bos && l.tok.bos.is_some() && tokens.first() == l.tok.bos.as_ref() {
                tokens.remove(0);
            }
            let wins = dlm::score::windows(&tokens, l.tok.bos, ctx)?;
            let name = l.path.display().to_string();
            let (res, _) = dlm::score::kld_save(&mut l.model, &wins, &p, &name, &path, |_, _| {})?;
            let weights: Vec<usize> = wins.iter().map(|w| w.n_scored()).collect();
            let elbos: Vec<f64> = res.iter().map(|r| r.elbo).collect();
            let scores: Vec<f64> = res.iter().map(|r| r.score).collect();
            let (elbo, elbo_se) = dlm::score::weighted_mean_se(&elbos, &weights);
            let (score, score_se) = dlm::score::mean_se(&scores);
            Ok(serde_json::json!({"windows": wins.len(), "elbo": elbo, "elbo_se": elbo_se, "score": score, "score_se": score_se}).to_string())
        })
        .map_err(run_error)
    }

    /// This model against a base file written by `kl_base` or `dlm-score`: KL divergence
    /// statistics as `dlm-score perplexity --kl-divergence` reports them, as JSON.
    fn kl(&self, py: Python<'_>, base: std::path::PathBuf) -> PyResult<String> {
        let inner = self.inner.clone();
        py.allow_threads(move || -> anyhow::Result<String> {
            let mut l = lock(&inner);
            let mut b = dlm::score::KldBase::open(&base)?;
            if b.header.mask_id != l.mask_id || b.header.shift != l.shift {
                anyhow::bail!("{}: the base was scored with mask id {} and shift {}, this model resolves mask id {} and shift {} (mask_id= / shift=)", base.display(), b.header.mask_id, b.header.shift, l.mask_id, l.shift);
            }
            if let Some(t) = b.header.windows.iter().map(|w| w.tokens.len()).max().filter(|&n| n > l.n_ctx()) {
                anyhow::bail!("{}: windows of {t} tokens exceed this model's context of {}", base.display(), l.n_ctx());
            }
            let limits = score_params(&l, 8, 1, 0)?;
            let (stats, _) = dlm::score::kld_compare(&mut l.model, &mut b, &limits, |_| {})?;
            Ok(serde_json::to_string(&stats)?)
        })
        .map_err(run_error)
    }

    /// What the model is: architecture, sizes, diffusion facts, backend.
    fn info(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let inner = self.inner.clone();
        let (p, mask_id, shift, backend, path) = py.allow_threads(move || {
            let l = lock(&inner);
            (l.model.params().clone(), l.mask_id, l.shift, l.model.backend_description(), l.path.display().to_string())
        });
        let d = PyDict::new(py);
        d.set_item("architecture", p.arch.clone())?;
        d.set_item("n_vocab", p.n_vocab)?;
        d.set_item("n_ctx_train", p.n_ctx_train)?;
        d.set_item("n_embd", p.n_embd)?;
        d.set_item("n_layer", p.n_layer)?;
        d.set_item("mask_id", mask_id)?;
        d.set_item("shift_logits", shift)?;
        d.set_item("backend", backend)?;
        d.set_item("path", path)?;
        Ok(d.unbind())
    }
}

fn score_params(l: &Loaded, levels: usize, draws: usize, seed: u64) -> anyhow::Result<dlm::score::ScoreParams> {
    if !(1..=1024).contains(&levels) {
        anyhow::bail!("levels must be from 1 to 1024, got {levels}");
    }
    if !(1..=1024).contains(&draws) {
        anyhow::bail!("draws must be from 1 to 1024, got {draws}");
    }
    if levels * draws > 65536 {
        anyhow::bail!("levels × draws is {}: at most 65536 masked copies per sequence", levels * draws);
    }
    Ok(dlm::score::ScoreParams { levels, draws, seed, mask_id: l.mask_id, shift: l.shift, ..Default::default() })
}

fn check_len(l: &Loaded, n: usize) -> anyhow::Result<()> {
    let max = l.n_ctx();
    if n > max {
        anyhow::bail!("context + continuation + suffix is {n} tokens, more than the model's context of {max}");
    }
    Ok(())
}

fn likelihood_dict(py: Python<'_>, r: &dlm::score::Likelihood) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item("score", r.score)?;
    d.set_item("score_se", r.score_se)?;
    d.set_item("elbo", r.elbo)?;
    d.set_item("elbo_se", r.elbo_se)?;
    d.set_item("n_scored", r.n_scored)?;
    Ok(d.unbind())
}

/// This build's version and the linked ggml's.
#[pyfunction]
fn version() -> String {
    format!("dlm {} (ggml {})", env!("CARGO_PKG_VERSION"), dlm::backend::ggml::version())
}

#[pymodule]
fn _dlm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Stream>()?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    Ok(())
}
