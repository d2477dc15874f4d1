//! `dlm-run`: generate text with a diffusion language model by parallel unmasking.
//! stdout carries the text (the prompt echoed, then the generation, as llama.cpp prints it);
//! everything else goes to stderr.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{FromArgMatches, Parser, ValueEnum};
use common::{canvas_text, cut_at_stop, find_stop, steady_ms, CacheArg, GenArgs, Loaded, ModelArgs, BATCH_MEMORY};
use dlm::sample::UnmaskRule;
use dlm::generate::{generate, generate_batch, Event, Flow, Forward, GenParams, Generation, Pass};
use dlm::sample::Unmasker;
use dlm::{Model, Tokenizer};

#[path = "../../server/src/chat.rs"]
#[allow(dead_code)]
mod chat;
mod common;

/// Generate text with a diffusion language model (DiffuLLaMA, LLaDA, Dream, DiffuGPT) from a GGUF file.
///
/// The canvas is BOS + prompt + N mask tokens (+ suffix); each step runs the whole sequence
/// through the model and commits some masked positions, until none are left.
#[derive(Parser, Debug)]
#[command(name = "dlm-run", version, allow_negative_numbers = true, after_help = "Example:\n  dlm-run -m diffullama-q4.gguf -p \"Today is a wonderful day,\" -n 128")]
struct Args {
    #[command(flatten)]
    m: ModelArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// Prompt [default: standard input when it is a pipe or a file, else empty: unconditional
    /// generation]; --in-prefix is llama.cpp's infill name for it
    #[arg(short, long, visible_alias = "in-prefix")]
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
    /// Tokens to generate [default: 128, or the room the context leaves after the prompt when
    /// that is less]
    #[arg(short = 'n', long = "n-predict", default_value_t = 128, hide_default_value = true)]
    n_predict: usize,
    /// Text after the generated span: the model infills between prompt and suffix
    /// (llama.cpp's infill name: --in-suffix)
    #[arg(long, visible_alias = "in-suffix")]
    suffix: Option<String>,
    /// Redraw the canvas on stderr as positions unmask (masked positions dimmed)
    #[arg(long, visible_alias = "diffusion-visual")]
    visual: bool,
    /// Print one JSON object (text, token ids, steps, timings) instead of plain text
    #[arg(long)]
    json: bool,
    /// Print only the generated text. Without it the prompt is printed first (and an infill's
    /// suffix after), as llama.cpp does
    #[arg(long)]
    no_display_prompt: bool,
    /// Color the echoed prompt and suffix apart from the generated text (llama.cpp's --color);
    /// `auto`: when standard output is a terminal
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto", num_args = 0..=1, default_missing_value = "on")]
    color: ColorArg,
    /// End the text at the first STRING once everything before it is final (committed, with no
    /// mask before it): generation stops there and the output ends before STRING. Repeatable
    #[arg(long = "stop", value_name = "STRING")]
    stop: Vec<String>,
    /// Longest canvas in tokens (BOS + prompt + -n + suffix), llama.cpp's -c; 0: the model's
    /// trained context [default: 0]. Longer than the trained context runs, with a warning
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    ctx_size: Option<usize>,
    /// Print the prompt's (and suffix's) tokens on stderr before generating
    #[arg(long)]
    verbose_prompt: bool,
    /// More on stderr: the settings in effect and one line per step
    #[arg(short = 'v', long, conflicts_with = "log_disable")]
    verbose: bool,
    /// Nothing on stderr but an error
    #[arg(long)]
    log_disable: bool,
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), then exit
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<clap_complete::Shell>,
    /// Print what the file holds and what dlm-run will do with it (architecture, sizes, tensor
    /// types, tokenizer, chat template, diffusion settings and where each came from), then exit.
    /// Loads no weights
    #[arg(long, conflicts_with_all = ["tokenize", "detokenize"])]
    info: bool,
    /// Print the token ids of the prompt (-p, -f or standard input), one `id 'piece'` per line
    /// (with --json: one array), then exit
    #[arg(long, conflicts_with = "detokenize")]
    tokenize: bool,
    /// Print the text of the token ids given as the prompt (numbers separated by spaces or
    /// commas), then exit
    #[arg(long)]
    detokenize: bool,
    /// Write the first step's logits for every position as float32 .npy [seq_len, vocab]
    /// (with --prune-eos or --mask-window, of the positions that pass computed)
    #[arg(long, value_name = "PATH.npy")]
    dump_logits: Option<PathBuf>,
    /// Chat (also -cnv, as llama-cli): read a message per line from standard input, answer it
    /// through the model's chat template with the conversation so far, until /exit or end of
    /// input. Ctrl-C ends the answer being generated, not the program (at the prompt it exits).
    /// A line ending in \ continues on the next. -n is the length of each answer
    #[arg(long, conflicts_with_all = ["prompts", "file", "suffix", "json", "dump_logits", "tokenize", "detokenize", "info", "stop"])]
    conversation: bool,
    /// With --conversation: the system message the conversation starts with (also -sys)
    #[arg(long, value_name = "TEXT", requires = "conversation")]
    system_prompt: Option<String>,
    /// With --conversation: a Jinja chat template file instead of the GGUF's
    /// tokenizer.chat_template
    #[arg(long, value_name = "FILE", requires = "conversation")]
    chat_template: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ColorArg {
    On,
    Off,
    Auto,
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
    fn free_cache(&mut self, cache: dlm::generate::CacheId) {
        self.model.free_cache(cache)
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
    a.m.path()?;
    if a.n_predict == 0 {
        bail!("-n must be at least 1");
    }
    a.gen.check_flags()?;
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

/// Flags given on the command line (not defaulted), for warnings about flags that do nothing.
struct Given {
    batch_size: bool,
    threshold: bool,
    n_predict: bool,
}

/// One line each for flags that do nothing in this run, or do something users do not expect.
fn warn_flags(a: &Args, given: &Given, l: &Loaded) {
    let rule = common::flag_value(&a.gen.unmask);
    if given.threshold && a.gen.unmask != UnmaskRule::Threshold {
        dlm::errln!("warning: --threshold applies only to --unmask threshold; this run uses --unmask {rule}");
    }
    if given.batch_size && a.prompts.is_none() {
        dlm::errln!("warning: -b/--batch-size applies only to a batch of prompts (--prompts); this run has one prompt");
    }
    if a.gen.cache != CacheArg::None && a.gen.block_length.is_none() {
        dlm::errln!("note: --cache without --block-length: the whole span is one block, so only the prompt's keys/values are reused between steps");
    }
    if let Some(b) = a.gen.block_length.filter(|&b| b > 0 && a.gen.steps < a.n_predict.div_ceil(b)) {
        let blocks = a.n_predict.div_ceil(b);
        let default = if a.gen.steps_flag.is_none() { " (the default)" } else { "" };
        dlm::errln!("note: --steps {}{default} is fewer than the {blocks} blocks of {b} in -n {}: each block the run reaches takes a pass all the same (up to {blocks} passes)", a.gen.steps, a.n_predict);
    }
    let gpu_flags = a.m.device.is_some() || a.m.n_gpu_layers.is_some_and(|n| n > 0);
    if gpu_flags && l.model.backend_description().starts_with("cpu") {
        dlm::errln!("warning: --device and -ngl have no effect: the model runs on the CPU backend (--list-devices shows the GPUs this build can use)");
    }
    if a.gen.temp == 0.0 && a.gen.unmask == UnmaskRule::Origin {
        dlm::errln!("note: --temp 0 makes each token greedy, but --unmask origin still picks which positions to commit at random (reproducible with --seed)");
    }
}

/// Why a run took fewer passes than --steps, for the stats line.
fn fewer_steps_reason(a: &Args, taken: usize, stopped: Option<&str>) -> String {
    if taken >= a.gen.steps {
        return String::new();
    }
    if let Some(s) = stopped {
        return format!(" ({taken} of --steps {}: --stop {s:?} was found in the final text)", a.gen.steps);
    }
    let why = match a.gen.unmask {
        UnmaskRule::Origin => "steps that commit nothing run no forward pass".to_string(),
        UnmaskRule::Threshold => format!("--unmask threshold commits every position above {} at once", a.gen.threshold),
        _ if a.n_predict < a.gen.steps => format!("only {} positions to commit", a.n_predict),
        _ => "a committed EOS ends the text, and what follows it, early".to_string(),
    };
    format!(" ({taken} of --steps {}: {why})", a.gen.steps)
}

/// `--visual`: the canvas redrawn after each step. On a terminal it is redrawn in place (never
/// taller than the terminal: the end of the text is kept) with masked positions dimmed; into a
/// file or pipe each step is one plain line, without escape codes.
struct Visual {
    tty: Option<(usize, usize)>,
    lines: usize,
}

impl Visual {
    fn new() -> Visual {
        let tty = std::io::stderr().is_terminal().then(|| dlm::cli::terminal_size(2).unwrap_or((80, 24)));
        Visual { tty, lines: 0 }
    }

    fn frame(&mut self, header: &str, prompt: &str, runs: &[Option<String>]) {
        let Some((cols, rows)) = self.tty else {
            let body: String = runs.iter().map(|r| r.as_deref().unwrap_or("_")).collect();
            dlm::errln!("{header} {prompt}{body}");
            return;
        };
        // Characters with whether they are a mask, wrapped into rows of the terminal's width.
        let chars = prompt.chars().map(|c| (c, false)).chain(runs.iter().flat_map(|r| match r {
            Some(t) => t.chars().map(|c| (c, false)).collect::<Vec<_>>(),
            None => vec![('_', true)],
        }));
        let mut wrapped: Vec<Vec<(char, bool)>> = vec![Vec::new()];
        for (c, m) in chars {
            let line = wrapped.last_mut().expect("never empty");
            if c == '\n' || line.len() >= cols.max(2) - 1 {
                wrapped.push(Vec::new());
            }
            if c != '\n' && !c.is_control() {
                wrapped.last_mut().expect("never empty").push((c, m));
            }
        }
        // The header line, the text's last rows, and a line for the cursor.
        let keep = rows.saturating_sub(2).max(1);
        let skipped = wrapped.len().saturating_sub(keep);
        let mut out = String::new();
        if self.lines > 0 {
            out.push_str(&format!("\x1b[{}A", self.lines));
        }
        out.push_str("\r\x1b[J");
        // One row, whatever the width: the cursor-up count relies on it.
        let header = if skipped > 0 { format!("{header} (first {skipped} lines not shown)") } else { header.to_owned() };
        out.extend(header.chars().take(cols.max(2) - 1));
        out.push('\n');
        for line in &wrapped[skipped..] {
            let mut dim = false;
            for &(c, m) in line {
                if m != dim {
                    out.push_str(if m { "\x1b[2m" } else { "\x1b[0m" });
                    dim = m;
                }
                out.push(c);
            }
            if dim {
                out.push_str("\x1b[0m");
            }
            out.push('\n');
        }
        self.lines = 1 + wrapped.len() - skipped;
        dlm::errp!("{out}");
    }
}

fn run(mut a: Args, given: Given) -> anyhow::Result<()> {
    if let Some(shell) = a.completions {
        return dlm::cli::print_completions(common::command::<Args>(), shell);
    }
    if a.m.list_devices {
        common::list_devices(&a.m)?;
        return Ok(());
    }
    check_args(&a)?;
    if let (Some(out), Some(model)) = (&a.dump_logits, &a.m.model) {
        let inputs: Vec<PathBuf> = [Some(model), a.file.as_ref(), a.prompts.as_ref()].into_iter().flatten().cloned().collect();
        dlm::atomic::check_output(out, &inputs).context("--dump-logits")?;
    }
    let esc = |t: &str| if a.escape { unescape(t) } else { t.to_owned() };
    if a.info {
        return info(&mut a);
    }
    if a.tokenize || a.detokenize {
        return tokenize(&a, &read_prompts(&a)?.concat());
    }
    let mut l = common::load(&a.m)?;
    if a.conversation {
        return conversation(&mut a, &mut l, &given);
    }
    let load_s = l.load_s;
    let suffix = l.suffix(&esc(a.suffix.as_deref().unwrap_or("")))?;
    let prompts = read_prompts(&a)?;
    for (i, prompt) in prompts.iter().enumerate() {
        let ids = l.tok.encode(prompt)?;
        let special: Vec<u32> = [l.tok.bos, l.tok.eos].into_iter().flatten().collect();
        if ids.iter().skip(usize::from(l.tok.add_bos)).any(|t| special.contains(t)) {
            let which = if prompts.len() > 1 { format!("prompt {}", i + 1) } else { "the prompt".into() };
            dlm::errln!("warning: {which} contains the text of a special token (such as <s> or </s>), tokenized as BOS/EOS itself");
        }
    }
    let trained = l.n_ctx();
    let (n_ctx, ctx_from) = match a.ctx_size {
        None | Some(0) => (trained, format!("the model's context of {trained} (-c raises it)")),
        Some(c) => {
            if c > trained {
                dlm::errln!("warning: -c {c} is longer than the {trained} tokens the model was trained on; positions beyond them may give poor text");
            }
            (c, format!("-c {c}"))
        }
    };
    let mut prefixes = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        prefixes.push(l.prefix(prompt)?);
    }
    // Without -n, the default shrinks to the room the context leaves (as dlm-server does).
    let longest = prefixes.iter().map(Vec::len).max().unwrap_or(0) + suffix.len();
    let what = if suffix.is_empty() { "the prompt" } else { "the prompt and suffix" };
    if !given.n_predict && longest >= n_ctx {
        bail!("{what} ({longest} tokens) leave no room to generate in {ctx_from}");
    }
    if !given.n_predict && longest + a.n_predict > n_ctx {
        dlm::errln!("note: -n {}: the room a context of {n_ctx} tokens leaves after {what} (give -n to choose)", n_ctx - longest);
        a.n_predict = n_ctx - longest;
    }
    a.gen.resolve(l.model.diffusion(), a.n_predict)?;
    for (i, prefix) in prefixes.iter().enumerate() {
        let len = prefix.len().saturating_add(a.n_predict).saturating_add(suffix.len());
        if len > n_ctx {
            let which = a.prompts.as_ref().map_or(String::new(), |f| format!("{} prompt {}: ", f.display(), i + 1));
            bail!("{which}prompt ({}) + -n ({}) + suffix ({}) = {len} tokens exceeds {ctx_from}", prefix.len(), a.n_predict, suffix.len());
        }
    }
    // Notes and warnings only for a run that goes ahead (a refused one gets its one error line).
    warn_flags(&a, &given, &l);
    let seed = a.gen.seed();
    if a.gen.seed.is_none() && !a.json {
        dlm::errln!("seed: {seed}");
    }
    let params = a.gen.params(&l, a.n_predict, a.gen.steps, seed);
    if a.verbose_prompt {
        for (i, prefix) in prefixes.iter().enumerate() {
            let which = if prompts.len() > 1 { format!("prompt {}", i + 1) } else { "prompt".into() };
            show_tokens(&l.tok, &which, prefix);
        }
        if !suffix.is_empty() {
            show_tokens(&l.tok, "suffix", &suffix);
        }
    }
    if dlm::cli::logs(dlm::cli::Log::Verbose) {
        dlm::errln!(
            "settings: mask id {}, logits shifted {}, attention {}, canvas {} of at most {n_ctx} tokens; --steps {} --unmask {} --threshold {} --block-length {} --cache {} --temp {} --top-p {} --top-k {} --seed {seed}",
            params.mask_id,
            params.shift_logits,
            if l.model.params().causal { "causal" } else { "bidirectional" },
            prefixes.iter().map(|p| p.len() + a.n_predict + suffix.len()).max().unwrap_or(0),
            a.gen.steps,
            common::flag_value(&a.gen.unmask),
            a.gen.threshold,
            common::block_flag(&a.gen),
            common::flag_value(&a.gen.cache),
            common::temp_flag(&a.gen),
            a.gen.top_p,
            a.gen.top_k,
        );
    }
    let unmasker = a.gen.unmasker();
    let (model, tok) = (&mut l.model, &l.tok);
    if a.prompts.is_some() {
        return run_many(&a, model, tok, &prompts, &prefixes, &suffix, &params, &unmasker, load_s, seed);
    }

    let prefix = &prefixes[0];
    let mut rec = Recording { model: &mut *model, first: None, keep: a.dump_logits.is_some() };
    let span = prefix.len()..prefix.len() + a.n_predict;
    // Ctrl-C prints the canvas as it stands (masked positions as `_`) and how far it got.
    // Before the first pass ends it is the empty canvas.
    let so_far: Arc<Mutex<(Vec<u32>, Vec<bool>, usize)>> = Arc::new(Mutex::new((vec![params.mask_id; a.n_predict], vec![true; a.n_predict], 0)));
    let (shared, tok_copy, t_gen) = (so_far.clone(), tok.clone(), Instant::now());
    dlm::cli::on_interrupt(move || {
        let Ok(s) = shared.try_lock() else { return };
        let _ = dlm::outln!("{}", canvas_text(&tok_copy, &s.0, &s.1, "_", false));
        let left = s.1.iter().filter(|&&m| m).count();
        dlm::errln!("stopped after {} passes in {:.2} s: {left} of {} positions still masked (shown as _)", s.2, t_gen.elapsed().as_secs_f64(), s.1.len());
    });
    let verbose = dlm::cli::logs(dlm::cli::Log::Verbose);
    let progress = std::io::stderr().is_terminal() && !a.visual && !a.json && !verbose;
    let mut visual = a.visual.then(Visual::new);
    // The text as printed: with the prompt echoed, each run keeps its leading space (as the
    // visual view draws it); alone, as the tokenizer decodes it.
    // The text continues the prompt, echoed or not (--no-display-prompt, --json): its first
    // token keeps its leading space, as llama.cpp prints it and dlm-server returns it.
    let echo = !a.no_display_prompt && !a.json;
    let continues = !prompts[0].is_empty();
    let render = |tokens: &[u32]| -> anyhow::Result<String> {
        Ok(if continues { canvas_text(tok, tokens, &vec![false; tokens.len()], "", true) } else { tok.decode(tokens)? })
    };
    // --stop: the final prefix (committed, no mask before it, cut at EOS) is searched whenever
    // it grows; `final_len` is its length when a stop string was found.
    let (mut checked, mut final_len) = (0usize, None);
    let gen = generate(&mut rec, prefix, &suffix, &params, unmasker().as_mut(), |ev| {
        let Event::Step { step, canvas, masked, committed, forward_seconds, .. } = ev;
        let (tokens, masks) = (&canvas[span.clone()], &masked[span.clone()]);
        let left = masks.iter().filter(|&&m| m).count();
        if let Ok(mut s) = so_far.lock() {
            *s = (tokens.to_vec(), masks.to_vec(), step + 1);
        }
        if let Some(v) = visual.as_mut() {
            let runs = tok.decode_canvas(tokens, masks, !prompts[0].is_empty()).unwrap_or_default();
            v.frame(&format!("[step {:>3}, {left} masked]", step + 1), &prompts[0], &runs);
        } else if progress {
            dlm::errp!("\r\x1b[K[step {}, {left} of {} masked]", step + 1, a.n_predict);
        }
        if verbose {
            dlm::errln!("step {}: {committed} committed, {left} of {} masked, {:.1} ms", step + 1, a.n_predict, forward_seconds * 1e3);
        }
        if !a.stop.is_empty() {
            let mut fin = masks.iter().position(|&m| m).unwrap_or(masks.len());
            if let Some(e) = params.eos.and_then(|eos| tokens[..fin].iter().position(|&t| t == eos)) {
                fin = e;
            }
            if fin > checked {
                checked = fin;
                if render(&tokens[..fin]).is_ok_and(|t| find_stop(&t, &a.stop).is_some()) {
                    final_len = Some(fin);
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    })?;
    if progress {
        dlm::errp!("\r\x1b[K");
    }
    if let (Some(path), Some((rows, logits))) = (&a.dump_logits, &rec.first) {
        write_npy(path, *rows, logits.len() / rows, logits)?;
    }

    let shown = &gen.tokens[..final_len.unwrap_or(gen.tokens.len()).min(gen.tokens.len())];
    let (text, stopped, n_kept) = cut_at_stop(shown, &a.stop, render)?;
    let total: f64 = gen.forward_seconds.iter().sum();
    let ms_per_step = steady_ms(&gen.forward_seconds);
    let tps = gen.tokens.len() as f64 / total.max(1e-9);
    if a.json {
        let obj = serde_json::json!({
            "text": text, "tokens": &gen.tokens[..n_kept], "prompt_tokens": prefix, "steps": gen.steps, "seed": seed, "stop": stopped,
            "backend": model.backend_description(), "load_ms": load_s * 1e3, "ms_per_step": ms_per_step, "tokens_per_second": tps,
            "forward_ms": gen.forward_seconds.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
        });
        dlm::outln!("{obj}")?;
    } else {
        if echo {
            let color = a.color == ColorArg::On || (a.color == ColorArg::Auto && std::io::stdout().is_terminal());
            let paint = |t: &str| if color && !t.is_empty() { format!("\x1b[33m{t}\x1b[0m") } else { t.to_owned() };
            let after = if stopped.is_none() { paint(&esc(a.suffix.as_deref().unwrap_or(""))) } else { String::new() };
            dlm::outln!("{}{text}{after}", paint(&prompts[0]))?;
        } else {
            dlm::outln!("{text}")?;
        }
        dlm::errln!(
            "{} | load {:.0} ms | {} steps{}, {ms_per_step:.1} ms/step (from step 2) | {} tokens in {total:.2} s, {tps:.1} tokens/s",
            model.backend_description(),
            load_s * 1e3,
            gen.steps,
            fewer_steps_reason(&a, gen.steps, stopped),
            gen.tokens.len(),
        );
    }
    Ok(())
}

/// `--conversation`: a chat through the model's template, one message per line of standard
/// input, until `/exit` or end of input. Each answer is a generation of `-n` positions after the
/// rendered conversation (older turns dropped, with a note, when it no longer fits the
/// context); Ctrl-C ends the answer being generated and the conversation goes on.
fn conversation(a: &mut Args, l: &mut Loaded, given: &Given) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let source = match &a.chat_template {
        Some(path) => common::read_text(path, "a chat template", false).context("--chat-template")?,
        None => match l.model.gguf().get(dlm::keys::CHAT_TEMPLATE).and_then(|v| v.as_str()) {
            Some(t) => t.to_owned(),
            None => bail!("{}: the model has no chat template (tokenizer.chat_template): give one with --chat-template FILE", l.path.display()),
        },
    };
    let at = a.chat_template.as_ref().map_or_else(|| format!("{}: the chat template", l.path.display()), |p| format!("--chat-template {}", p.display()));
    let mut template = chat::Template::new(source).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
    let piece = |id: Option<u32>| id.and_then(|i| l.tok.id_to_token(i)).unwrap_or_default();
    let (bos, eos) = (piece(l.tok.bos), piece(l.tok.eos));
    let n_ctx = match a.ctx_size {
        None | Some(0) => l.n_ctx(),
        Some(c) => c,
    };
    if !given.n_predict {
        a.n_predict = a.n_predict.min(n_ctx / 2).max(1);
    }
    if a.n_predict >= n_ctx {
        bail!("-n {} leaves no room for the conversation in a context of {n_ctx} tokens", a.n_predict);
    }
    a.gen.resolve(l.model.diffusion(), a.n_predict)?;
    let seed = a.gen.seed();
    if a.gen.seed.is_none() {
        dlm::errln!("seed: {seed}");
    }
    let unmasker = a.gen.unmasker();
    let mut history: Vec<serde_json::Value> = Vec::new();
    if let Some(sys) = &a.system_prompt {
        history.push(serde_json::json!({"role": "system", "content": sys}));
    }
    let fixed = history.len();
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        dlm::errln!("conversation: one message per line (end a line with \\ to continue it), /exit or Ctrl-D to end; Ctrl-C stops an answer");
    }
    let mut lines = stdin.lock().lines();
    let mut turn = 0u64;
    loop {
        if interactive {
            dlm::errp!("\n> ");
        }
        let mut message = String::new();
        loop {
            let Some(line) = lines.next() else {
                return Ok(());
            };
            let line = line.context("reading standard input")?;
            match line.strip_suffix('\\') {
                Some(head) => {
                    message.push_str(head);
                    message.push('\n');
                }
                None => {
                    message.push_str(&line);
                    break;
                }
            }
        }
        let message = message.trim_end_matches('\r').to_owned();
        if message.trim() == "/exit" {
            return Ok(());
        }
        if message.trim().is_empty() {
            continue;
        }
        history.push(serde_json::json!({"role": "user", "content": message}));
        // The rendered conversation, older turns dropped until it and the answer fit.
        let prefix = loop {
            let mut text = template.render(&serde_json::Value::Array(history.clone()), &bos, &eos).or_else(|e| {
                if e.kind == chat::Failure::Unavailable {
                    template.render_in_process();
                    template.render(&serde_json::Value::Array(history.clone()), &bos, &eos)
                } else {
                    Err(e)
                }
            });
            if let Ok(t) = text.as_mut() {
                // The tokenizer adds BOS itself: a template that writes it too would make two.
                if l.tok.add_bos && !bos.is_empty() {
                    if let Some(rest) = t.strip_prefix(bos.as_str()) {
                        *t = rest.to_owned();
                    }
                }
            }
            let text = text.map_err(|e| anyhow::anyhow!("{at} failed on the conversation: {}", e.message))?;
            let prefix = l.prefix(&text)?;
            if prefix.len() + a.n_predict <= n_ctx {
                break Some(prefix);
            }
            if history.len() > fixed + 1 {
                // The oldest exchange (a user message and its answer) goes.
                let n = (history.len() - fixed - 1).min(2);
                history.drain(fixed..fixed + n);
                dlm::errln!("note: the conversation no longer fits the context of {n_ctx} tokens with -n {}: dropped its oldest turn", a.n_predict);
                continue;
            }
            break None;
        };
        let Some(prefix) = prefix else {
            dlm::errln!("error: this message ({} tokens rendered) and -n {} do not fit the context of {n_ctx} tokens; send a shorter one", l.prefix(&message)?.len(), a.n_predict);
            history.pop();
            continue;
        };
        let params = a.gen.params(l, a.n_predict, a.gen.steps, seed.wrapping_add(turn));
        turn += 1;
        let span = prefix.len()..prefix.len() + a.n_predict;
        let mut visual = a.visual.then(Visual::new);
        let tok = &l.tok;
        dlm::cli::interrupt_ends_turn(true);
        let result = generate(&mut l.model, &prefix, &[], &params, unmasker().as_mut(), |ev| {
            let Event::Step { step, canvas, masked, .. } = ev;
            if let Some(v) = visual.as_mut() {
                let (tokens, masks) = (&canvas[span.clone()], &masked[span.clone()]);
                let runs = tok.decode_canvas(tokens, masks, false).unwrap_or_default();
                let left = masks.iter().filter(|&&m| m).count();
                v.frame(&format!("[step {:>3}, {left} masked]", step + 1), "", &runs);
            }
            if dlm::cli::turn_interrupted() {
                Flow::Stop
            } else {
                Flow::Continue
            }
        });
        let interrupted = dlm::cli::turn_interrupted();
        dlm::cli::interrupt_ends_turn(false);
        let g = result?;
        if interrupted {
            dlm::errln!("(answer interrupted after {} steps)", g.steps);
            history.pop();
            continue;
        }
        let answer = tok.decode(&g.tokens)?;
        let answer = answer.trim().to_owned();
        dlm::outln!("{answer}")?;
        history.push(serde_json::json!({"role": "assistant", "content": answer}));
    }
}

/// The prompts as llama.cpp users give them: `--prompts FILE` (one per line), `-f FILE` (one
/// prompt, all of it), `-p TEXT` (with `-e` escapes), else standard input when it is not a
/// terminal, else none (unconditional generation).
fn read_prompts(a: &Args) -> anyhow::Result<Vec<String>> {
    let esc = |t: &str| if a.escape { unescape(t) } else { t.to_owned() };
    Ok(match (&a.prompts, &a.file, &a.prompt) {
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
    })
}

/// `--info`: the file's facts and what the runtime will take from it, without loading weights.
fn info(a: &mut Args) -> anyhow::Result<()> {
    use dlm::{keys, Gguf};
    let path = a.m.path()?.to_owned();
    let g = Gguf::open(&path)?;
    let checked = dlm::model::check(&g, &a.m.overrides())?;
    let d = &checked.diffusion;
    a.gen.resolve(d, a.n_predict)?;
    let (mask_id, shift) = (d.mask_id, d.shift_logits);
    let p = &checked.params;
    let tok = dlm::Tokenizer::from_gguf(&g)?;
    let source = |i: usize| d.sources[i].describe(d.family.name);
    let n_params: u64 = g.tensors().iter().map(|t| t.n_elements()).sum();
    let mut types: std::collections::BTreeMap<String, usize> = Default::default();
    for t in g.tensors() {
        *types.entry(t.ggml_type.name()).or_default() += 1;
    }
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let name = g.get(keys::NAME).and_then(|v| v.as_str()).unwrap_or("(none)");
    let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map_or("none".to_string(), |t| format!("present ({} bytes)", t.len()));
    let attention = if p.causal { "causal" } else { "bidirectional" };
    // An id with its text: `1 "<s>"`, or `none`.
    let special = |id: Option<u32>| id.map_or("none".to_owned(), |i| format!("{i} {:?}", tok.id_to_token(i).unwrap_or_default()));
    let mut lines = vec![
        format!("file: {} ({:.1} MB, GGUF v{}, alignment {})", path.display(), bytes as f64 / 1e6, g.version(), g.alignment()),
        format!("architecture: {} (name: {name}; family {})", p.arch, d.family.name),
        format!("parameters: {:.2} M in {} tensors", n_params as f64 / 1e6, g.tensors().len()),
        format!("tensor types: {}", types.iter().map(|(t, n)| format!("{n} {t}")).collect::<Vec<_>>().join(", ")),
        format!("layers {}, embedding {}, heads {} (kv {}), head dim {}, feed-forward {}, vocab {}", p.n_layer, p.n_embd, p.n_head, p.n_head_kv, p.head_dim(), p.n_ff, p.n_vocab),
        format!(
            "context: {} tokens; {}; norm epsilon {:e}; LM head {}",
            p.n_ctx_train,
            if p.rope_dims == 0 { "learned positions".to_string() } else { format!("RoPE base {}, dims {}", p.rope_theta, p.rope_dims) },
            p.norm_eps,
            if p.tied_output { "tied to the embedding" } else { "output.weight" }
        ),
        format!("attention: {attention} ({})", source(2)),
        format!("mask id: {mask_id} ({}) {:?}", source(0), tok.id_to_token(mask_id).unwrap_or_default()),
        format!("logits shifted: {shift} ({})", source(1)),
        format!(
            "tokenizer: {}, {} tokens, BOS {}, EOS {}, adds BOS: {}",
            tok.source,
            tok.vocab_size(),
            special(tok.bos),
            special(tok.eos),
            if tok.add_bos { "yes" } else { "no" }
        ),
        format!("chat template: {template}"),
        format!(
            "generation (in effect for -n {}: flags, else the {} defaults): --steps {} --unmask {} --block-length {} --threshold {} --temp {} --top-p {} --top-k {} --cache {}",
            a.n_predict,
            d.family.name,
            a.gen.steps,
            common::flag_value(&a.gen.unmask),
            common::block_flag(&a.gen),
            a.gen.threshold,
            common::temp_flag(&a.gen),
            a.gen.top_p,
            a.gen.top_k,
            common::flag_value(&a.gen.cache),
        ),
    ];
    // A family whose defaults change with the answer's length says so, whatever -n is.
    let (short, long) = (d.family.sampling, d.sampling_for(dlm::model::LONG_ANSWER, UnmaskRule::Threshold));
    if short != long {
        let steps = |s: Option<usize>| s.map_or("one per token".to_string(), |n| n.to_string());
        let blocks = |b: Option<usize>| b.map_or("one block".to_string(), |n| format!("blocks of {n}"));
        lines.push(format!(
            "defaults by length (--unmask threshold): -n below {n}: steps {}, threshold {}, {}; -n {n} and more: a step per token, rounded up to whole blocks (a budget the threshold ends early), threshold {}, {}",
            steps(short.steps),
            short.threshold,
            blocks(short.block_length),
            long.threshold,
            blocks(long.block_length),
            n = dlm::model::LONG_ANSWER,
        ));
    }
    for l in lines.iter().chain(&checked.warnings) {
        dlm::outln!("{l}")?;
    }
    Ok(())
}

/// `--tokenize` / `--detokenize` on `text`, with the file's tokenizer only.
fn tokenize(a: &Args, text: &str) -> anyhow::Result<()> {
    let path = a.m.path()?.to_owned();
    let tok = dlm::Tokenizer::from_gguf(&dlm::Gguf::open(&path)?)?;
    if a.detokenize {
        let ids = text
            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<u32>().ok().filter(|&id| (id as usize) < tok.vocab_size()).with_context(|| format!("--detokenize: `{t}` is not a token id of this {}-token vocabulary", tok.vocab_size())))
            .collect::<anyhow::Result<Vec<u32>>>()?;
        return dlm::outln!("{}", tok.decode(&ids)?);
    }
    let ids = tok.encode(text)?;
    if a.json {
        return dlm::outln!("{}", serde_json::json!(ids));
    }
    for id in ids {
        dlm::outln!("{id:>6} {:?}", tok.id_to_token(id).unwrap_or_default())?;
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
        // The text continues its prompt, as a single run's does.
        let render = |t: &[u32]| -> anyhow::Result<String> {
            Ok(if !prompts[i].is_empty() { canvas_text(tok, t, &vec![false; t.len()], "", true) } else { tok.decode(t)? })
        };
        let (text, stopped, n_kept) = cut_at_stop(&g.tokens, &a.stop, render)?;
        if a.json {
            let obj = serde_json::json!({
                "index": i, "prompt": prompts[i], "text": text, "tokens": &g.tokens[..n_kept], "prompt_tokens": prefixes[i],
                "steps": g.steps, "seed": seed, "stop": stopped,
            });
            dlm::outln!("{obj}")
        } else {
            dlm::outln!("--- {} ---\n{text}", i + 1)
        }
    };
    // Guidance runs each sequence twice per pass (with and without its prompt).
    let copies = if params.cfg_scale > 0.0 { 2 } else { 1 };
    let batch_size = batch_limit(a.batch_size, model.params(), copies * prefixes.iter().map(|p| p.len() + params.n_gen + suffix.len()).max().unwrap_or(1));
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
    let total = t0.elapsed().as_secs_f64();
    let tps = n_tokens as f64 / total.max(1e-9);
    let batches = prefixes.len().div_ceil(batch_size);
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

/// `-b` lowered (with a note) so that one pass of sequences of `seq_len` tokens stays within
/// [`BATCH_MEMORY`] of activations.
fn batch_limit(asked: usize, p: &dlm::model::Hparams, seq_len: usize) -> usize {
    let per_token = common::activation_bytes_per_token(p);
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

/// `--verbose-prompt`: a prompt's tokens as llama.cpp lists them.
fn show_tokens(tok: &Tokenizer, what: &str, ids: &[u32]) {
    dlm::errln!("{what}: {} tokens", ids.len());
    for &id in ids {
        dlm::errln!("{id:>6} -> {:?}", tok.id_to_token(id).unwrap_or_default());
    }
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
    #[cfg(target_os = "linux")]
    if std::env::args_os().nth(1).is_some_and(|a| a == chat::isolated::CHILD_ARG) {
        return ExitCode::from(chat::isolated::child_main() as u8);
    }
    dlm::cli::install();
    let matches = common::command::<Args>().get_matches_from(common::init());
    let on_command_line = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let given = Given { batch_size: on_command_line("batch_size"), threshold: on_command_line("threshold"), n_predict: on_command_line("n_predict") };
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    common::set_log(args.log_disable, args.verbose);
    dlm::cli::exit(run(args, given))
}
