//! Scoring text with a diffusion LM the way the DiffuLLaMA paper does: a diffusion likelihood of
//! a continuation given a context, multiple choice by the lowest score, a perplexity bound over
//! windows of text, and the KL divergence between two files of one model.
//!
//! **The likelihood** is the authors' `eval_forward`: for the levels t = T … 1, each target
//! token is masked with probability t/T (the context stays), the model runs on the masked copy,
//! and the level's loss is the cross-entropy of the masked tokens (read from the previous
//! position's logits when the model shifts them), averaged per masked token; a level with
//! nothing masked counts 0. The *score* is the mean over the T levels (lower is better). Beside
//! it, the 1/t-weighted bound: `(1/T) Σ_t (T/t) Σ_masked CE / n_targets`, a Monte Carlo estimate
//! of the ELBO, an upper bound on the negative log-likelihood in nats per target token (its
//! exponential bounds the perplexity). `draws` repeats the T levels with fresh masks; the
//! standard errors are over those draws.
//!
//! Masks are seeded per (item, draw, level, position), independently of batching and of the
//! order positions are visited; the choices of one multiple-choice item share their item's seed
//! (common random numbers: their masks coincide where their positions do, which makes the
//! comparison between them less noisy). Every masked copy of a batch of targets runs in as few
//! forward passes as the limits allow ([`ScoreParams::max_seqs`], [`ScoreParams::max_tokens`]),
//! with the LM head on the masked rows only.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::sample::Rng;
use crate::{Error, Result};

/// What scoring needs from a model: the logits of chosen rows of a batch of sequences.
pub trait BatchForward {
    fn n_vocab(&self) -> usize;
    /// Logits of the rows `rows[i]` of each sequence `seqs[i]`, sequence after sequence
    /// (`Σ rows[i].len() × n_vocab`), each sequence attending only to itself.
    fn forward_batch(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<f32>>;
}

#[cfg(feature = "ggml")]
impl BatchForward for crate::Model {
    fn n_vocab(&self) -> usize {
        self.params().n_vocab
    }
    fn forward_batch(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<f32>> {
        crate::Model::forward_batch(self, seqs, rows)
    }
}

/// llama.cpp's own `llama_decode`, one full decode per sequence (the peer's cost: one decode
/// per masked copy), rows picked from its logits.
#[cfg(feature = "ggml")]
impl BatchForward for crate::backend::ggml::LlamaCpp {
    fn n_vocab(&self) -> usize {
        crate::backend::ggml::LlamaCpp::n_vocab(self)
    }
    fn forward_batch(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<f32>> {
        let n_vocab = BatchForward::n_vocab(self);
        let mut out = Vec::new();
        for (s, rs) in seqs.iter().zip(rows) {
            let all = self.forward(s)?;
            for &r in *rs {
                out.extend_from_slice(&all[r * n_vocab..(r + 1) * n_vocab]);
            }
        }
        Ok(out)
    }
}

/// How targets are masked and batched.
#[derive(Clone, Debug)]
pub struct ScoreParams {
    /// T: the masking levels t/T for t = T … 1 (the authors' `diffusion_steps`, 32 in their
    /// evaluation).
    pub levels: usize,
    /// Independent repetitions of the T levels (standard errors need at least 2).
    pub draws: usize,
    pub seed: u64,
    pub mask_id: u32,
    /// Position i's logits predict token i + 1 (DiffuLLaMA, DiffuGPT, Dream).
    pub shift: bool,
    /// Most sequences in one forward pass.
    pub max_seqs: usize,
    /// Most tokens in one forward pass (a longer sequence runs alone).
    pub max_tokens: usize,
}

impl Default for ScoreParams {
    fn default() -> Self {
        ScoreParams { levels: 32, draws: 1, seed: 0, mask_id: crate::keys::DIFFULLAMA_MASK_ID, shift: true, max_seqs: 32, max_tokens: 4096 }
    }
}

impl ScoreParams {
    fn check(&self) -> Result<()> {
        if self.levels == 0 || self.draws == 0 || self.max_seqs == 0 || self.max_tokens == 0 {
            return Err(Error::Invalid(format!(
                "scoring needs at least one level, one draw and room for one sequence per pass (levels {}, draws {}, max_seqs {}, max_tokens {})",
                self.levels, self.draws, self.max_seqs, self.max_tokens
            )));
        }
        Ok(())
    }
}

/// A sequence to score: its clean tokens, and which of them are targets (masked at random and
/// scored). The rest is context: it stays as it is in every copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub tokens: Vec<u32>,
    pub scored: Vec<bool>,
}

impl Target {
    /// `context` + `continuation` (scored) + `suffix` (context again, as in infilling).
    pub fn new(context: &[u32], continuation: &[u32], suffix: &[u32]) -> Target {
        let tokens = [context, continuation, suffix].concat();
        let mut scored = vec![false; tokens.len()];
        scored[context.len()..context.len() + continuation.len()].fill(true);
        Target { tokens, scored }
    }

    pub fn n_scored(&self) -> usize {
        self.scored.iter().filter(|&&s| s).count()
    }

