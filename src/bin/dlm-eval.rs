//! `dlm-eval`: exact-match accuracy of a model on a file of problems, through the same
//! generation code and flags as `dlm-run`, batched. One JSON object on stdout; a table on stderr.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{CommandFactory, FromArgMatches, Parser};
use common::{steady_ms, GenArgs, Loaded, ModelArgs};
use dlm::backend::ggml::{LlamaCpp, LlamaCppOptions};
use dlm::generate::{generate_batch_seeded, Flow, Forward, Generation};

mod common;

/// Evaluate a diffusion language model on held-out problems (exact match per task).
///
/// Each line of the problems file is a JSON object: {"task", "prompt", "answer", "n"} and
/// optionally "suffix" (infilling: text after the generated span) and "pattern" (a regular
/// expression the whole trimmed output must match, instead of equalling the answer). "n" is the
/// answer region in tokens: the canvas is BOS + prompt + n masks + suffix, as `dlm-run -n n
/// --suffix ...` lays it out, and the output is cut at the first EOS. Every generation flag means
/// what it means in dlm-run, except that the steps default to one per answer token (--steps
/// sets a number for every problem, --steps-frac a fraction of each region). The problem on
/// line L of the file runs with seed --seed + L - 1: exactly `dlm-run -s <that seed>`, and
/// independent draws for independent problems. "tokens_per_second" counts every position of
/// the answer regions (EOS padding included) over the generation time.
#[derive(Parser, Debug)]
#[command(name = "dlm-eval", version, allow_negative_numbers = true, after_help = "Example:\n  dlm-eval -m diffullama-tiny-q4_0.gguf --problems models/tasks/test.jsonl --unmask confidence --temp 0")]
struct Args {
    #[command(flatten)]
    m: ModelArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// Problems, one JSON object per line
    #[arg(long, value_name = "FILE.jsonl")]
    problems: Option<PathBuf>,
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), then exit
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<clap_complete::Shell>,
    /// Steps per problem as a fraction of its answer region, rounded up [default: 1, unless
    /// --steps is given]
    #[arg(long, value_name = "F", conflicts_with = "steps")]
    steps_frac: Option<f64>,
    /// Sequences denoised together in one pass (without --cache)
    #[arg(short = 'b', long, default_value_t = 16)]
    batch_size: usize,
    /// Only these tasks (comma-separated)
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// At most this many problems per task
    #[arg(long)]
    limit: Option<usize>,
    /// Run every forward pass through llama.cpp's own `llama_decode` of the whole canvas, one
    /// sequence at a time (what llama-diffusion-cli does each step), with the same sampler
    /// loop: the peer's speed (and accuracy) on the same problems. Bidirectional models on the
    /// CPU only, no --cache
    #[arg(long, value_name = "llamacpp")]
    peer: Option<String>,
    /// Write every problem's output and verdict here, one JSON object per line
    #[arg(long, value_name = "OUT.jsonl")]
    per_problem: Option<PathBuf>,
}

#[derive(Debug)]
struct Problem {
    /// 1-based line in the problems file.
    line: usize,
    task: String,
    prompt: String,
    answer: String,
    suffix: String,
    n: usize,
    pattern: Option<regex::Regex>,
}

fn read_problems(path: &PathBuf, a: &Args) -> anyhow::Result<Vec<Problem>> {
    let text = common::read_text(path, "the problems", false)?;
    let mut out = Vec::new();
    let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let field = |k: &str| -> anyhow::Result<String> {
            match v.get(k) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                None if k == "suffix" => Ok(String::new()),
                _ => bail!("{}: field \"{k}\" must be a string", at()),
            }
        };
        let (task, prompt, answer, suffix) = (field("task")?, field("prompt")?, field("answer")?, field("suffix")?);
        if let Some(obj) = v.as_object() {
            if let Some(k) = obj.keys().find(|k| !["task", "prompt", "answer", "suffix", "n", "pattern"].contains(&k.as_str())) {
                bail!("{}: unknown field \"{k}\" (expected task, prompt, answer, n, and optionally suffix, pattern)", at());
            }
        }
        let n = v.get("n").and_then(|n| n.as_u64()).filter(|&n| (1..=4096).contains(&n));
        let Some(n) = n else { bail!("{}: field \"n\" must be an integer from 1 to 4096 (the answer region in tokens)", at()) };
        let pattern = match v.get("pattern") {
            None => None,
            Some(serde_json::Value::String(p)) => Some(regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                // The regex crate's message spans lines (pattern, caret, reason): keep the reason.
                let why = e.to_string().lines().last().unwrap_or("invalid").trim_start_matches("error: ").to_owned();
                anyhow::anyhow!("{}: field \"pattern\" is not a regular expression: {why}", at())
            })?),
            Some(_) => bail!("{}: field \"pattern\" must be a string", at()),
        };
        if !a.tasks.is_empty() && !a.tasks.contains(&task) {
            continue;
        }
        let seen = per_task.entry(task.clone()).or_default();
        if a.limit.is_some_and(|l| *seen >= l) {
            continue;
        }
        *seen += 1;
        out.push(Problem { line: i + 1, prompt, answer, suffix, task, n: n as usize, pattern });
    }
    if out.is_empty() {
        bail!("{}: no problems (after --tasks/--limit)", path.display());
    }
    Ok(out)
}

