//! `dlm-score`: the DiffuLLaMA paper's diffusion likelihood, multiple-choice evaluation, a
//! perplexity bound over a text, and the KL divergence between two files of one model
//! (llama-perplexity's --kl-divergence workflow). See `dlm::score` for the definitions.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use common::{Loaded, ModelArgs};
use dlm::atomic::AtomicFile;
use dlm::score::{self, Cost, Item, KldBase, Likelihood, ScoreParams, Target};
use serde_json::json;

mod common;

/// Score text with a diffusion language model, as the DiffuLLaMA paper does.
///
/// A diffusion LM has no left-to-right likelihood. Its score of a continuation given a context
/// is the authors' `eval_forward`: for t = T … 1, mask each continuation token with probability
/// t/T (the context stays), run the model, and average the cross-entropy of the masked tokens;
/// the score is the mean over the T levels (lower is better). Beside it comes the 1/t-weighted
/// bound on the negative log-likelihood (nats per token; its exponential bounds the
/// perplexity). Masks are seeded: the same --seed gives the same numbers. --draws repeats the T
/// levels with fresh masks, for a standard error.
#[derive(Parser, Debug)]
#[command(name = "dlm-score", version, allow_negative_numbers = true, arg_required_else_help = true, subcommand_negates_reqs = true, after_help = "Examples:
  dlm-score likelihood -m model.gguf --context 'The capital of France is' --continuation ' Paris'
  dlm-score choice -m model.gguf --items models/tasks/choice.jsonl
  dlm-score perplexity -m f16.gguf -f text.txt --kl-divergence-base base.kld
  dlm-score perplexity -m q4_0.gguf --kl-divergence-base base.kld --kl-divergence")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), then exit
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<clap_complete::Shell>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// The score of one continuation given a context, with its standard error over draws
    #[command(allow_negative_numbers = true)]
    Likelihood(LikelihoodArgs),
    /// Multiple choice: the choice with the lowest score wins; accuracy ± standard error
    ///
    /// Items are JSON lines: {"context": str, "choices": [str, ...], "label": int} and
    /// optionally "suffix" (text after the choice that stays unmasked, as in infilling), "n"
    /// (pad every choice with EOS to n tokens, as `dlm-run -n n` lays out its canvas; the pads
    /// are scored too) and "task" (accuracy is also reported per task). Each choice is
    /// tokenized as the tail of context + choice (lm-evaluation-harness's rule). All choices
    /// of an item share its masks' seed, so they are compared on the same draws.
    /// `scripts/lm_eval_to_jsonl.py` turns HellaSwag, PIQA, SIQA and Winogrande rows into this
    /// format the way the paper's evaluation prepares them.
    #[command(allow_negative_numbers = true)]
    Choice(ChoiceArgs),
    /// A perplexity bound over a text file, in windows; or the KL divergence against a base file
    ///
    /// The text is tokenized once and cut into windows of --ctx tokens, each starting with BOS
    /// (llama-perplexity's chunks); every other token is a target. Prints the running estimate
    /// per window and the final bound exp(ELBO) ± its error.
    ///
    /// KL divergence between two files of one model (e.g. q4_0 against f16): first run the base
    /// model with --kl-divergence-base FILE (and -f): it scores the text and saves every masked
    /// position's distribution, with the masked canvases themselves. Then run another file with
    /// --kl-divergence-base FILE --kl-divergence (no text needed): same canvases, mean KL ± error,
    /// percentiles, how often the most likely token agrees, and the change of the score.
    #[command(allow_negative_numbers = true)]
    Perplexity(PerplexityArgs),
}

/// Flags every mode shares.
#[derive(Args, Debug)]
struct Common {
    #[command(flatten)]
    m: ModelArgs,
    /// Masking levels T (the paper's diffusion_steps) [default: 32; perplexity: 8]
    #[arg(long)]
    levels: Option<usize>,
    /// Repetitions of the T levels with fresh masks [default: likelihood 8, otherwise 1]
    #[arg(long)]
    draws: Option<usize>,
    /// Seed of the masks
    #[arg(short, long, default_value_t = 0)]
    seed: u64,
    /// Most masked copies in one forward pass
    #[arg(short = 'b', long, default_value_t = 32)]
    batch_size: usize,
    /// Most tokens in one forward pass (a longer sequence runs alone)
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    /// One JSON object on stdout instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct LikelihoodArgs {
    #[command(flatten)]
    c: Common,
    /// Text before the continuation (stays unmasked; BOS is added)
    #[arg(long, default_value = "")]
    context: String,
    /// The text scored
    #[arg(long)]
    continuation: String,
    /// Text after the continuation (stays unmasked)
    #[arg(long, default_value = "")]
    suffix: String,
}