    fn check(&self, p: &ScoreParams, n_vocab: usize) -> Result<()> {
        if self.tokens.is_empty() || self.tokens.len() != self.scored.len() {
            return Err(Error::Invalid(format!("a target needs tokens and one flag per token ({} tokens, {} flags)", self.tokens.len(), self.scored.len())));
        }
        if self.n_scored() == 0 {
            return Err(Error::Invalid("a target has no token to score (empty continuation)".into()));
        }
        if p.shift && self.scored[0] {
            return Err(Error::Invalid("with shifted logits the first token cannot be scored (nothing precedes it): start with a context token such as BOS".into()));
        }
        if let Some(&bad) = self.tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::Invalid(format!("token id {bad} is outside the {n_vocab}-token vocabulary")));
        }
        Ok(())
    }
}

/// One masked copy of a target: level t (masking probability t/T), draw d, and the masked
/// positions in increasing order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub level: usize,
    pub draw: usize,
    pub masked: Vec<usize>,
}

/// The seed of item `index` (every choice of one item shares it).
pub fn item_seed(seed: u64, index: u64) -> u64 {
    Rng::for_position(seed, index, u64::MAX).next_u64()
}

/// The masked copies of `target` for every draw and level, draw-major with levels T … 1 (the
/// order of `eval_forward`). Position j of level t in draw d is masked when its own uniform draw
/// is below t/T, so level T masks every target.
pub fn draw_masks(target: &Target, p: &ScoreParams, seed: u64) -> Vec<Copy> {
    let mut copies = Vec::with_capacity(p.draws * p.levels);
    for draw in 0..p.draws {
        for level in (1..=p.levels).rev() {
            let rate = level as f64 / p.levels as f64;
            let stream = (draw * p.levels + level) as u64;
            let masked = (0..target.tokens.len()).filter(|&j| target.scored[j] && Rng::for_position(seed, stream, j as u64).uniform() < rate).collect();
            copies.push(Copy { level, draw, masked });
        }
    }
    copies
}

/// The canvas of a copy: the target with its masked positions set to the mask token.
pub fn masked_canvas(target: &Target, copy: &Copy, mask_id: u32) -> Vec<u32> {
    let mut canvas = target.tokens.clone();
    for &j in &copy.masked {
        canvas[j] = mask_id;
    }
    canvas
}

/// The logits row that predicts position `j`.
fn row_of(j: usize, shift: bool) -> usize {
    if shift {
        j - 1
    } else {
        j
    }
}

/// Work done by a scoring run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub passes: usize,
    pub copies: usize,
    pub masked_rows: usize,
    pub tokens: usize,
    pub seconds: f64,
}

impl Cost {
    pub fn add(&mut self, o: &Cost) {
        self.passes += o.passes;
        self.copies += o.copies;
        self.masked_rows += o.masked_rows;
        self.tokens += o.tokens;
        self.seconds += o.seconds;
    }
}

/// Runs every copy (`jobs[k] = (target, copy)`) through the model in batched passes and calls
/// `on_row(k, i, row)` for the i-th masked position of job k with the logits that predict it, in
/// job order. Copies with nothing masked take no pass.
pub fn run_copies<F: BatchForward + ?Sized>(
    fwd: &mut F,
    jobs: &[(&Target, &Copy)],
    p: &ScoreParams,
    mut on_row: impl FnMut(usize, usize, &[f32]) -> Result<()>,
) -> Result<Cost> {
    p.check()?;
    let n_vocab = fwd.n_vocab();
    if p.mask_id as usize >= n_vocab {
        return Err(Error::Invalid(format!("mask id {} is outside the {n_vocab}-token vocabulary", p.mask_id)));
    }
    let t0 = std::time::Instant::now();
    let mut cost = Cost { copies: jobs.len(), ..Default::default() };
    let todo: Vec<usize> = (0..jobs.len()).filter(|&k| !jobs[k].1.masked.is_empty()).collect();
    let mut at = 0;
    while at < todo.len() {
        // The next pass: as many jobs as fit the limits, at least one.
        let mut end = at;
        let mut tokens = 0;
        while end < todo.len() && end - at < p.max_seqs {
            let len = jobs[todo[end]].0.tokens.len();
            if end > at && tokens + len > p.max_tokens {
                break;
            }
            tokens += len;
            end += 1;
        }
        let batch = &todo[at..end];
        let canvases: Vec<Vec<u32>> = batch.iter().map(|&k| masked_canvas(jobs[k].0, jobs[k].1, p.mask_id)).collect();
        let rows: Vec<Vec<usize>> = batch.iter().map(|&k| jobs[k].1.masked.iter().map(|&j| row_of(j, p.shift)).collect()).collect();
        let seqs: Vec<&[u32]> = canvases.iter().map(|c| c.as_slice()).collect();
        let row_refs: Vec<&[usize]> = rows.iter().map(|r| r.as_slice()).collect();
        let logits = fwd.forward_batch(&seqs, &row_refs)?;
        let n_rows: usize = rows.iter().map(|r| r.len()).sum();
        if logits.len() != n_rows * n_vocab {
            return Err(Error::Invalid(format!("the model returned {} logits for {n_rows} rows of {n_vocab}", logits.len())));
        }
        if let Some(v) = logits.iter().find(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!("the model produced a non-finite logit ({v}): its weights or metadata are corrupt")));
        }
        let mut r = 0;
        for (&k, rows) in batch.iter().zip(&rows) {
            for i in 0..rows.len() {
                on_row(k, i, &logits[r * n_vocab..(r + 1) * n_vocab])?;
                r += 1;
            }
        }
        cost.passes += 1;
        cost.masked_rows += n_rows;
        cost.tokens += tokens;
        at = end;
    }
    cost.seconds = t0.elapsed().as_secs_f64();
    Ok(cost)
}

