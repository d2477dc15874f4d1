//! `dlm-run`: generate text with a diffusion language model by parallel unmasking.
//! stdout carries the generated text only; everything else goes to stderr.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Parser;
use common::{steady_ms, GenArgs, ModelArgs};
use dlm::generate::{generate, generate_batch, Cache, Event, Flow, Forward, GenParams, Generation, Pass};
use dlm::sample::Unmasker;
use dlm::{Model, Tokenizer};

mod common;

/// Generate text with a diffusion language model (DiffuLLaMA) from a GGUF file.
///
/// The canvas is BOS + prompt + N mask tokens (+ suffix); each step runs the whole sequence
/// through the model and commits some masked positions, until none are left.
#[derive(Parser, Debug)]
#[command(name = "dlm-run", version, allow_negative_numbers = true, arg_required_else_help = true, after_help = "Example:\n  dlm-run -m diffullama-q4.gguf -p \"Today is a wonderful day,\" -n 128")]
struct Args {
    #[command(flatten)]
    m: ModelArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// Prompt [default: standard input when it is a pipe or a file, else empty: unconditional
    /// generation]
    #[arg(short, long)]
    prompt: Option<String>,
    /// Read the prompt from FILE, all of it (one trailing newline dropped), as llama.cpp's -f
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with = "prompt")]
    file: Option<PathBuf>,
    /// A batch of prompts, one per line (blank lines skipped; `-` reads standard input),
    /// denoised together in batches of --batch-size: each step runs the whole batch through
    /// the model at once
    #[arg(long, value_name = "PROMPTS.txt", conflicts_with_all = ["prompt", "file"])]
    prompts: Option<PathBuf>,
    /// Sequences per batch with --prompts
    #[arg(short = 'b', long, default_value_t = 8)]
    batch_size: usize,
    /// Turn \n, \t, \r, \\, \", \' in -p and --suffix into the characters they name
    /// (llama.cpp's -e)
    #[arg(short = 'e', long)]
    escape: bool,
    /// Tokens to generate
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    /// Text after the generated span: the model infills between prompt and suffix
    #[arg(long)]
    suffix: Option<String>,
    /// Redraw the canvas on stderr as positions unmask (masked positions dimmed)
    #[arg(long)]
    visual: bool,
    /// Print one JSON object (text, token ids, steps, timings) instead of plain text
    #[arg(long)]
    json: bool,
    /// Write the first step's logits for every position as float32 .npy [seq_len, vocab]
    #[arg(long, value_name = "PATH.npy")]
    dump_logits: Option<PathBuf>,
}

/// Wraps the model to keep the first forward pass's logits for --dump-logits.
struct Recording<'m> {
    model: &'m mut Model,
    first: Option<(usize, Vec<f32>)>,
    keep: bool,
}

impl Forward for Recording<'_> {
    fn forward(&mut self, tokens: &[u32]) -> dlm::Result<Vec<f32>> {
        let logits = self.model.forward(tokens)?;
        if self.keep && self.first.is_none() {
            self.first = Some((tokens.len(), logits.clone()));
        }
        Ok(logits)
    }
    fn n_vocab(&self) -> usize {
        self.model.params().n_vocab
    }
    fn forward_rows(&mut self, tokens: &[u32], pass: Pass, rows: Option<&[usize]>) -> dlm::Result<Vec<f32>> {
        if !(self.keep && self.first.is_none()) {
            return self.model.forward_rows(tokens, pass, rows);
        }
        // The first pass, whatever the sampler needs, computes every row once for the dump
        // (and fills the cache when asked to).
        let all = self.model.forward_rows(tokens, pass, None)?;
        self.first = Some((tokens.len(), all.clone()));
        let v = self.n_vocab();
        Ok(match rows {
            Some(rows) => rows.iter().flat_map(|&r| all[r * v..(r + 1) * v].iter().copied()).collect(),
            None => all,
        })
    }
}

/// A float32 .npy file, complete or not at all (through a temporary file renamed at the end).
fn write_npy(path: &Path, rows: usize, cols: usize, data: &[f32]) -> anyhow::Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    let mut f = dlm::atomic::AtomicFile::create(path).context("--dump-logits")?;
    f.write_all(&out).context("--dump-logits")?;
    f.finish().context("--dump-logits")
}

fn check_args(a: &Args) -> anyhow::Result<()> {
    if a.n_predict == 0 {
        bail!("-n must be at least 1");
    }
    a.gen.check()?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if a.prompts.is_some() && (a.visual || a.dump_logits.is_some()) {
        bail!("--prompts cannot be combined with --visual or --dump-logits (they show one canvas)");
    }
    if a.json && a.visual {
        bail!("--json and --visual cannot be combined (both describe the run)");
    }
    Ok(())
}