#[derive(Args, Debug)]
struct ChoiceArgs {
    #[command(flatten)]
    c: Common,
    /// Items, one JSON object per line
    #[arg(long, value_name = "FILE.jsonl")]
    items: PathBuf,
    /// Only the first N items
    #[arg(long)]
    limit: Option<usize>,
    /// Write every item's scores and verdict here, one JSON object per line
    #[arg(long, value_name = "OUT.jsonl")]
    per_item: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct PerplexityArgs {
    #[command(flatten)]
    c: Common,
    /// Text file to score
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Tokens per window, BOS included [default: the model's context, at most 512]
    #[arg(short = 'c', long = "ctx-size")]
    ctx: Option<usize>,
    /// Score only the first N windows
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    chunks: Option<u64>,
    /// Every non-empty line is a window of its own (BOS + the line, cut at --ctx-size): for
    /// files of independent short documents, such as one solved problem per line
    #[arg(long)]
    per_line: bool,
    /// Base file of the KL workflow: written (with -f) unless --kl-divergence is given
    #[arg(long, value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare this model with --kl-divergence-base instead of writing it (the levels, draws,
    /// seed and windows are the base's)
    #[arg(long, requires = "kl_divergence_base", conflicts_with_all = ["levels", "draws", "ctx", "chunks", "per_line", "file"])]
    kl_divergence: bool,
}

impl Common {
    fn params(&self, l: &Loaded, levels: usize, draws: usize) -> anyhow::Result<ScoreParams> {
        let p = ScoreParams {
            levels: self.levels.unwrap_or(levels),
            draws: self.draws.unwrap_or(draws),
            seed: self.seed,
            mask_id: l.mask_id,
            shift: l.shift,
            max_seqs: self.batch_size,
            max_tokens: self.batch_tokens,
        };
        if !(1..=1024).contains(&p.levels) {
            bail!("--levels must be from 1 to 1024, got {}", p.levels);
        }
        if !(1..=1024).contains(&p.draws) {
            bail!("--draws must be from 1 to 1024, got {}", p.draws);
        }
        if p.levels * p.draws > 65536 {
            bail!("--levels × --draws is {}: at most 65536 masked copies per sequence", p.levels * p.draws);
        }
        if !(1..=4096).contains(&p.max_seqs) || !(1..=65536).contains(&p.max_tokens) {
            bail!("--batch-size must be from 1 to 4096 and --batch-tokens from 1 to 65536 (got {} and {})", p.max_seqs, p.max_tokens);
        }
        Ok(p)
    }

    fn load(&self) -> anyhow::Result<Option<Loaded>> {
        if self.m.list_devices {
            common::list_devices(&self.m)?;
            return Ok(None);
        }
        Ok(Some(common::load(&self.m)?))
    }
}

/// Context and continuation tokens: the continuation is the tail of `context + continuation`
/// after the context's tokens (lm-evaluation-harness's rule: a word is tokenized as it is in
/// running text), with trailing spaces of the context moved to the continuation; separately
/// encoded when the joint tokens do not start with the context's.
fn split_tokens(l: &Loaded, context: &str, continuation: &str) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    l.tok.split_continuation(context, continuation).context("cannot tokenize the context and continuation")
}

/// Text from a file, fit to print on one line: control characters escaped.
fn printable(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') { c.escape_unicode().collect::<Vec<_>>() } else { vec![c] }).collect()
}

fn fmt_se(se: Option<f64>) -> String {
    se.map_or("n/a (one draw)".into(), |s| format!("{s:.4}"))
}

fn cost_json(c: &Cost) -> serde_json::Value {
    json!({"passes": c.passes, "masked_copies": c.copies, "masked_rows": c.masked_rows, "tokens": c.tokens, "seconds": c.seconds})
}

fn likelihood(a: LikelihoodArgs) -> anyhow::Result<()> {
    let Some(mut l) = a.c.load()? else { return Ok(()) };
    let p = a.c.params(&l, 32, 8)?;
    let (ctx, cont) = split_tokens(&l, &a.context, &a.continuation)?;
    if cont.is_empty() {
        bail!("--continuation is empty: nothing to score");
    }
    let suffix = l.suffix(&a.suffix)?;
    let target = Target::new(&ctx, &cont, &suffix);
    check_ctx(&l, target.tokens.len(), "context + continuation + suffix")?;
    let (r, cost) = score::likelihoods(&mut l.model, &[target], &[score::item_seed(p.seed, 0)], &p)?;
    let r = &r[0];
    if a.c.json {
        dlm::outln!("{}", json!({"model": l.path, "levels": p.levels, "draws": p.draws, "seed": p.seed, "context_tokens": ctx.len(), "continuation_tokens": cont.len(), "score": r.score, "score_se": r.score_se, "elbo": r.elbo, "elbo_se": r.elbo_se, "cost": cost_json(&cost)}))?;
    } else {
        dlm::outln!("score: {:.4} ± {} nats per masked token (eval_forward, {} levels × {} draws; lower is better)", r.score, fmt_se(r.score_se), p.levels, p.draws)?;
        dlm::outln!("bound: {:.4} ± {} nats per token (ELBO), perplexity ≤ {:.3}", r.elbo, fmt_se(r.elbo_se), r.elbo.exp())?;
        dlm::outln!("{} continuation tokens after {} context tokens; {} masked copies in {} passes, {:.2} s", cont.len(), ctx.len(), cost.copies, cost.passes, cost.seconds)?;
    }
    Ok(())
}

/// A KL value: six decimals, or three significant digits below 0.001 (f16 against f32 is ~1e-7).
fn kl(v: f64) -> String {
    if v == 0.0 || v >= 1e-3 {
        format!("{v:10.6}")
    } else {
        format!("{v:10.3e}")
    }
}

fn check_ctx(l: &Loaded, n: usize, what: &str) -> anyhow::Result<()> {
    if n > l.n_ctx() {
        bail!("{what} is {n} tokens, more than the model's context of {}", l.n_ctx());
    }
    Ok(())
}

/// An item as read, with its line and task.
struct ItemLine {
    line: usize,
    task: Option<String>,
    item: Item,
}

fn read_items(path: &Path, l: &Loaded, limit: Option<usize>) -> anyhow::Result<Vec<ItemLine>> {
    let text = common::read_text(path, "the items", false)?;
    let mut out = Vec::new();
    let eos = l.tok.eos.unwrap_or(2);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        let at = format!("{} line {}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{at}: not JSON"))?;
        let Some(obj) = v.as_object() else { bail!("{at}: expected a JSON object") };
        if let Some(k) = obj.keys().find(|k| !["context", "choices", "label", "suffix", "n", "task"].contains(&k.as_str())) {
            bail!("{at}: unknown field \"{k}\" (expected context, choices, label, and optionally suffix, n, task)");
        }
        let text_field = |k: &str, required: bool| -> anyhow::Result<Option<String>> {
            match obj.get(k) {
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                None if !required => Ok(None),
                _ => bail!("{at}: field \"{k}\" must be a string"),
            }
        };
        let context = text_field("context", true)?.unwrap_or_default();
        let suffix = text_field("suffix", false)?.unwrap_or_default();
        let task = text_field("task", false)?;
        let choices: Vec<String> = match obj.get("choices") {
            Some(serde_json::Value::Array(c)) if c.len() >= 2 && c.iter().all(|x| x.is_string()) => c.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
            _ => bail!("{at}: field \"choices\" must be an array of at least 2 strings"),
        };
        let label = obj.get("label").and_then(|x| x.as_u64()).filter(|&x| (x as usize) < choices.len());
        let Some(label) = label else { bail!("{at}: field \"label\" must be the index of the right choice, 0 to {}", choices.len() - 1) };
        let n = match obj.get("n") {
            None => None,
            Some(x) => Some(x.as_u64().filter(|&n| (1..=4096).contains(&n)).with_context(|| format!("{at}: field \"n\" must be an integer from 1 to 4096"))? as usize),
        };
        let suffix = l.suffix(&suffix)?;
        // The context's tokens as split_tokens cut them (trailing spaces belong to the choices).
        let mut ctx = Vec::new();
        let mut toks = Vec::new();
        for (k, c) in choices.iter().enumerate() {
            let (c_toks, mut t) = split_tokens(l, &context, c)?;
            ctx = c_toks;
            if t.is_empty() {
                bail!("{at}: choice {k} is empty");
            }
            if let Some(n) = n {
                if t.len() > n {
                    bail!("{at}: choice {k} is {} tokens, more than \"n\": {n}", t.len());
                }
                t.resize(n, eos);
            }
            check_ctx(l, ctx.len() + t.len() + suffix.len(), &format!("{at}: choice {k} with its context"))?;
            toks.push(t);
        }
        out.push(ItemLine { line: i + 1, task, item: Item { context: ctx, choices: toks, suffix, label: label as usize } });
    }
    if out.is_empty() {
        bail!("{}: no items", path.display());
    }
    Ok(out)
}

