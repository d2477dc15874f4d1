//! `dlm-run`: generate text with a diffusion language model by parallel unmasking.
//! stdout carries the generated text only; everything else goes to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use dlm::generate::{generate, generate_batch, Cache, Event, Flow, Forward, GenParams, Generation, Pass};
use dlm::sample::{Confidence, Entropy, Margin, Origin, Threshold, TokenSampler, Unmasker};
use dlm::{keys, Backend, Gguf, LoadOptions, Model, Tokenizer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Rule {
    /// DiffuLLaMA's own: each masked position is committed with probability 1/(t+1)
    Origin,
    /// the k most confident positions per step (linear schedule)
    Confidence,
    /// the k positions with the largest top-1 − top-2 margin
    Margin,
    /// the k positions with the lowest entropy
    Entropy,
    /// every position with confidence ≥ --threshold, at least one (Fast-dLLM); steps adapt
    Threshold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// a compiled-in ggml GPU backend's device, else a GPU through wgpu when a hardware adapter
    /// exists, else the CPU (a software Vulkan driver such as lavapipe is never picked)
    Auto,
    /// ggml's CPU kernels
    Cpu,
    /// ggml's CUDA backend (build with --features cuda)
    Cuda,
    /// ggml's Metal backend (build with --features metal)
    Metal,
    /// ggml's Vulkan backend (build with --features vulkan)
    Vulkan,
    /// our WGSL kernels through wgpu (Vulkan, Metal, DX12), software adapters included
    Wgpu,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CacheArg {
    /// exact: every step computes every position
    None,
    /// the current block and everything after it are computed; the prefix is cached
    Prefix,
    /// only the current block is computed
    Dual,
}

/// Generate text with a diffusion language model (DiffuLLaMA) from a GGUF file.
///
/// The canvas is BOS + prompt + N mask tokens (+ suffix); each step runs the whole sequence
/// through the model and commits some masked positions, until none are left.
#[derive(Parser, Debug)]
#[command(name = "dlm-run", version, arg_required_else_help = true, after_help = "Example:\n  dlm-run -m diffullama-q4.gguf -p \"Today is a wonderful day,\" -n 128")]
struct Args {
    /// GGUF model file
    #[arg(short, long, required_unless_present = "list_devices")]
    model: Option<PathBuf>,
    /// Prompt (empty: unconditional generation)
    #[arg(short, long, default_value = "")]
    prompt: String,
    /// Prompts, one per line (blank lines skipped), denoised together in batches of
    /// --batch-size: each step runs the whole batch through the model at once
    #[arg(short = 'f', long = "file", value_name = "PROMPTS.txt", conflicts_with = "prompt")]
    file: Option<PathBuf>,
    /// Sequences per batch with -f
    #[arg(short = 'b', long, default_value_t = 8)]
    batch_size: usize,
    /// Tokens to generate
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    /// Forward passes (denoising steps)
    #[arg(long, default_value_t = 64)]
    steps: usize,
    /// Which positions to commit each step
    #[arg(long, value_enum, default_value = "origin")]
    unmask: Rule,
    /// Semi-autoregressive blocks of B positions, left to right [default: one block]
    #[arg(long)]
    block_length: Option<usize>,
    /// Confidence threshold for --unmask threshold
    #[arg(long, default_value_t = 0.9)]
    threshold: f32,
    /// Temperature (0: greedy)
    #[arg(long, default_value_t = 0.9)]
    temp: f32,
    /// Top-k (0: off)
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Top-p, applied after temperature (1: off)
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Random seed [default: random, printed on stderr]
    #[arg(short, long)]
    seed: Option<u64>,
    /// CPU threads [default: all cores]
    #[arg(short, long)]
    threads: Option<usize>,
    /// Text after the generated span: the model infills between prompt and suffix
    #[arg(long)]
    suffix: Option<String>,
    /// Mask token id [default: from the file, else 811 (DiffuLLaMA)]
    #[arg(long)]
    mask_id: Option<u32>,
    /// Read predictions from the previous position's logits [default: from the file, else true]
    #[arg(long)]
    shift: Option<bool>,
    /// Redraw the canvas on stderr as positions unmask (masked positions dimmed)
    #[arg(long)]
    visual: bool,
    /// Print one JSON object (text, token ids, steps, timings) instead of plain text
    #[arg(long)]
    json: bool,
    /// Key/value cache for block decoding (Fast-dLLM; approximate): `prefix` reuses the prompt
    /// and finished blocks, `dual` also the masked suffix. Each block starts with a full pass.
    #[arg(long, value_enum, default_value = "none")]
    cache: CacheArg,
    /// Write the first step's logits for every position as float32 .npy [seq_len, vocab]
    #[arg(long, value_name = "PATH.npy")]
    dump_logits: Option<PathBuf>,
    /// Where the model runs
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// GPU to run on: its index in --list-devices [default: the first hardware GPU]
    #[arg(long, value_name = "N")]
    device: Option<usize>,
    /// Layers whose weights go to the GPU (also -ngl, as in llama.cpp): counted from the last
    /// layer, the LM head too when all go; 0 runs everything on the CPU. The wgpu backend runs
    /// all layers or none [default: all]
    #[arg(long = "n-gpu-layers", value_name = "N")]
    n_gpu_layers: Option<usize>,
    /// List the GPUs this build can use, then exit
    #[arg(long)]
    list_devices: bool,
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

fn write_npy(path: &PathBuf, rows: usize, cols: usize, data: &[f32]) -> anyhow::Result<()> {
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
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn check_args(a: &Args) -> anyhow::Result<()> {
    if a.n_predict == 0 {
        bail!("-n must be at least 1");
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if !(a.temp >= 0.0 && a.temp.is_finite()) {
        bail!("--temp must be 0 (greedy) or positive, got {}", a.temp);
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    if !(a.threshold > 0.0 && a.threshold <= 1.0) {
        bail!("--threshold must be in (0, 1], got {}", a.threshold);
    }
    if a.block_length == Some(0) {
        bail!("--block-length must be at least 1");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if a.file.is_some() && (a.visual || a.dump_logits.is_some()) {
        bail!("-f cannot be combined with --visual or --dump-logits (they show one canvas)");
    }
    if a.json && a.visual {
        bail!("--json and --visual cannot be combined (both describe the run)");
    }
    Ok(())
}

/// Diffusion settings from the file, with DiffuLLaMA defaults for GGUFs made by other tools.
fn diffusion_settings(a: &Args, g: &Gguf) -> anyhow::Result<(u32, bool, Option<bool>)> {
    let file_mask = g.get(keys::MASK_ID).map(|_| g.get_u32(keys::MASK_ID)).transpose()?;
    let file_shift = g.get(keys::SHIFT_LOGITS).map(|_| g.get_bool(keys::SHIFT_LOGITS)).transpose()?;
    let causal_key = keys::arch(g.get_str(keys::ARCHITECTURE)?, "attention.causal");
    let mut defaulted = Vec::new();
    let mask = a.mask_id.or(file_mask).unwrap_or_else(|| {
        defaulted.push(format!("mask id {}", keys::DIFFULLAMA_MASK_ID));
        keys::DIFFULLAMA_MASK_ID
    });
    let shift = a.shift.or(file_shift).unwrap_or_else(|| {
        defaulted.push("shifted logits".into());
        true
    });
    // Files from llama.cpp's converter say nothing about the mask: DiffuLLaMA is bidirectional.
    let causal = if g.get(&causal_key).is_none() {
        defaulted.push("bidirectional attention".into());
        Some(false)
    } else {
        None
    };
    if !defaulted.is_empty() {
        eprintln!(
            "note: {} has no diffusion metadata; assuming DiffuLLaMA: {} (override with --mask-id / --shift)",
            g.path().display(),
            defaulted.join(", ")
        );
    }
    Ok((mask, shift, causal))
}

/// `--list-devices`: every ggml GPU device and wgpu adapter, one per line, with what `auto`
/// would pick.
fn list_devices() {
    let list = dlm::backend::wgpu::adapters();
    let ggml = dlm::backend::ggml::gpu_devices();
    println!("cpu: ggml CPU backend ({} threads)", LoadOptions::default().threads);
    let mut per_api: std::collections::HashMap<String, usize> = Default::default();
    for d in &ggml {
        let i = per_api.entry(d.api.clone()).or_default();
        let note = if d.is_software() { " (software: --backend auto never picks it)" } else { "" };
        println!("{} device {i}: {} | {} | {} MiB free of {} MiB{note}", d.api.to_lowercase(), d.name, d.description, d.memory_free >> 20, d.memory_total >> 20);
        *i += 1;
    }
    if list.is_empty() {
        println!("wgpu: no adapters (no Vulkan, Metal or DX12 driver found)");
    }
    for d in &list {
        let note = if d.software { " (software: --backend auto never picks it)" } else { "" };
        println!("wgpu device {}: {} | {} | {} | {} | max binding {} MiB{note}", d.index, d.name, d.api, d.kind, d.driver, d.max_binding >> 20);
    }
    let auto = match (ggml.iter().find(|d| !d.is_software()), list.iter().find(|d| !d.software)) {
        (Some(d), _) => format!("{} ({})", d.api.to_lowercase(), d.name),
        (None, Some(d)) => format!("wgpu device {} ({})", d.index, d.name),
        (None, None) => "cpu".to_string(),
    };
    println!("--backend auto: {auto}");
}

/// The backend the flags ask for.
fn backend_of(a: &Args, n_layer: usize) -> anyhow::Result<Backend> {
    let backend = match a.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Cpu => Backend::Cpu,
        BackendArg::Cuda => Backend::Cuda,
        BackendArg::Metal => Backend::Metal,
        BackendArg::Vulkan => Backend::Vulkan,
        BackendArg::Wgpu => Backend::Wgpu,
    };
    let ggml_gpu = dlm::backend::ggml::gpu_devices().iter().any(|d| !d.is_software());
    match a.n_gpu_layers {
        Some(0) => {
            if a.backend == BackendArg::Wgpu {
                bail!("--backend wgpu with -ngl 0 runs nothing on the GPU: use --backend cpu");
            }
            Ok(Backend::Cpu)
        }
        Some(n) if n < n_layer && (backend == Backend::Wgpu || (backend == Backend::Auto && !ggml_gpu)) => {
            bail!("-ngl {n}: the wgpu backend runs all {n_layer} layers on the GPU or none (-ngl 0); partial offload needs a ggml GPU backend (--features cuda, metal or vulkan)")
        }
        _ => Ok(backend),
    }
}

fn run(a: Args) -> anyhow::Result<()> {
    if a.list_devices {
        list_devices();
        return Ok(());
    }
    check_args(&a)?;
    let path = a.model.clone().context("-m/--model is required")?;
    let threads = a.threads.unwrap_or_else(|| LoadOptions::default().threads).max(1);
    let t_load = Instant::now();
    let gguf = Gguf::open(&path)?;
    let (mask_id, shift, causal) = diffusion_settings(&a, &gguf)?;
    let n_layer = dlm::model::LlamaParams::from_gguf(&gguf, causal)?.n_layer;
    let backend = backend_of(&a, n_layer)?;
    let opts = LoadOptions { threads, causal, backend, device: a.device, n_gpu_layers: a.n_gpu_layers, ..Default::default() };
    let mut model = Model::from_gguf(gguf, &opts)?;

    if mask_id as usize >= model.params().n_vocab {
        bail!("mask id {mask_id} is outside the {}-token vocabulary", model.params().n_vocab);
    }
    let tok = Tokenizer::from_gguf(model.gguf())?;
    if tok.vocab_size() != model.params().n_vocab {
        bail!(
            "{}: the tokenizer has {} tokens but the model's vocabulary is {}",
            path.display(),
            tok.vocab_size(),
            model.params().n_vocab
        );
    }
    let load_s = t_load.elapsed().as_secs_f64();

    let suffix: Vec<u32> = match &a.suffix {
        // The suffix continues the text: no BOS, and no dummy-prefix space of its own.
        Some(s) => {
            let ids = tok.encode(s)?;
            ids.into_iter().skip(usize::from(tok.add_bos && tok.bos.is_some())).collect()
        }
        None => Vec::new(),
    };
    let prompts: Vec<String> = match &a.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading prompts from {}", path.display()))?;
            let lines: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_owned()).filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                bail!("{}: no prompts (expected one per line)", path.display());
            }
            lines
        }
        None => vec![a.prompt.clone()],
    };
    let n_ctx = model.params().n_ctx_train;
    let mut prefixes = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let mut prefix = tok.encode(prompt)?;
        if prefix.is_empty() {
            prefix.extend(tok.bos.or(Some(1)));
        }
        let len = prefix.len() + a.n_predict + suffix.len();
        if len > n_ctx {
            let which = a.file.as_ref().map_or(String::new(), |f| format!("{} prompt {}: ", f.display(), i + 1));
            bail!("{which}prompt ({}) + -n ({}) + suffix ({}) = {len} tokens exceeds the model's context of {n_ctx}", prefix.len(), a.n_predict, suffix.len());
        }
        prefixes.push(prefix);
    }
    let seed = a.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    if a.seed.is_none() && !a.json {
        eprintln!("seed: {seed}");
    }
    let params = GenParams {
        n_gen: a.n_predict,
        steps: a.steps,
        block_length: a.block_length,
        sampler: TokenSampler { temp: a.temp, top_k: a.top_k, top_p: a.top_p },
        seed,
        mask_id,
        shift_logits: shift,
        eos: tok.eos,
        cache: match a.cache {
            CacheArg::None => Cache::None,
            CacheArg::Prefix => Cache::Prefix,
            CacheArg::Dual => Cache::Dual,
        },
        full_lm_head: false,
    };
    let (unmask, threshold) = (a.unmask, a.threshold);
    let unmasker = move || -> Box<dyn Unmasker> {
        match unmask {
            Rule::Origin => Box::new(Origin),
            Rule::Confidence => Box::new(Confidence),
            Rule::Margin => Box::new(Margin),
            Rule::Entropy => Box::new(Entropy),
            Rule::Threshold => Box::new(Threshold(threshold)),
        }
    };
    if a.file.is_some() {
        return run_many(&a, &mut model, &tok, &prompts, &prefixes, &suffix, &params, &unmasker, load_s, seed);
    }

    let prefix = &prefixes[0];
    let mut rec = Recording { model: &mut model, first: None, keep: a.dump_logits.is_some() };
    let start = prefix.len();
    let gen = generate(&mut rec, prefix, &suffix, &params, unmasker().as_mut(), |ev| {
        let Event::Step { step, canvas, masked, .. } = ev;
        if a.visual {
            let shown: String = (start..start + a.n_predict)
                .map(|i| if masked[i] { "\x1b[2m_\x1b[0m".to_string() } else { tok.decode(&canvas[i..i + 1]).unwrap_or_default() })
                .collect();
            let left = masked.iter().filter(|&&m| m).count();
            eprint!("\x1b[2J\x1b[H[step {:>3}, {left} masked]\n{}{shown}\n", step + 1, a.prompt);
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
        println!("{obj}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()?;
        eprintln!(
            "{} | load {:.0} ms | {} steps, {ms_per_step:.1} ms/step (from step 2) | {} tokens in {total:.2} s, {tps:.1} tokens/s",
            model.backend_description(),
            load_s * 1e3,
            gen.steps,
            gen.tokens.len(),
        );
    }
    Ok(())
}

/// Mean milliseconds per pass from the second (the first includes graph building and
/// first-touch page faults).
fn steady_ms(seconds: &[f64]) -> f64 {
    let steady = if seconds.len() > 1 { &seconds[1..] } else { seconds };
    steady.iter().sum::<f64>() / steady.len().max(1) as f64 * 1e3
}

/// `-f`: every prompt, in batches (or one by one with a cache), each completion printed in
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
    let mut gens: Vec<Generation> = Vec::with_capacity(prefixes.len());
    let mut pass_seconds: Vec<f64> = Vec::new();
    if params.cache != Cache::None {
        eprintln!("note: a key/value cache belongs to one sequence; the {} prompts run one after another", prefixes.len());
        for prefix in prefixes {
            let g = generate(model, prefix, suffix, params, unmasker().as_mut(), |_| Flow::Continue)?;
            pass_seconds.extend(&g.forward_seconds);
            gens.push(g);
        }
    } else {
        for chunk in prefixes.chunks(a.batch_size) {
            let batch: Vec<(&[u32], &[u32])> = chunk.iter().map(|p| (p.as_slice(), suffix)).collect();
            gens.extend(generate_batch(model, &batch, params, unmasker, |s| {
                pass_seconds.push(s.forward_seconds);
                Flow::Continue
            })?);
        }
    }
    let total = t0.elapsed().as_secs_f64();
    let n_tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
    let tps = n_tokens as f64 / total.max(1e-9);
    let mut out = std::io::stdout().lock();
    for (i, (g, prompt)) in gens.iter().zip(prompts).enumerate() {
        let text = tok.decode(&g.tokens)?;
        if a.json {
            let obj = serde_json::json!({
                "index": i, "prompt": prompt, "text": text, "tokens": g.tokens, "prompt_tokens": prefixes[i],
                "steps": g.steps, "seed": seed,
            });
            writeln!(out, "{obj}")?;
        } else {
            writeln!(out, "--- {} ---\n{text}", i + 1)?;
        }
    }
    out.flush()?;
    let batches = if params.cache == Cache::None { prefixes.len().div_ceil(a.batch_size) } else { prefixes.len() };
    eprintln!(
        "{} | load {:.0} ms | {} prompts in {batches} batch(es): {} passes, {:.1} ms/pass (from pass 2) | {n_tokens} tokens in {total:.2} s, {tps:.1} tokens/s",
        model.backend_description(),
        load_s * 1e3,
        prefixes.len(),
        pass_seconds.len(),
        steady_ms(&pass_seconds),
    );
    Ok(())
}

fn main() -> ExitCode {
    // Vulkan drivers probe for a Wayland display when the instance is made; without
    // XDG_RUNTIME_DIR (headless machines, containers) libwayland prints an "error:" line to
    // stderr although nothing is wrong. A path that does not exist makes the probe fail quietly.
    // Set here, before any thread exists.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", "/nonexistent/dlm-headless");
    }
    // llama.cpp spells it -ngl; clap's short flags are one letter.
    let argv = std::env::args_os().map(|a| if a == "-ngl" { "--n-gpu-layers".into() } else { a });
    let args = Args::parse_from(argv);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