fn run(a: Args) -> anyhow::Result<()> {
    if a.m.list_devices {
        common::list_devices()?;
        return Ok(());
    }
    check_args(&a)?;
    if let (Some(out), Some(model)) = (&a.dump_logits, &a.m.model) {
        let inputs: Vec<PathBuf> = [Some(model), a.file.as_ref(), a.prompts.as_ref()].into_iter().flatten().cloned().collect();
        dlm::atomic::check_output(out, &inputs).context("--dump-logits")?;
    }
    let mut l = common::load(&a.m)?;
    let load_s = l.load_s;
    let esc = |t: &str| if a.escape { unescape(t) } else { t.to_owned() };
    let suffix = l.suffix(&esc(a.suffix.as_deref().unwrap_or("")))?;
    let prompts: Vec<String> = match (&a.prompts, &a.file, &a.prompt) {
        (Some(path), _, _) => {
            let text = common::read_text(path, "prompts", true)?;
            let lines: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_owned()).filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                let at = if path == Path::new("-") { "standard input".into() } else { path.display().to_string() };
                bail!("{at}: no prompts (expected one per line)");
            }
            lines
        }
        (None, Some(path), _) => vec![strip_newline(common::read_text(path, "the prompt", true)?)],
        (None, None, Some(p)) => vec![esc(p)],
        (None, None, None) if !std::io::stdin().is_terminal() => vec![strip_newline(common::read_text(Path::new("-"), "the prompt", true)?)],
        (None, None, None) => vec![String::new()],
    };
    for (i, prompt) in prompts.iter().enumerate() {
        let ids = l.tok.encode(prompt)?;
        let special: Vec<u32> = [l.tok.bos, l.tok.eos].into_iter().flatten().collect();
        if ids.iter().skip(usize::from(l.tok.add_bos)).any(|t| special.contains(t)) {
            let which = if prompts.len() > 1 { format!("prompt {}", i + 1) } else { "the prompt".into() };
            dlm::errln!("warning: {which} contains the text of a special token (such as <s> or </s>), tokenized as BOS/EOS itself");
        }
    }
    let n_ctx = l.n_ctx();
    let mut prefixes = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let prefix = l.prefix(prompt)?;
        let len = prefix.len().saturating_add(a.n_predict).saturating_add(suffix.len());
        if len > n_ctx {
            let which = a.prompts.as_ref().map_or(String::new(), |f| format!("{} prompt {}: ", f.display(), i + 1));
            bail!("{which}prompt ({}) + -n ({}) + suffix ({}) = {len} tokens exceeds the model's context of {n_ctx}", prefix.len(), a.n_predict, suffix.len());
        }
        prefixes.push(prefix);
    }
    let seed = a.gen.seed();
    if a.gen.seed.is_none() && !a.json {
        dlm::errln!("seed: {seed}");
    }
    let params = a.gen.params(&l, a.n_predict, a.gen.steps, seed);
    let unmasker = a.gen.unmasker();
    let (model, tok) = (&mut l.model, &l.tok);
    if a.prompts.is_some() {
        return run_many(&a, model, tok, &prompts, &prefixes, &suffix, &params, &unmasker, load_s, seed);
    }

    let prefix = &prefixes[0];
    let mut rec = Recording { model: &mut *model, first: None, keep: a.dump_logits.is_some() };
    let start = prefix.len();
    let gen = generate(&mut rec, prefix, &suffix, &params, unmasker().as_mut(), |ev| {
        let Event::Step { step, canvas, masked, .. } = ev;
        if a.visual {
            let shown: String = (start..start + a.n_predict)
                .map(|i| if masked[i] { "\x1b[2m_\x1b[0m".to_string() } else { tok.decode(&canvas[i..i + 1]).unwrap_or_default() })
                .collect();
            let left = masked.iter().filter(|&&m| m).count();
            dlm::errp!("\x1b[2J\x1b[H[step {:>3}, {left} masked]\n{}{shown}\n", step + 1, prompts[0]);
        }
        Flow::Continue
    })?;
    if let (Some(path), Some((rows, logits))) = (&a.dump_logits, &rec.first) {
        write_npy(path, *rows, logits.len() / rows, logits)?;
    }

    let text = tok.decode(&gen.tokens)?;
    let total: f64 = gen.forward_seconds.iter().sum();
    let ms_per_step = steady_ms(&gen.forward_seconds);
    let tps = gen.tokens.len() as f64 / total.max(1e-9);
    if a.json {
        let obj = serde_json::json!({
            "text": text, "tokens": gen.tokens, "prompt_tokens": prefix, "steps": gen.steps, "seed": seed,
            "backend": model.backend_description(), "load_ms": load_s * 1e3, "ms_per_step": ms_per_step, "tokens_per_second": tps,
            "forward_ms": gen.forward_seconds.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
        });
        dlm::outln!("{obj}")?;
    } else {
        dlm::outln!("{text}")?;
        dlm::errln!(
            "{} | load {:.0} ms | {} steps, {ms_per_step:.1} ms/step (from step 2) | {} tokens in {total:.2} s, {tps:.1} tokens/s",
            model.backend_description(),
            load_s * 1e3,
            gen.steps,
            gen.tokens.len(),
        );
    }
    Ok(())
}