fn choice(a: ChoiceArgs) -> anyhow::Result<()> {
    let Some(mut l) = a.c.load()? else { return Ok(()) };
    let p = a.c.params(&l, 32, 1)?;
    let items = read_items(&a.items, &l, a.limit)?;
    if let Some(out) = &a.per_item {
        dlm::atomic::check_output(out, &[a.items.clone(), l.path.clone()]).context("--per-item")?;
    }
    // Complete or not at all: a failed run leaves any old file as it was.
    let mut per_item = match &a.per_item {
        Some(path) => {
            let f = AtomicFile::create(path).context("--per-item")?;
            Some(f)
        }
        None => None,
    };
    choose_all(&a, &mut l, &items, &p, per_item.as_mut())?;
    if let Some(f) = per_item {
        f.finish()?;
    }
    Ok(())
}

fn choose_all(a: &ChoiceArgs, l: &mut Loaded, items: &[ItemLine], p: &ScoreParams, mut per_item: Option<&mut AtomicFile>) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let mut cost = Cost::default();
    let mut per_task: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let (mut right, mut done) = (0usize, 0usize);
    // Items in groups whose copies fill about 8 passes: batching across items, progress between.
    // An item's masks are seeded by its line, so grouping does not change any score.
    let copies_per_item = items[0].item.choices.len() * p.levels * p.draws;
    let per_group = (8 * p.max_seqs / copies_per_item).max(1);
    for group in items.chunks(per_group) {
        let its: Vec<Item> = group.iter().map(|g| g.item.clone()).collect();
        let ids: Vec<u64> = group.iter().map(|g| g.line as u64 - 1).collect();
        let (res, c) = score::choose(&mut l.model, &its, &ids, &p).with_context(|| format!("{} scoring {} line {}", l.path.display(), a.items.display(), group[0].line))?;
        cost.add(&c);
        for (g, r) in group.iter().zip(&res) {
            let ok = r.pred == g.item.label;
            right += usize::from(ok);
            done += 1;
            let e = per_task.entry(g.task.clone().unwrap_or_else(|| "all".into())).or_default();
            e.0 += usize::from(ok);
            e.1 += 1;
            if let Some(w) = per_item.as_mut() {
                let scores: Vec<f64> = r.scores.iter().map(|s| s.score).collect();
                let elbos: Vec<f64> = r.scores.iter().map(|s| s.elbo).collect();
                let line = json!({"line": g.line, "task": g.task, "label": g.item.label, "pred": r.pred, "correct": ok, "scores": scores, "elbo": elbos});
                w.write_all(format!("{line}\n").as_bytes())?;
            }
        }
        if tty {
            dlm::errp!("\r{done}/{} items, accuracy {:.1} %", items.len(), 100.0 * right as f64 / done as f64);
        }
    }
    if tty {
        dlm::errln!();
    }
    let acc = |r: usize, n: usize| {
        let a = r as f64 / n as f64;
        (a, (a * (1.0 - a) / n as f64).sqrt())
    };
    let (accuracy, se) = acc(right, done);
    let chance = items.iter().map(|i| 1.0 / i.item.choices.len() as f64).sum::<f64>() / done as f64;
    if a.c.json {
        let tasks: serde_json::Map<String, serde_json::Value> = per_task.iter().map(|(t, &(r, n))| (t.clone(), json!({"items": n, "accuracy": acc(r, n).0, "accuracy_se": acc(r, n).1}))).collect();
        dlm::outln!("{}", json!({"model": l.path, "items": done, "accuracy": accuracy, "accuracy_se": se, "chance": chance, "levels": p.levels, "draws": p.draws, "seed": p.seed, "tasks": tasks, "cost": cost_json(&cost)}))?;
    } else {
        if per_task.len() > 1 {
            for (t, &(r, n)) in &per_task {
                let (a, s) = acc(r, n);
                dlm::outln!("{t:>10}: {:5.1} ± {:4.1} % of {n}", 100.0 * a, 100.0 * s)?;
            }
        }
        dlm::outln!("accuracy: {:.2} ± {:.2} % of {done} items (chance {:.1} %); {} levels × {} draws; {} masked copies in {} passes, {:.2} s", 100.0 * accuracy, 100.0 * se, 100.0 * chance, p.levels, p.draws, cost.copies, cost.passes, cost.seconds)?;
    }
    Ok(())
}