/// `log Σ exp(row)` and `row[label]`, in f64; an error for non-finite logits.
fn log_sum_exp(row: &[f32]) -> Result<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if !max.is_finite() || row.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid("the model produced non-finite logits (NaN or infinity): the weights or the metadata are broken".into()));
    }
    let s: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    Ok(max as f64 + s.ln())
}

/// Cross-entropy of `label` under the logits `row`, in nats.
pub fn cross_entropy(row: &[f32], label: u32) -> Result<f64> {
    Ok(log_sum_exp(row)? - row[label as usize] as f64)
}

/// A diffusion likelihood (see the module notes); lower is better.
#[derive(Clone, Debug, PartialEq)]
pub struct Likelihood {
    /// `eval_forward`: the mean over levels of the mean cross-entropy of the masked tokens,
    /// averaged over draws.
    pub score: f64,
    /// Its standard error over draws (`None` with one draw).
    pub score_se: Option<f64>,
    /// The 1/t-weighted bound on the negative log-likelihood, nats per target token.
    pub elbo: f64,
    pub elbo_se: Option<f64>,
    /// Target tokens.
    pub n_scored: usize,
    /// Per draw: (score, elbo).
    pub draws: Vec<(f64, f64)>,
}

/// Mean and standard error of the mean (`None` for fewer than two values).
pub fn mean_se(v: &[f64]) -> (f64, Option<f64>) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, None);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, Some((var / n).sqrt()))
}

/// Per-copy sums of cross-entropy, folded into a [`Likelihood`].
fn fold_likelihood(target: &Target, copies: &[Copy], ce_sums: &[f64], p: &ScoreParams) -> Likelihood {
    let n_scored = target.n_scored();
    let t = p.levels as f64;
    let mut draws = vec![(0.0, 0.0); p.draws];
    for (c, &sum) in copies.iter().zip(ce_sums) {
        let d = &mut draws[c.draw];
        if !c.masked.is_empty() {
            d.0 += sum / c.masked.len() as f64 / t;
            d.1 += (t / c.level as f64) * sum / n_scored as f64 / t;
        }
    }
    let (score, score_se) = mean_se(&draws.iter().map(|d| d.0).collect::<Vec<_>>());
    let (elbo, elbo_se) = mean_se(&draws.iter().map(|d| d.1).collect::<Vec<_>>());
    Likelihood { score, score_se, elbo, elbo_se, n_scored, draws }
}

/// The likelihood of each target, with `seeds[i]` seeding target i's masks; every copy of every
/// target runs in shared batched passes.
pub fn likelihoods<F: BatchForward + ?Sized>(fwd: &mut F, targets: &[Target], seeds: &[u64], p: &ScoreParams) -> Result<(Vec<Likelihood>, Cost)> {
    if seeds.len() != targets.len() {
        return Err(Error::Invalid(format!("{} seeds for {} targets", seeds.len(), targets.len())));
    }
    let n_vocab = fwd.n_vocab();
    for (i, t) in targets.iter().enumerate() {
        t.check(p, n_vocab).map_err(|e| Error::Invalid(format!("target {i}: {e}")))?;
    }
    let copies: Vec<Vec<Copy>> = targets.iter().zip(seeds).map(|(t, &s)| draw_masks(t, p, s)).collect();
    let mut out = Vec::with_capacity(targets.len());
    let cost = score_groups(fwd, targets, &copies, p, targets.len(), |_, row, label| cross_entropy(row, label), |_, l| out.push(l))?;
    Ok((out, cost))
}

/// Windows `i` seeded by [`item_seed`]`(p.seed, i)`, scored a group at a time (as many windows
/// as fill one pass; masks are drawn per group, so memory stays that of one group):
/// `progress(i, likelihood)` after each window.
pub fn likelihoods_of_windows<F: BatchForward + ?Sized>(fwd: &mut F, windows: &[Target], p: &ScoreParams, mut progress: impl FnMut(usize, &Likelihood)) -> Result<(Vec<Likelihood>, Cost)> {
    let mut out = Vec::with_capacity(windows.len());
    let mut cost = Cost::default();
    let group = per_pass(p);
    for (g, chunk) in windows.chunks(group).enumerate() {
        let first = g * group;
        let copies = window_masks(fwd, chunk, first, p)?;
        let c = score_groups(fwd, chunk, &copies, p, chunk.len(), |_, row, label| cross_entropy(row, label), |i, l| {
            progress(first + i, &l);
            out.push(l)
        })?;
        cost.add(&c);
    }
    Ok((out, cost))
}