impl Problem {
    fn correct(&self, output: &str) -> bool {
        let out = output.trim();
        match &self.pattern {
            Some(re) => re.is_match(out),
            None => out == self.answer.trim(),
        }
    }
}

/// Steps for a region of `n` tokens.
fn steps_for(a: &Args, steps_given: bool, n: usize) -> usize {
    match (a.steps_frac, steps_given) {
        (Some(f), _) => ((n as f64 * f).ceil() as usize).max(1),
        (None, true) => a.gen.steps,
        (None, false) => n,
    }
}

fn run(mut a: Args, steps_given: bool) -> anyhow::Result<()> {
    if let Some(shell) = a.completions {
        return dlm::cli::print_completions(common::command::<Args>(), shell);
    }
    if a.m.list_devices {
        common::list_devices(&a.m)?;
        return Ok(());
    }
    a.m.path()?;
    a.gen.check_flags()?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if let Some(f) = a.steps_frac {
        if !(f > 0.0 && f <= 64.0) {
            bail!("--steps-frac must be in (0, 64], got {f}");
        }
    }
    let path = a.problems.clone().context("--problems FILE.jsonl is required")?;
    let problems = read_problems(&path, &a)?;
    let mut l: Loaded = common::load(&a.m)?;
    // Steps are per problem (see steps_for); the rest takes the family's defaults.
    // "settings" in the summary: the shortest region's (by_region has each region's).
    a.gen.resolve(l.model.diffusion(), problems.iter().map(|p| p.n).min().unwrap_or(1))?;
    let mut peer = match a.peer.as_deref() {
        None => None,
        Some("llamacpp") => {
            if a.gen.cache != common::CacheArg::None {
                bail!("--peer llamacpp re-decodes every position each step: it has no --cache");
            }
            let threads = a.m.threads.unwrap_or(usize::MAX).clamp(1, dlm::LoadOptions::default().threads);
            if l.model.params().causal || a.m.backend != common::BackendArg::Cpu {
                bail!("--peer llamacpp runs bidirectional models on the CPU: add --backend cpu, and use a diffusion (non-causal) file");
            }
            Some(LlamaCpp::load(&l.path, &LlamaCppOptions::new(threads, l.n_ctx()))?)
        }
        Some(other) => bail!("--peer {other}: the only peer is llamacpp"),
    };
    let seed = a.gen.seed();

    // Canvases, grouped by (region, steps) so that a batch shares its schedule.
    let mut canvases = Vec::with_capacity(problems.len());
    for p in &problems {
        let at = || format!("{} line {}", path.display(), p.line);
        let (prefix, suffix) = (l.prefix(&p.prompt).with_context(at)?, l.suffix(&p.suffix).with_context(at)?);
        let len = prefix.len().saturating_add(p.n).saturating_add(suffix.len());
        if len > l.n_ctx() {
            bail!("{}: {len} tokens exceed the model's context of {}", at(), l.n_ctx());
        }
        canvases.push((prefix, suffix));
    }
    let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, p) in problems.iter().enumerate() {
        groups.entry((p.n, steps_for(&a, steps_given, p.n))).or_default().push(i);
    }
    let seed_of = |i: usize| seed.wrapping_add(problems[i].line as u64 - 1);
    // Complete or not at all, and never over an input.
    let mut per_problem = match &a.per_problem {
        Some(p) => {
            dlm::atomic::check_output(p, &[path.clone(), l.path.clone()]).context("--per-problem")?;
            Some(dlm::atomic::AtomicFile::create(p).context("--per-problem")?)
        }
        None => None,
    };
    let mut gens: Vec<Option<Generation>> = vec![None; problems.len()];
    let mut pass_seconds = Vec::new();
    // Each region takes the defaults of its own length (long answers may differ: resolve).
    let mut by_region = Vec::new();
    let mut params = Vec::with_capacity(groups.len());
    for &(n, steps) in groups.keys() {
        let mut g = a.gen.clone();
        g.resolve(l.model.diffusion(), n)?;
        by_region.push(serde_json::json!({"n": n, "unmask": common::flag_value(&g.unmask), "threshold": common::short(g.threshold), "block_length": g.block_length, "steps": steps}));
        params.push((g.params(&l, n, steps, seed), g.unmasker()));
    }
    let t0 = Instant::now();
    let fwd: &mut dyn Forward = match peer.as_mut() {
        Some(p) => p,
        None => &mut l.model,
    };
    for (idx, (params, unmasker)) in groups.values().zip(&params) {
        for chunk in idx.chunks(a.batch_size) {
            let batch: Vec<(&[u32], &[u32])> = chunk.iter().map(|&i| (canvases[i].0.as_slice(), canvases[i].1.as_slice())).collect();
            let seeds: Vec<u64> = chunk.iter().map(|&i| seed_of(i)).collect();
            let out = generate_batch_seeded(fwd, &batch, &seeds, params, unmasker, |s| {
                pass_seconds.push(s.forward_seconds);
                Flow::Continue
            })?;
            for (&i, g) in chunk.iter().zip(out) {
                gens[i] = Some(g);
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();

    #[derive(Default)]
    struct Tally {
        right: usize,
        total: usize,
        steps: usize,
    }
    let mut tally: BTreeMap<&str, Tally> = BTreeMap::new();
    let writing = || format!("writing {}", a.per_problem.as_ref().map_or(String::new(), |p| p.display().to_string()));
    let mut positions = 0usize;
    for (i, (p, g)) in problems.iter().zip(&gens).enumerate() {
        let g = g.as_ref().context("internal: a problem was not generated")?;
        let text = l.tok.decode(&g.tokens)?;
        let ok = p.correct(&text);
        let t = tally.entry(&p.task).or_default();
        t.right += usize::from(ok);
        t.total += 1;
        t.steps += g.steps;
        positions += p.n;
        if let Some(w) = per_problem.as_mut() {
            let obj = serde_json::json!({"line": p.line, "seed": seed_of(i), "task": p.task, "prompt": p.prompt, "suffix": p.suffix, "answer": p.answer, "output": text, "correct": ok, "steps": g.steps});
            w.write_all(format!("{obj}\n").as_bytes()).with_context(writing)?;
        }
    }
    if let Some(w) = per_problem {
        w.finish().with_context(writing)?;
    }
    let right: usize = tally.values().map(|t| t.right).sum();
    let tasks: serde_json::Map<String, serde_json::Value> = tally
        .iter()
        .map(|(k, t)| {
            let v = serde_json::json!({"accuracy": t.right as f64 / t.total as f64, "correct": t.right, "problems": t.total, "steps_mean": t.steps as f64 / t.total as f64});
            (k.to_string(), v)
        })
        .collect();
    let g = &a.gen;
    let backend = match &peer {
        Some(_) => "llama.cpp llama_decode (cpu), one sequence at a time".to_string(),
        None => l.model.backend_description(),
    };
    let summary = serde_json::json!({
        "model": l.path.display().to_string(), "backend": backend,
        "settings": {
            "unmask": common::flag_value(&g.unmask), "steps_frac": a.steps_frac, "steps": if a.steps_frac.is_none() && steps_given { Some(g.steps) } else { None },
            "block_length": g.block_length, "cache": common::flag_value(&g.cache), "threshold": common::short(g.threshold),
            "temp": common::short(g.temp), "top_k": g.top_k, "top_p": common::short(g.top_p), "gumbel": g.diffusion_add_gumbel_noise, "cfg_scale": common::short(g.cfg_scale),
            "diffusion_eps": g.diffusion_eps.map(common::short), "alg_temp": g.diffusion_alg_temp.map(common::short), "seed": seed, "batch_size": a.batch_size,
        },
        "by_region": by_region,
        "tasks": tasks, "overall": right as f64 / problems.len() as f64, "problems": problems.len(),
        "forward_passes": pass_seconds.len(), "ms_per_pass": steady_ms(&pass_seconds), "seconds": seconds,
        "tokens_per_second": positions as f64 / seconds.max(1e-9),
    });
    for (k, t) in &tally {
        dlm::errln!("{k:>10}: {:5.1} % ({}/{}), {:.1} steps", 100.0 * t.right as f64 / t.total as f64, t.right, t.total, t.steps as f64 / t.total as f64);
    }
    dlm::errln!(
        "{:>10}: {:5.1} % of {} problems | {} passes in {seconds:.2} s, {:.0} tokens/s | {}",
        "overall",
        100.0 * right as f64 / problems.len() as f64,
        problems.len(),
        pass_seconds.len(),
        positions as f64 / seconds.max(1e-9),
        backend
    );
    dlm::outln!("{summary}")?;
    Ok(())
}

fn main() -> ExitCode {
    dlm::cli::install();
    let matches = Args::command().get_matches_from(common::init());
    let steps_given = matches.value_source("steps") == Some(clap::parser::ValueSource::CommandLine);
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    dlm::cli::exit(run(args, steps_given))
}