fn perplexity(a: PerplexityArgs) -> anyhow::Result<()> {
    let Some(mut l) = a.c.load()? else { return Ok(()) };
    let limits = a.c.params(&l, 8, 1)?;
    if a.kl_divergence {
        let path = a.kl_divergence_base.as_ref().unwrap();
        let mut base = KldBase::open(path)?;
        if base.header.mask_id != l.mask_id || base.header.shift != l.shift {
            bail!("{}: the base was scored with mask id {} and shift {}, this model resolves mask id {} and shift {} (set --mask-id / --shift)", path.display(), base.header.mask_id, base.header.shift, l.mask_id, l.shift);
        }
        if let Some(t) = base.header.windows.iter().map(|w| w.tokens.len()).max().filter(|&n| n > l.n_ctx()) {
            bail!("{}: windows of {t} tokens exceed this model's context of {}", path.display(), l.n_ctx());
        }
        let n_win = base.header.windows.len();
        let tty = std::io::stderr().is_terminal();
        let (s, cost) = score::kld_compare(&mut l.model, &mut base, &limits, |i| {
            if tty {
                dlm::errp!("\r[{}/{n_win}] windows compared", i + 1);
            }
        })?;
        if tty {
            dlm::errln!();
        }
        if a.c.json {
            dlm::outln!("{}", json!({"model": l.path, "base": path, "base_model": base.header.model, "kld": s, "cost": cost_json(&cost)}))?;
        } else {
            dlm::outln!("base: {} ({} windows, {} masked rows)", printable(&base.header.model), s.windows, s.rows)?;
            dlm::outln!("====== Score ======")?;
            dlm::outln!("score base: {:.4}  this: {:.4}  Δ: {:+.4} ± {:.4}", s.score_base, s.score, s.score - s.score_base, s.score_delta_se)?;
            dlm::outln!("bound base: {:.4}  this: {:.4} nats/token (PPL ≤ {:.3} vs {:.3})", s.elbo_base, s.elbo, s.elbo_base.exp(), s.elbo.exp())?;
            dlm::outln!("====== KL divergence statistics ======")?;
            dlm::outln!("Mean    KLD: {} ± {}", kl(s.mean_kld), kl(s.mean_kld_se))?;
            for (q, v) in &s.percentiles {
                let name = match *q {
                    100.0 => "Maximum".to_string(),
                    0.0 => "Minimum".to_string(),
                    q => format!("{q:.1}%"),
                };
                dlm::outln!("{name:<7} KLD: {}", kl(*v))?;
            }
            dlm::outln!("====== Token probability statistics ======")?;
            dlm::outln!("Same top p: {:7.3} ± {:5.3} %", 100.0 * s.same_top1, 100.0 * s.same_top1_se)?;
            dlm::outln!("{} masked copies in {} passes, {:.2} s", cost.copies, cost.passes, cost.seconds)?;
        }
        return Ok(());
    }
    let file = a.file.as_ref().context("-f FILE is required (the text to score)")?;
    let text = common::read_text(file, "the text", false)?;
    let ctx = a.ctx.unwrap_or(l.n_ctx().min(512));
    if ctx < 2 || ctx > l.n_ctx() {
        bail!("--ctx-size must be from 2 to the model's context of {}, got {ctx}", l.n_ctx());
    }
    let mut wins = if a.per_line {
        let mut w = Vec::new();
        for line in text.lines().filter(|x| !x.trim().is_empty()) {
            let mut tokens = l.prefix(line)?;
            tokens.truncate(ctx);
            if tokens.len() >= 2 {
                let scored = (0..tokens.len()).map(|i| i > 0).collect();
                w.push(Target { tokens, scored });
            }
        }
        if w.is_empty() {
            bail!("{}: no line with a token to score", file.display());
        }
        w
    } else {
        let mut tokens = l.tok.encode(&text)?;
        if l.tok.add_bos && l.tok.bos.is_some() && tokens.first() == l.tok.bos.as_ref() {
            tokens.remove(0);
        }
        score::windows(&tokens, l.tok.bos, ctx).with_context(|| file.display().to_string())?
    };
    if let Some(n) = a.chunks {
        wins.truncate(n as usize);
    }
    let n_targets: usize = wins.iter().map(|w| w.n_scored()).sum();
    if let Some(path) = &a.kl_divergence_base {
        score::check_destination(path).context("--kl-divergence-base")?;
        // Expected rows: every target is masked at level t with probability t/T.
        let rows = n_targets as f64 * (limits.levels + 1) as f64 / 2.0 * limits.draws as f64;
        dlm::errln!("writing about {:.2} GB of distributions to {}", rows * (8.0 + 2.0 * l.model.params().n_vocab as f64) / 1e9, path.display());
    }
    dlm::errln!("perplexity: {} windows of ≤ {ctx} tokens ({n_targets} targets), {} levels × {} draws", wins.len(), limits.levels, limits.draws);
    let (mut vals, mut weights) = (Vec::new(), Vec::new());
    let mut report = |i: usize, r: &Likelihood| {
        vals.push(r.elbo);
        weights.push(wins[i].n_scored());
        dlm::errp!("[{}]{:.4},", i + 1, score::weighted_mean_se(&vals, &weights).0.exp());
        if i + 1 == wins.len() {
            dlm::errln!();
        }
    };
    let (res, cost) = match &a.kl_divergence_base {
        Some(path) => score::kld_save(&mut l.model, &wins, &limits, &l.path.display().to_string(), path, &mut report)?,
        None => score::likelihoods_of_windows(&mut l.model, &wins, &limits, &mut report)?,
    };
    let elbos: Vec<f64> = res.iter().map(|r| r.elbo).collect();
    let scores: Vec<f64> = res.iter().map(|r| r.score).collect();
    let (b, b_se) = score::weighted_mean_se(&elbos, &weights);
    let (sc, sc_se) = score::mean_se(&scores);
    let ppl = b.exp();
    let ppl_se = b_se.map(|s| s * ppl);
    if a.c.json {
        dlm::outln!("{}", json!({"model": l.path, "windows": wins.len(), "ctx": ctx, "targets": n_targets, "levels": limits.levels, "draws": limits.draws, "seed": limits.seed, "elbo": b, "elbo_se": b_se, "ppl_bound": ppl, "ppl_bound_se": ppl_se, "score": sc, "score_se": sc_se, "kl_divergence_base": a.kl_divergence_base, "cost": cost_json(&cost)}))?;
    } else {
        dlm::outln!("Final estimate: PPL ≤ {ppl:.4} ± {} (bound {b:.4} nats/token over {n_targets} tokens); eval_forward score {sc:.4} ± {}", ppl_se.map_or("n/a".into(), |s| format!("{s:.4}")), fmt_se(sc_se))?;
        dlm::outln!("{} windows, {} masked copies in {} passes, {:.2} s", wins.len(), cost.copies, cost.passes, cost.seconds)?;
        if let Some(path) = &a.kl_divergence_base {
            dlm::outln!("saved the base distributions to {} (compare another file with --kl-divergence-base {} --kl-divergence)", path.display(), path.display())?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(common::init());
    dlm::cli::install();
    let r = match (cli.mode, cli.completions) {
        (_, Some(shell)) => dlm::cli::print_completions(common::command::<Cli>(), shell),
        (Some(Mode::Likelihood(a)), None) => likelihood(a),
        (Some(Mode::Choice(a)), None) => choice(a),
        (Some(Mode::Perplexity(a)), None) => perplexity(a),
        (None, None) => Err(anyhow::anyhow!("a mode is required: likelihood, choice or perplexity (--help explains each)")),
    };
    dlm::cli::exit(r)
}