/// Windows per group: those whose copies fill one pass.
fn per_pass(p: &ScoreParams) -> usize {
    (p.max_seqs / (p.levels * p.draws)).max(1)
}

/// The masks of `windows`, which are windows `first`, `first + 1`, … of the text.
fn window_masks<F: BatchForward + ?Sized>(fwd: &F, windows: &[Target], first: usize, p: &ScoreParams) -> Result<Vec<Vec<Copy>>> {
    let n_vocab = fwd.n_vocab();
    windows
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let i = first + i;
            t.check(p, n_vocab).map_err(|e| Error::Invalid(format!("window {i}: {e}")))?;
            Ok(draw_masks(t, p, item_seed(p.seed, i as u64)))
        })
        .collect()
}

/// Scores `targets` (with their `copies`) `group` targets at a time. `ce(target, row, label)`
/// sees every masked row in order (target, copy, position) and returns its cross-entropy;
/// `done(i, likelihood)` follows each target, in order.
fn score_groups<F: BatchForward + ?Sized>(
    fwd: &mut F,
    targets: &[Target],
    copies: &[Vec<Copy>],
    p: &ScoreParams,
    group: usize,
    mut ce: impl FnMut(usize, &[f32], u32) -> Result<f64>,
    mut done: impl FnMut(usize, Likelihood),
) -> Result<Cost> {
    p.check()?;
    let mut cost = Cost::default();
    let mut first = 0;
    while first < targets.len() {
        let end = (first + group.max(1)).min(targets.len());
        let mut jobs = Vec::new();
        let mut owner = Vec::new();
        for i in first..end {
            for (c_i, c) in copies[i].iter().enumerate() {
                jobs.push((&targets[i], c));
                owner.push((i, c_i));
            }
        }
        let mut sums: Vec<Vec<f64>> = (first..end).map(|i| vec![0.0; copies[i].len()]).collect();
        let c = run_copies(fwd, &jobs, p, |k, r, row| {
            let (i, c_i) = owner[k];
            let label = targets[i].tokens[copies[i][c_i].masked[r]];
            sums[i - first][c_i] += ce(i, row, label)?;
            Ok(())
        })?;
        cost.add(&c);
        for i in first..end {
            done(i, fold_likelihood(&targets[i], &copies[i], &sums[i - first], p));
        }
        first = end;
    }
    Ok(cost)
}

/// One multiple-choice item: a context, its choices (each a continuation scored after the
/// context, then `suffix`), and the index of the right one.
#[derive(Clone, Debug)]
pub struct Item {
    pub context: Vec<u32>,
    pub choices: Vec<Vec<u32>>,
    pub suffix: Vec<u32>,
    pub label: usize,
}

/// The scores of an item's choices and the one picked (lowest score; ties to the first).
#[derive(Clone, Debug)]
pub struct Choice {
    pub scores: Vec<Likelihood>,
    pub pred: usize,
}

/// Scores every choice of every item (batched together), item i's masks seeded by
/// [`item_seed`]`(p.seed, ids[i])`: an item scores the same whichever items share its passes.
pub fn choose<F: BatchForward + ?Sized>(fwd: &mut F, items: &[Item], ids: &[u64], p: &ScoreParams) -> Result<(Vec<Choice>, Cost)> {
    if ids.len() != items.len() {
        return Err(Error::Invalid(format!("{} ids for {} items", ids.len(), items.len())));
    }
    let mut targets = Vec::new();
    let mut seeds = Vec::new();
    for (it, &id) in items.iter().zip(ids) {
        if it.choices.len() < 2 || it.label >= it.choices.len() {
            return Err(Error::Invalid(format!("item {id}: needs at least 2 choices and a label among them ({} choices, label {})", it.choices.len(), it.label)));
        }
        for c in &it.choices {
            targets.push(Target::new(&it.context, c, &it.suffix));
            seeds.push(item_seed(p.seed, id));
        }
    }
    let (scores, cost) = likelihoods(fwd, &targets, &seeds, p)?;
    let mut scores = scores.into_iter();
    let out = items
        .iter()
        .map(|it| {
            let s: Vec<Likelihood> = scores.by_ref().take(it.choices.len()).collect();
            let pred = (0..s.len()).fold(0, |b, k| if s[k].score < s[b].score { k } else { b });
            Choice { scores: s, pred }
        })
        .collect();
    Ok((out, cost))
}

/// Splits a token stream into windows of at most `ctx` tokens for a perplexity bound: each is
/// `bos` (context) followed by the next `ctx - 1` tokens (targets), as `llama-perplexity` puts
/// BOS at the start of every chunk. Without a BOS token the first token of each window is the
/// context. A trailing piece shorter than half a window is dropped, unless it is the only one.
pub fn windows(tokens: &[u32], bos: Option<u32>, ctx: usize) -> Result<Vec<Target>> {
    let body = usize::from(bos.is_none());
    if ctx < 2 {
        return Err(Error::Invalid(format!("a perplexity window needs at least 2 tokens, got {ctx}")));
    }
    let step = if bos.is_some() { ctx - 1 } else { ctx };
    let mut out = Vec::new();
    for chunk in tokens.chunks(step) {
        if chunk.len() <= body || (!out.is_empty() && chunk.len() < step / 2) {
            continue;
        }
        let mut t = Vec::with_capacity(ctx);
        t.extend(bos);
        t.extend_from_slice(chunk);
        let mut scored = vec![true; t.len()];
        scored[0] = false;
        out.push(Target { tokens: t, scored });
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!("the text has {} tokens: too few to score", tokens.len())));
    }
    Ok(out)
}