/// `--prompts`: every prompt, in batches (or one by one with a cache), each completion printed in
/// order: a `--- N ---` line before each in text mode, one JSON object per line with `--json`.
#[allow(clippy::too_many_arguments)]
fn run_many(
    a: &Args,
    model: &mut Model,
    tok: &Tokenizer,
    prompts: &[String],
    prefixes: &[Vec<u32>],
    suffix: &[u32],
    params: &GenParams,
    unmasker: &dyn Fn() -> Box<dyn Unmasker>,
    load_s: f64,
    seed: u64,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut pass_seconds: Vec<f64> = Vec::new();
    let mut n_tokens = 0usize;
    // Each completion is printed as soon as its sequence is done (in the order they finish;
    // every one carries its index), so an interrupted batch keeps what it finished.
    let mut print = |i: usize, g: &Generation| -> anyhow::Result<()> {
        n_tokens += g.tokens.len();
        let text = tok.decode(&g.tokens)?;
        if a.json {
            let obj = serde_json::json!({
                "index": i, "prompt": prompts[i], "text": text, "tokens": g.tokens, "prompt_tokens": prefixes[i],
                "steps": g.steps, "seed": seed,
            });
            dlm::outln!("{obj}")
        } else {
            dlm::outln!("--- {} ---\n{text}", i + 1)
        }
    };
    let batch_size = batch_limit(a.batch_size, model.params(), prefixes.iter().map(|p| p.len() + params.n_gen + suffix.len()).max().unwrap_or(1));
    if params.cache != Cache::None {
        dlm::errln!("note: a key/value cache belongs to one sequence; the {} prompts run one after another", prefixes.len());
        for (i, prefix) in prefixes.iter().enumerate() {
            let g = generate(model, prefix, suffix, params, unmasker().as_mut(), |_| Flow::Continue)?;
            pass_seconds.extend(&g.forward_seconds);
            print(i, &g)?;
        }
    } else {
        for (c, chunk) in prefixes.chunks(batch_size).enumerate() {
            let batch: Vec<(&[u32], &[u32])> = chunk.iter().map(|p| (p.as_slice(), suffix)).collect();
            let mut failed = None;
            generate_batch(model, &batch, params, unmasker, |s| {
                pass_seconds.push(s.forward_seconds);
                for (k, g) in &s.finished {
                    if let Err(e) = print(c * batch_size + k, g) {
                        failed = Some(e);
                        return Flow::Stop;
                    }
                }
                Flow::Continue
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }
    let total = t0.elapsed().as_secs_f64();
    let tps = n_tokens as f64 / total.max(1e-9);
    let batches = if params.cache == Cache::None { prefixes.len().div_ceil(batch_size) } else { prefixes.len() };
    dlm::errln!(
        "{} | load {:.0} ms | {} prompts in {batches} batch(es): {} passes, {:.1} ms/pass (from pass 2) | {n_tokens} tokens in {total:.2} s, {tps:.1} tokens/s",
        model.backend_description(),
        load_s * 1e3,
        prefixes.len(),
        pass_seconds.len(),
        steady_ms(&pass_seconds),
    );
    Ok(())
}

/// Activation memory one pass of a batch may take.
const BATCH_MEMORY: f64 = 4.0 * (1u64 << 30) as f64;

/// `-b` lowered (with a note) so that one pass of sequences of `seq_len` tokens stays within
/// [`BATCH_MEMORY`] of activations: per token about 8 vectors of the embedding width, 3 of the
/// feed-forward width and, for the rows the LM head reads, a vocabulary of logits.
fn batch_limit(asked: usize, p: &dlm::model::LlamaParams, seq_len: usize) -> usize {
    let per_token = 4.0 * (8 * p.n_embd + 3 * p.n_ff + p.n_vocab) as f64;
    let fit = ((BATCH_MEMORY / (per_token * seq_len.max(1) as f64)) as usize).max(1);
    if asked > fit {
        dlm::errln!(
            "note: -b {asked} lowered to {fit}: a pass over {asked} sequences of {seq_len} tokens would need about {:.1} GiB of activations (limit {:.0} GiB)",
            per_token * seq_len as f64 * asked as f64 / (1u64 << 30) as f64,
            BATCH_MEMORY / (1u64 << 30) as f64
        );
        return fit;
    }
    asked
}

/// One trailing newline (LF or CRLF) dropped, as llama.cpp does with -f.
fn strip_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

/// llama.cpp's -e escapes: \n \t \r \\ \" \'; any other backslash stays as it is.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.peek().copied() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('\'') => out.push('\''),
            _ => {
                out.push('\\');
                continue;
            }
        }
        it.next();
    }
    out
}

fn main() -> ExitCode {
    dlm::cli::install();
    let args = Args::parse_from(common::init());
    dlm::cli::exit(run(args))
}