/// A token-weighted mean of per-window values with its standard error (windows as the units).
pub fn weighted_mean_se(values: &[f64], weights: &[usize]) -> (f64, Option<f64>) {
    let w: f64 = weights.iter().map(|&w| w as f64).sum();
    let mean = values.iter().zip(weights).map(|(v, &n)| v * n as f64).sum::<f64>() / w;
    let k = values.len() as f64;
    if values.len() < 2 {
        return (mean, None);
    }
    let var = values.iter().zip(weights).map(|(v, &n)| (n as f64 * (v - mean)).powi(2)).sum::<f64>() / (w * w) * k / (k - 1.0);
    (mean, Some(var.sqrt()))
}

// --- KL divergence between two files of one model -------------------------------------------

const KLD_MAGIC: &[u8; 8] = b"DLMKLD1\n";

/// What a base file holds besides the rows: the masked canvases, exactly, so the second pass
/// needs neither the text nor the masking RNG.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KldHeader {
    pub model: String,
    pub n_vocab: usize,
    pub mask_id: u32,
    pub shift: bool,
    pub levels: usize,
    pub draws: usize,
    pub seed: u64,
    pub windows: Vec<KldWindow>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KldWindow {
    pub tokens: Vec<u32>,
    pub scored: Vec<bool>,
    /// (level, draw, masked positions) per copy.
    pub copies: Vec<(usize, usize, Vec<usize>)>,
}

impl KldWindow {
    fn target(&self) -> Target {
        Target { tokens: self.tokens.clone(), scored: self.scored.clone() }
    }
    fn copies(&self) -> Vec<Copy> {
        self.copies.iter().map(|(l, d, m)| Copy { level: *l, draw: *d, masked: m.clone() }).collect()
    }
}

/// A row's log-probabilities stored in 16 bits: (min, max) as f32 and each value as the nearest
/// of 65536 steps between them (llama-perplexity's scheme). Both sides of a comparison pass
/// through the same encoding, so a file compared with itself gives exactly 0.
fn encode_row(row: &[f32], out: &mut Vec<u8>) -> Result<()> {
    let lse = log_sum_exp(row)?;
    let lp: Vec<f64> = row.iter().map(|&v| v as f64 - lse).collect();
    let lo = lp.iter().fold(f64::INFINITY, |m, &v| m.min(v)) as f32;
    let hi = lp.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v)) as f32;
    out.extend_from_slice(&lo.to_le_bytes());
    out.extend_from_slice(&hi.to_le_bytes());
    let scale = if hi > lo { 65535.0 / (hi as f64 - lo as f64) } else { 0.0 };
    for v in lp {
        let q = ((v - lo as f64) * scale).round().clamp(0.0, 65535.0) as u16;
        out.extend_from_slice(&q.to_le_bytes());
    }
    Ok(())
}

/// Log-probabilities back from [`encode_row`], renormalized.
fn decode_row(bytes: &[u8], out: &mut Vec<f64>) -> Result<()> {
    let lo = f32::from_le_bytes(bytes[0..4].try_into().unwrap()) as f64;
    let hi = f32::from_le_bytes(bytes[4..8].try_into().unwrap()) as f64;
    if !(lo.is_finite() && hi.is_finite() && lo <= hi && hi <= 1e-3) {
        return Err(Error::Invalid(format!("a stored row's range {lo}..{hi} is not one of log-probabilities")));
    }
    let step = (hi - lo) / 65535.0;
    out.clear();
    out.extend(bytes[8..].chunks_exact(2).map(|c| lo + u16::from_le_bytes([c[0], c[1]]) as f64 * step));
    let max = out.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let lse = max + out.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    out.iter_mut().for_each(|v| *v -= lse);
    Ok(())
}

fn row_bytes(n_vocab: usize) -> usize {
    8 + 2 * n_vocab
}

/// First pass: scores `windows` (as [`likelihoods_of_windows`] does) and writes every masked
/// row's distribution to `path` (an [`crate::atomic::AtomicFile`]: complete or not at all).
pub fn kld_save<F: BatchForward + ?Sized>(fwd: &mut F, windows: &[Target], p: &ScoreParams, model: &str, path: &Path, mut progress: impl FnMut(usize, &Likelihood)) -> Result<(Vec<Likelihood>, Cost)> {
    p.check()?;
    let n_vocab = fwd.n_vocab();
    check_destination(path)?;
    let copies = window_masks(fwd, windows, 0, p)?;
    let rows: u64 = copies.iter().flatten().map(|c| c.masked.len() as u64).sum();
    let bytes = rows.saturating_mul(row_bytes(n_vocab) as u64);
    if bytes > MAX_BASE_BYTES {
        return Err(Error::Invalid(format!("{}: the base would hold {rows} rows, {} GB: more than 1 TB (fewer --levels, --draws or --chunks)", path.display(), bytes / 1_000_000_000)));
    }
    let header = KldHeader {
        model: model.to_string(),
        n_vocab,
        mask_id: p.mask_id,
        shift: p.shift,
        levels: p.levels,
        draws: p.draws,
        seed: p.seed,
        windows: windows
            .iter()
            .zip(&copies)
            .map(|(t, cs)| KldWindow { tokens: t.tokens.clone(), scored: t.scored.clone(), copies: cs.iter().map(|c| (c.level, c.draw, c.masked.clone())).collect() })
            .collect(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| Error::Invalid(format!("KL header: {e}")))?;
    let mut w = crate::atomic::AtomicFile::create(path)?;
    w.write_all(KLD_MAGIC)?;
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(row_bytes(n_vocab));
    let ce = |_: usize, row: &[f32], label: u32| {
        buf.clear();
        encode_row(row, &mut buf)?;
        w.write_all(&buf)?;
        cross_entropy(row, label)
    };
    let cost = score_groups(fwd, windows, &copies, p, per_pass(p), ce, |i, l| {
        progress(i, &l);
        out.push(l)
    })?;
    w.finish()?;
    Ok((out, cost))
}

/// A base file is at most this large.
const MAX_BASE_BYTES: u64 = 1 << 40;

/// Where a base may be written: a new file in an existing directory, or an existing base file
/// (replaced when the new one is complete). Anything else there (a model, a text, a device, a
/// link, a directory) is refused, so a slip of the flag cannot destroy it.
pub fn check_destination(path: &Path) -> Result<()> {
    let refuse = |why: &str| Err(Error::Invalid(format!("{}: {why}", path.display())));
    if path.as_os_str().to_string_lossy().ends_with('/') || path.file_name().is_none() {
        return refuse("names a directory, not a file");
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return refuse("its directory does not exist");
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if !m.file_type().is_file() => refuse("exists and is not a regular file: refusing to replace it"),
        Ok(_) => {
            let mut magic = [0u8; 8];
            let is_base = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == KLD_MAGIC;
            if is_base {
                Ok(())
            } else {
                refuse("exists and is not a dlm KL base file: refusing to replace it")
            }
        }
    }
}

/// A base file opened for comparison: its header, checked against the file's length.
pub struct KldBase {
    pub header: KldHeader,
    path: PathBuf,
    reader: BufReader<std::fs::File>,
}

impl KldBase {
    pub fn open(path: &Path) -> Result<KldBase> {
        let bad = |what: String| Error::Invalid(format!("{}: not a dlm KL base file: {what}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(bad("not a regular file (a base is read by its length: no pipes or devices)".into()));
        }
        let len = meta.len();
        let mut reader = BufReader::new(file);
        let mut head = [0u8; 16];
        reader.read_exact(&mut head).map_err(|_| bad(format!("{len} bytes, shorter than its 16-byte start")))?;
        if &head[..8] != KLD_MAGIC {
            return Err(bad("wrong magic (make one with dlm-score perplexity --kl-divergence-base FILE on the base model)".into()));
        }
        let json_len = u64::from_le_bytes(head[8..16].try_into().unwrap());
        if json_len > len.saturating_sub(16) {
            return Err(bad(format!("header of {json_len} bytes in a file of {len}")));
        }
        let mut json = vec![0u8; json_len as usize];
        reader.read_exact(&mut json).map_err(|e| Error::io(path, e))?;
        let header: KldHeader = serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
        let h = &header;
        if h.n_vocab == 0 || h.n_vocab > 1 << 24 || !(1..=1024).contains(&h.levels) || !(1..=1024).contains(&h.draws) || h.levels * h.draws > 65536 {
            return Err(bad(format!("n_vocab {} (1 to 2^24), levels {} and draws {} (1 to 1024 each, product at most 65536)", h.n_vocab, h.levels, h.draws)));
        }
        let mut rows: u64 = 0;
        for (i, w) in h.windows.iter().enumerate() {
            let n = w.tokens.len();
            let wbad = |what: String| bad(format!("window {i}: {what}"));
            if n == 0 || w.scored.len() != n || (h.shift && w.scored[0]) {
                return Err(wbad(format!("{n} tokens with {} flags", w.scored.len())));
            }
            if let Some(t) = w.tokens.iter().find(|&&t| t as usize >= h.n_vocab) {
                return Err(wbad(format!("token {t} outside the vocabulary of {}", h.n_vocab)));
            }
            if w.copies.len() != h.levels * h.draws {
                return Err(wbad(format!("{} copies, expected one per level and draw ({})", w.copies.len(), h.levels * h.draws)));
            }
            let mut seen = vec![false; h.levels * h.draws];
            for (l, d, m) in &w.copies {
                if *l == 0 || *l > h.levels || *d >= h.draws || std::mem::replace(&mut seen[d * h.levels + l - 1], true) {
                    return Err(wbad(format!("copy (level {l}, draw {d}) is out of range or repeated")));
                }
                if m.windows(2).any(|p| p[0] >= p[1]) || m.iter().any(|&j| j >= n || !w.scored[j]) {
                    return Err(wbad(format!("copy (level {l}, draw {d}) masks positions that are not increasing targets")));
                }
                rows += m.len() as u64;
            }
        }
        let want = (rows.saturating_mul(row_bytes(h.n_vocab) as u64)).saturating_add(16 + json_len);
        if want != len {
            return Err(bad(format!("{rows} rows of {} tokens need {want} bytes, the file has {len} (truncated or not this format)", h.n_vocab)));
        }
        Ok(KldBase { header, path: path.to_path_buf(), reader })
    }

    /// Score parameters of the base pass, with the batching limits of `limits`.
    pub fn params(&self, limits: &ScoreParams) -> ScoreParams {
        let h = &self.header;
        ScoreParams { levels: h.levels, draws: h.draws, seed: h.seed, mask_id: h.mask_id, shift: h.shift, ..limits.clone() }
    }
}

/// Second pass: the KL divergence of `fwd`'s distributions from the base file's on the same
/// masked canvases.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KldStats {
    pub rows: usize,
    pub windows: usize,
    pub mean_kld: f64,
    pub mean_kld_se: f64,
    /// (percentile, KL) for 100, 99.9, 99, 95, 90, 50, 10, 5, 1, 0.
    pub percentiles: Vec<(f64, f64)>,
    /// Rows whose most likely token is the base's, as a fraction.
    pub same_top1: f64,
    pub same_top1_se: f64,
    /// Mean of the windows' `eval_forward` scores, base and this model, and the difference with
    /// its standard error (paired over windows).
    pub score_base: f64,
    pub score: f64,
    pub score_delta_se: f64,
    /// Token-weighted ELBO bounds (nats/token), base and this model.
    pub elbo_base: f64,
    pub elbo: f64,
}

pub fn kld_compare<F: BatchForward + ?Sized>(fwd: &mut F, base: &mut KldBase, limits: &ScoreParams, mut progress: impl FnMut(usize)) -> Result<(KldStats, Cost)> {
    let p = base.params(limits);
    let n_vocab = fwd.n_vocab();
    if n_vocab != base.header.n_vocab {
        return Err(Error::Invalid(format!("{}: the base model has {} tokens, this one {n_vocab}: KL needs two files of one model", base.path.display(), base.header.n_vocab)));
    }
    let targets: Vec<Target> = base.header.windows.iter().map(|w| w.target()).collect();
    let copies: Vec<Vec<Copy>> = base.header.windows.iter().map(|w| w.copies()).collect();
    let (path, reader) = (&base.path, &mut base.reader);
    let mut kls = Vec::new();
    let mut same = 0usize;
    let mut base_ce = Vec::new();
    let mut buf = vec![0u8; row_bytes(n_vocab)];
    let (mut lp_b, mut lp_o, mut enc) = (Vec::new(), Vec::new(), Vec::new());
    let mut mine = Vec::new();
    let ce = |_: usize, row: &[f32], label: u32| {
        reader.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
        decode_row(&buf, &mut lp_b).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        enc.clear();
        encode_row(row, &mut enc)?;
        decode_row(&enc, &mut lp_o)?;
        let kl: f64 = lp_b.iter().zip(&lp_o).map(|(b, o)| b.exp() * (b - o)).sum::<f64>().max(0.0);
        kls.push(kl);
        let am = |v: &[f64]| (0..v.len()).fold(0, |b, k| if v[k] > v[b] { k } else { b });
        same += usize::from(am(&lp_b) == am(&lp_o));
        base_ce.push(-lp_b[label as usize]);
        Ok(-lp_o[label as usize])
    };
    let cost = score_groups(fwd, &targets, &copies, &p, per_pass(&p), ce, |i, l| {
        mine.push(l);
        progress(i)
    })?;
    if kls.is_empty() {
        return Err(Error::Invalid(format!("{}: no masked rows to compare", base.path.display())));
    }
    // The base's likelihoods from its stored rows, in the same (window, copy, position) order.
    let mut at = 0;
    let based: Vec<Likelihood> = targets
        .iter()
        .zip(&copies)
        .map(|(t, cs)| {
            let sums: Vec<f64> = cs.iter().map(|c| (0..c.masked.len()).map(|_| { at += 1; base_ce[at - 1] }).sum()).collect();
            fold_likelihood(t, cs, &sums, &p)
        })
        .collect();
    let n = kls.len() as f64;
    let (mean_kld, se) = mean_se(&kls);
    let mut sorted = kls.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |q: f64| sorted[((q / 100.0) * (sorted.len() - 1) as f64).round() as usize];
    let percentiles = [100.0, 99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.0].iter().map(|&q| (q, pct(q))).collect();
    let same_top1 = same as f64 / n;
    let scores: Vec<f64> = mine.iter().map(|l| l.score).collect();
    let scores_base: Vec<f64> = based.iter().map(|l| l.score).collect();
    let deltas: Vec<f64> = scores.iter().zip(&scores_base).map(|(a, b)| a - b).collect();
    let weights: Vec<usize> = targets.iter().map(|t| t.n_scored()).collect();
    let stats = KldStats {
        rows: kls.len(),
        windows: targets.len(),
        mean_kld,
        mean_kld_se: se.unwrap_or(0.0),
        percentiles,
        same_top1,
        same_top1_se: (same_top1 * (1.0 - same_top1) / n).sqrt(),
        score_base: mean_se(&scores_base).0,
        score: mean_se(&scores).0,
        score_delta_se: mean_se(&deltas).1.unwrap_or(0.0),
        elbo_base: weighted_mean_se(&based.iter().map(|l| l.elbo).collect::<Vec<_>>(), &weights).0,
        elbo: weighted_mean_se(&mine.iter().map(|l| l.elbo).collect::<Vec<_>>(), &weights).0,
    };
    Ok((stats, cost))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model whose logits at row r of a sequence favour token (sum of the sequence + r) % V,
    /// so every row depends on the whole masked canvas.
    struct Toy(usize);
    impl BatchForward for Toy {
        fn n_vocab(&self) -> usize {
            self.0
        }
        fn forward_batch(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<f32>> {
            let mut out = Vec::new();
            for (s, rs) in seqs.iter().zip(rows) {
                let sum: usize = s.iter().map(|&t| t as usize).sum();
                for &r in *rs {
                    out.extend((0..self.0).map(|v| if v == (sum + r) % self.0 { 3.0 } else { (v % 3) as f32 * 0.1 }));
                }
            }
            Ok(out)
        }
    }

    fn params(levels: usize, draws: usize) -> ScoreParams {
        ScoreParams { levels, draws, seed: 7, mask_id: 9, shift: true, max_seqs: 3, max_tokens: 40 }
    }

    #[test]
    fn masks_follow_the_levels() {
        let t = Target::new(&[1, 2], &[3; 200], &[4]);
        let p = params(4, 2);
        let copies = draw_masks(&t, &p, 5);
        assert_eq!(copies.len(), 8);
        assert_eq!(copies.iter().map(|c| c.level).collect::<Vec<_>>(), [4, 3, 2, 1, 4, 3, 2, 1]);
        assert_eq!(copies[0].masked, (2..202).collect::<Vec<_>>(), "level T masks every target");
        for c in &copies {
            assert!(c.masked.iter().all(|&j| t.scored[j]));
            let frac = c.masked.len() as f64 / 200.0;
            assert!((frac - c.level as f64 / 4.0).abs() < 0.12, "level {} masked {frac}", c.level);
        }
        assert_ne!(copies[1].masked, copies[5].masked, "draws are independent");
        assert_eq!(copies, draw_masks(&t, &p, 5), "seeded");
    }

    #[test]
    fn batching_does_not_change_scores() {
        let targets: Vec<Target> = (0..5).map(|i| Target::new(&[1, 2, 3], &vec![4 + i; 3 + i as usize], &[])).collect();
        let seeds: Vec<u64> = (0..5).map(|i| item_seed(1, i)).collect();
        let (a, ca) = likelihoods(&mut Toy(11), &targets, &seeds, &params(6, 2)).unwrap();
        let one = ScoreParams { max_seqs: 1, ..params(6, 2) };
        let (b, cb) = likelihoods(&mut Toy(11), &targets, &seeds, &one).unwrap();
        assert_eq!(a, b);
        assert!(ca.passes < cb.passes, "{ca:?} vs {cb:?}");
        assert!(a[0].score_se.is_some() && a[0].score > 0.0 && a[0].elbo > 0.0);
    }

    #[test]
    fn kld_of_a_model_with_itself_is_zero_and_a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.kld");
        let wins = windows(&(0..60).map(|i| i % 11).collect::<Vec<u32>>(), Some(1), 16).unwrap();
        let p = params(3, 1);
        kld_save(&mut Toy(11), &wins, &p, "toy", &path, |_, _| {}).unwrap();
        let mut base = KldBase::open(&path).unwrap();
        let (s, _) = kld_compare(&mut Toy(11), &mut base, &p, |_| {}).unwrap();
        assert_eq!(s.mean_kld, 0.0);
        assert_eq!(s.same_top1, 1.0);
        let (s2, _) = kld_compare(&mut Toy(11), &mut KldBase::open(&path).unwrap(), &p, |_| {}).unwrap();
        assert_eq!(s.score, s2.score);
        assert!(matches!(kld_compare(&mut Toy(12), &mut KldBase::open(&path).unwrap(), &p, |_| {}), Err(Error::Invalid(_))));
        let bytes = std::fs::read(&path).unwrap();
        // A header that repeats a copy (same level and draw) is refused, whatever the length.
        let json_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
        let mut h: serde_json::Value = serde_json::from_slice(&bytes[16..16 + json_len]).unwrap();
        let copies = h["windows"][0]["copies"].as_array_mut().unwrap();
        copies[1] = copies[0].clone();
        let j = serde_json::to_vec(&h).unwrap();
        let mut forged = KLD_MAGIC.to_vec();
        forged.extend((j.len() as u64).to_le_bytes());
        forged.extend(&j);
        forged.extend(&bytes[16 + json_len..]);
        let dup = dir.path().join("dup.kld");
        std::fs::write(&dup, forged).unwrap();
        let e = KldBase::open(&dup).err().unwrap().to_string();
        assert!(e.contains("repeated") || e.contains("bytes"), "{e}");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let e = KldBase::open(&path).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
