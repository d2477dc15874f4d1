//! The canvas loop of parallel unmasking: forward → sample every masked position → commit some
//! → repeat, left to right over blocks when `block_length` is set.
//!
//! The canvas is `prefix + [MASK] * n + suffix`; prefix and suffix are fixed (infilling needs no
//! reordering). With `shift_logits` (DiffuLLaMA) the prediction for position p is logits row
//! p − 1, so the prefix must not be empty (it starts with BOS).

use rayon::prelude::*;

use crate::engine::{Engine, SeqId};
use crate::error::{Error, Result};
use crate::sample::{Candidate, Rng, RowCandidates, RowStats, Scores, TokenSampler, Unmasker};
pub use crate::graph::CacheId;

/// Which positions a forward pass computes, and through which key/value cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Every position, nothing kept.
    Full,
    /// Every position, keys and values kept in the cache `cache` (one sequence's, see
    /// [`new_cache_id`]) for later [`Pass::Reuse`] passes on a sequence of the same length.
    Store { cache: CacheId },
    /// Only positions `start..end`; every other position is represented by its keys/values from
    /// the last [`Pass::Store`] into `cache` (an approximation once those positions' context has
    /// changed: Fast-dLLM's prefix and dual caches).
    Reuse { cache: CacheId, start: usize, end: usize },
}

impl Pass {
    /// The first computed position.
    pub fn start(self) -> usize {
        match self {
            Pass::Reuse { start, .. } => start,
            _ => 0,
        }
    }

    /// The key/value cache the pass reads or fills.
    pub fn cache(self) -> Option<CacheId> {
        match self {
            Pass::Full => None,
            Pass::Store { cache } | Pass::Reuse { cache, .. } => Some(cache),
        }
    }
}

/// A key/value cache name no other caller in this process has: each sequence with a cache
/// takes one, so that sequences (and engines) sharing a model never read each other's.
pub fn new_cache_id() -> CacheId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One sequence of [`Forward::forward_seqs`]: its tokens, what the pass computes for it, and
/// which logits rows come back (canvas positions among the computed ones; `None`: every
/// computed position).
#[derive(Clone, Copy, Debug)]
pub struct SeqPass<'a> {
    pub tokens: &'a [u32],
    pub pass: Pass,
    pub rows: Option<&'a [usize]>,
}

/// Anything that maps a token sequence to logits (row-major, `n_vocab` per row).
pub trait Forward {
    /// Logits of every position: `tokens.len() × n_vocab`.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    fn n_vocab(&self) -> usize;
    /// Logits of the positions `rows` (in that order), or of every computed position when
    /// `None`, computing what `pass` says. The default computes everything exactly (a model
    /// without a cache or a restricted LM head) and picks the rows out.
    fn forward_rows(&mut self, tokens: &[u32], pass: Pass, rows: Option<&[usize]>) -> Result<Vec<f32>> {
        let all = self.forward(tokens)?;
        let v = self.n_vocab();
        Ok(match (pass, rows) {
            (_, Some(rows)) => rows.iter().flat_map(|&r| all[r * v..(r + 1) * v].iter().copied()).collect(),
            (Pass::Reuse { start, end, .. }, None) => all[start * v..end * v].to_vec(),
            (_, None) => all,
        })
    }
    /// Logits of the rows `rows[i]` of each sequence `seqs[i]`, sequence after sequence, each
    /// sequence computed in full and on its own. The default runs them one after another; a
    /// model that can batches them into one pass.
    fn forward_batch(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for (tokens, rows) in seqs.iter().zip(rows) {
            out.extend(self.forward_rows(tokens, Pass::Full, Some(rows))?);
        }
        Ok(out)
    }
    /// Logits of several sequences, each under its own [`Pass`] (and key/value cache), sequence
    /// after sequence, each equal to [`Forward::forward_rows`] on it alone. The default: a
    /// batch of full passes goes to [`Forward::forward_batch`], anything else one sequence at a
    /// time; a model that can runs them all in one pass.
    fn forward_seqs(&mut self, seqs: &[SeqPass<'_>]) -> Result<Vec<f32>> {
        if seqs.len() > 1 && seqs.iter().all(|s| s.pass == Pass::Full && s.rows.is_some()) {
            let tokens: Vec<&[u32]> = seqs.iter().map(|s| s.tokens).collect();
            let rows: Vec<&[usize]> = seqs.iter().map(|s| s.rows.expect("checked")).collect();
            return self.forward_batch(&tokens, &rows);
        }
        let mut out = Vec::new();
        for s in seqs {
            out.extend(self.forward_rows(s.tokens, s.pass, s.rows)?);
        }
        Ok(out)
    }
    /// Frees the key/value cache `cache` (its sequence has left). The default: nothing kept.
    fn free_cache(&mut self, cache: CacheId) {
        let _ = cache;
    }
    /// Whether greedy steps take [`Forward::forward_stats`] instead of logits (the model reduces
    /// rows where it computes them). The default: no.
    fn device_candidates(&self) -> bool {
        false
    }
    /// The [`RowStats`] of the rows of each sequence of `seqs` (every one names its rows), in
    /// that order, as [`Forward::forward_seqs`] computes them. Only called when
    /// [`Forward::device_candidates`] says so.
    fn forward_stats(&mut self, seqs: &[SeqPass<'_>]) -> Result<Vec<RowStats>> {
        let _ = seqs;
        Err(Error::Invalid("this model does not reduce rows on its backend".into()))
    }
    /// The [`RowCandidates`] (`k` per row, at sequence `i`'s inverse temperature `inv_temp[i]`)
    /// of the rows of each sequence of `seqs`, keeping the logits for
    /// [`Forward::read_kept_rows`]. Only called when [`Forward::device_candidates`] says so.
    fn forward_candidates(&mut self, seqs: &[SeqPass<'_>], inv_temp: &[f32], k: usize) -> Result<Vec<RowCandidates>> {
        let _ = (seqs, inv_temp, k);
        Err(Error::Invalid("this model does not reduce rows on its backend".into()))
    }
    /// Logits of rows (indices among its rows) of the last [`Forward::forward_candidates`] pass.
    fn read_kept_rows(&mut self, rows: &[usize]) -> Result<Vec<f32>> {
        let _ = rows;
        Err(Error::Invalid("this model keeps no logits on its backend".into()))
    }
}

#[cfg(feature = "ggml")]
impl Forward for crate::Model {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        crate::Model::forward(self, tokens)
    }
    fn n_vocab(&self) -> usize {
        self.params().n_vocab
    }
    fn forward_rows(&mut self, tokens: &[u32], pass: Pass, rows: Option<&[usize]>) -> Result<Vec<f32>> {
        crate::Model::forward_rows(self, tokens, pass, rows)
    }
    fn forward_batch(&mut self, seqs: &[&[u32]], rows: &[&[usize]]) -> Result<Vec<f32>> {
        crate::Model::forward_batch(self, seqs, rows)
    }
    fn forward_seqs(&mut self, seqs: &[SeqPass<'_>]) -> Result<Vec<f32>> {
        crate::Model::forward_seqs(self, seqs)
    }
    fn free_cache(&mut self, cache: CacheId) {
        crate::Model::free_cache(self, cache)
    }
    fn device_candidates(&self) -> bool {
        crate::Model::device_candidates(self)
    }
    fn forward_stats(&mut self, seqs: &[SeqPass<'_>]) -> Result<Vec<RowStats>> {
        crate::Model::forward_seqs_stats(self, seqs)
    }
    fn forward_candidates(&mut self, seqs: &[SeqPass<'_>], inv_temp: &[f32], k: usize) -> Result<Vec<RowCandidates>> {
        crate::Model::forward_seqs_candidates(self, seqs, inv_temp, k)
    }
    fn read_kept_rows(&mut self, rows: &[usize]) -> Result<Vec<f32>> {
        crate::Model::read_kept_rows(self, rows)
    }
}

/// Fast-dLLM's approximate key/value caches for block decoding. Each block's first step is a
/// full pass that refreshes the cache; its other steps compute only some positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cache {
    /// Every step computes every position (exact).
    #[default]
    None,
    /// The prompt and finished blocks come from the cache; the current block and everything
    /// after it are computed.
    Prefix,
    /// Only the current block is computed; the prefix and the (masked) suffix come from the cache.
    Dual,
}

/// Everything that shapes a generation.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// Masked positions to fill.
    pub n_gen: usize,
    /// Forward passes budget (split evenly over blocks).
    pub steps: usize,
    /// Semi-autoregressive blocks of this many positions, left to right; `None`: one block.
    pub block_length: Option<usize>,
    pub sampler: TokenSampler,
    pub seed: u64,
    pub mask_id: u32,
    pub shift_logits: bool,
    /// Once committed, positions after it are final and the output stops there.
    pub eos: Option<u32>,
    pub cache: Cache,
    /// Run the LM head on every position rather than only the rows the sampler reads
    /// (same tokens, slower: for measuring what the restriction saves).
    pub full_lm_head: bool,
    /// Classifier-free guidance (LLaDA's and llama-diffusion-cli's `cfg_scale`; 0: off). Each
    /// step also runs the canvas with the prompt (prefix and suffix) masked, in the same batch,
    /// and samples from `uncond + (scale + 1) · (cond − uncond)`. Needs [`Cache::None`].
    pub cfg_scale: f32,
    /// Canvas positions left out of the forward pass (approximations: the model was trained
    /// seeing them).
    pub prune: Prune,
}

/// Positions at the end of a canvas that a forward pass may leave out (Learn2PD's and DPad's
/// observations: at long lengths most of the canvas is EOS padding or far-future masks). Only
/// for canvases without a suffix (infilling keeps every position). Off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prune {
    /// Once an EOS is committed, the positions after it (all EOS, already final) are left out.
    pub after_eos: bool,
    /// At most this many masked positions after the current block take part in a pass.
    pub window: Option<usize>,
}

impl GenParams {
    /// Refuses a guidance scale out of range, or guidance with a cache.
    pub fn check(&self) -> Result<()> {
        if !(0.0..=MAX_CFG_SCALE).contains(&self.cfg_scale) {
            return Err(Error::Invalid(format!("the guidance scale must be in [0, {MAX_CFG_SCALE}], got {}", self.cfg_scale)));
        }
        if self.cfg_scale > 0.0 && self.cache != Cache::None {
            return Err(Error::Invalid("classifier-free guidance runs two canvases per step and keeps no key/value cache: use Cache::None".into()));
        }
        Ok(())
    }
}

/// The largest guidance scale: LLaDA uses 0 to 3; far beyond, (scale + 1)·(cond − uncond) only
/// amplifies rounding, and a huge one would overflow the logits.
pub const MAX_CFG_SCALE: f32 = 100.0;

/// Classifier-free guidance on logits rows: `cond` becomes `uncond + (scale + 1)(cond − uncond)`.
pub(crate) fn guide(cond: &mut [f32], uncond: &[f32], scale: f32) {
    for (c, &u) in cond.iter_mut().zip(uncond) {
        *c = u + (scale + 1.0) * (*c - u);
    }
}

/// Progress reports; the callback returns whether to go on.
#[derive(Debug)]
pub enum Event<'a> {
    Step { step: usize, canvas: &'a [u32], masked: &'a [bool], committed: usize, forward_seconds: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// The result of [`generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    pub canvas: Vec<u32>,
    /// The generated tokens, cut before the first EOS.
    pub tokens: Vec<u32>,
    /// Forward passes run.
    pub steps: usize,
    pub forward_seconds: Vec<f64>,
}

/// One canvas and where its schedule stands: the state [`generate`] and [`generate_batch`] step.
pub(crate) struct Seq {
    pub(crate) canvas: Vec<u32>,
    pub(crate) masked: Vec<bool>,
    /// The generated span.
    pub(crate) start: usize,
    pub(crate) end: usize,
    block: usize,
    n_blocks: usize,
    steps_per_block: usize,
    /// Current block and step within it.
    pub(crate) b: usize,
    s: usize,
    /// Seeds this sequence's commit draws and token draws.
    seed: u64,
    step_rng: Rng,
    pub(crate) forward_seconds: Vec<f64>,
    /// Steps of the schedule taken, with or without a forward pass (the token draws' step).
    steps_taken: u64,
    /// The block whose full pass filled the key/value cache.
    stored: Option<usize>,
    /// This sequence's key/value cache, when it keeps one.
    pub(crate) cache: Option<CacheId>,
    /// How much of the canvas the passes compute (see [`Prune`]): set by each full pass, kept
    /// by the passes that reuse its cache.
    visible: usize,
}

impl Seq {
    pub(crate) fn new(prefix: &[u32], suffix: &[u32], p: &GenParams, seed: u64) -> Result<Seq> {
        if p.n_gen == 0 || p.steps == 0 {
            return Err(Error::Invalid("need at least one token to generate and one step".into()));
        }
        if p.shift_logits && prefix.is_empty() {
            return Err(Error::Invalid("with shifted logits the canvas must start with a fixed token (BOS)".into()));
        }
        let start = prefix.len();
        let end = start + p.n_gen;
        let canvas: Vec<u32> = prefix.iter().copied().chain(std::iter::repeat_n(p.mask_id, p.n_gen)).chain(suffix.iter().copied()).collect();
        let masked = (0..canvas.len()).map(|i| (start..end).contains(&i)).collect();
        let canvas_len = canvas.len();
        let block = p.block_length.unwrap_or(p.n_gen).clamp(1, p.n_gen);
        let n_blocks = p.n_gen.div_ceil(block);
        let steps_per_block = (p.steps / n_blocks).max(1);
        Ok(Seq { canvas, masked, start, end, block, n_blocks, steps_per_block, b: 0, s: 0, seed, step_rng: Rng::new(seed), forward_seconds: Vec::new(), steps_taken: 0, stored: None, cache: (p.cache != Cache::None).then(new_cache_id), visible: canvas_len })
    }

    /// [`Seq::tokens`] with everything outside the generated span (the prompt: prefix and
    /// suffix) masked: guidance's unconditional input.
    pub(crate) fn unconditional(&self, mask_id: u32) -> Vec<u32> {
        self.tokens().iter().enumerate().map(|(i, &t)| if (self.start..self.end).contains(&i) { t } else { mask_id }).collect()
    }

    fn range(&self) -> std::ops::Range<usize> {
        self.start + self.b * self.block..(self.start + (self.b + 1) * self.block).min(self.end)
    }

    /// The masked positions of the current block, moving on past finished blocks (and blocks
    /// whose step budget is spent); empty once the canvas is complete.
    pub(crate) fn positions(&mut self) -> Vec<usize> {
        while self.b < self.n_blocks {
            if self.s < self.steps_per_block {
                let positions: Vec<usize> = self.range().filter(|&i| self.masked[i]).collect();
                if !positions.is_empty() {
                    return positions;
                }
            }
            self.b += 1;
            self.s = 0;
        }
        Vec::new()
    }

    /// What the next forward pass computes (of [`Seq::tokens`]).
    pub(crate) fn pass(&mut self, p: &GenParams) -> Pass {
        let shift = usize::from(p.shift_logits);
        let range = self.range();
        let Some(cache) = self.cache.filter(|_| p.cache != Cache::None) else {
            self.visible = self.visible(p);
            return Pass::Full;
        };
        match p.cache {
            _ if self.stored != Some(self.b) => {
                self.stored = Some(self.b);
                self.visible = self.visible(p);
                Pass::Store { cache }
            }
            Cache::Dual => Pass::Reuse { cache, start: range.start - shift, end: range.end.min(self.visible) },
            _ => Pass::Reuse { cache, start: range.start - shift, end: self.visible },
        }
    }

    /// The tokens the passes compute: the canvas, less what [`Prune`] leaves out.
    pub(crate) fn tokens(&self) -> &[u32] {
        &self.canvas[..self.visible]
    }

    /// How much of the canvas a pass made now would compute (see [`Prune`]): every position of a
    /// canvas with a suffix; else up to a committed EOS (the masked positions left are before
    /// it), and at most `window` positions after the current block, as asked.
    fn visible(&self, p: &GenParams) -> usize {
        let mut v = self.canvas.len();
        if self.end < self.canvas.len() {
            return v;
        }
        if let (true, Some(eos)) = (p.prune.after_eos, p.eos) {
            if let Some(e) = (self.start..self.end).find(|&i| !self.masked[i] && self.canvas[i] == eos) {
                v = v.min(e + 1);
            }
        }
        if let Some(w) = p.prune.window {
            v = v.min(self.range().end.saturating_add(w));
        }
        v
    }

    /// Samples every position of `positions` from its logits row (`row_of(k)` for the k-th, in
    /// `logits`), in parallel, each with its own random stream, computing the scores `scores`.
    pub(crate) fn candidates(&self, p: &GenParams, positions: &[usize], logits: &[f32], n_vocab: usize, scores: Scores, row_of: impl Fn(usize) -> usize + Sync) -> Vec<Candidate> {
        (0..positions.len())
            .into_par_iter()
            .map(|k| {
                let r = row_of(k);
                p.sampler.sample_scores(&logits[r * n_vocab..(r + 1) * n_vocab], &mut self.position_rng(positions[k]), scores)
            })
            .collect()
    }

    /// The random stream a token of canvas position `position` is drawn with at this step:
    /// counted from 1, the pass this step would be if every step ran one (as before steps that
    /// commit nothing were skipped), so a seed draws the same tokens as it always did.
    pub(crate) fn position_rng(&self, position: usize) -> Rng {
        Rng::for_position(self.seed, self.steps_taken + 1, position as u64)
    }

    /// Lets `unmasker` choose among `cands` (one per position of `positions`), commits them,
    /// finalizes everything after a committed EOS, and moves to the next step. Returns how many
    /// positions were committed.
    pub(crate) fn commit(&mut self, p: &GenParams, positions: &[usize], cands: &[Candidate], unmasker: &mut dyn Unmasker) -> usize {
        let chosen = unmasker.select(self.s, self.steps_per_block, cands, &mut self.step_rng);
        self.apply(p, positions, cands, &chosen)
    }

    /// The rule's choice before any logits ([`Unmasker::select_blind`]): `Some` positions
    /// (canvas indices, never empty) to sample and commit, or `None` when the rule needs every
    /// candidate. A step that commits nothing is taken here, without a forward pass.
    pub(crate) fn blind(&mut self, positions: &[usize], unmasker: &mut dyn Unmasker) -> Blind {
        match unmasker.select_blind(self.s, self.steps_per_block, positions.len(), &mut self.step_rng) {
            None => Blind::Needs,
            Some(chosen) if chosen.is_empty() => {
                self.s += 1;
                self.steps_taken += 1;
                Blind::Skipped
            }
            Some(chosen) => Blind::Chosen(chosen.into_iter().map(|k| positions[k]).collect()),
        }
    }

    /// Commits `cands[k]` at `positions[k]` for every `k` of `chosen`, finalizes everything
    /// after a committed EOS, and moves to the next step.
    pub(crate) fn apply(&mut self, p: &GenParams, positions: &[usize], cands: &[Candidate], chosen: &[usize]) -> usize {
        for &k in chosen {
            self.canvas[positions[k]] = cands[k].token;
            self.masked[positions[k]] = false;
        }
        if let Some(eos) = p.eos {
            if let Some(e) = (self.start..self.end).find(|&i| !self.masked[i] && self.canvas[i] == eos) {
                for i in e + 1..self.end {
                    if self.masked[i] {
                        self.canvas[i] = eos;
                        self.masked[i] = false;
                    }
                }
            }
        }
        self.s += 1;
        self.steps_taken += 1;
        chosen.len()
    }

    pub(crate) fn finish(self, p: &GenParams) -> Generation {
        self.result(p)
    }

    /// The generation as it stands: the span cut before the first EOS.
    pub(crate) fn result(&self, p: &GenParams) -> Generation {
        let mut tokens: Vec<u32> = self.canvas[self.start..self.end].to_vec();
        if let Some(e) = p.eos.and_then(|eos| tokens.iter().position(|&t| t == eos)) {
            tokens.truncate(e);
        }
        Generation { steps: self.forward_seconds.len(), canvas: self.canvas.clone(), tokens, forward_seconds: self.forward_seconds.clone() }
    }
}

/// What a rule decided before the logits.
pub(crate) enum Blind {
    /// It needs the candidates of every masked position.
    Needs,
    /// This step commits nothing (already taken, no pass).
    Skipped,
    /// It commits exactly these canvas positions.
    Chosen(Vec<usize>),
}

/// The logits must be numbers: a corrupt weight or metadata value shows here first, and
/// sampling from NaN would silently repeat one token.
pub(crate) fn check_finite(logits: &[f32], step: usize) -> Result<()> {
    match logits.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::Invalid(format!(
            "the model produced a non-finite logit ({}) at step {}: its weights or metadata are corrupt",
            logits[i],
            step + 1
        ))),
    }
}

/// [`check_finite`]'s error when the rows were reduced on the backend (which logit is not known).
pub(crate) fn non_finite(step: usize) -> Error {
    Error::Invalid(format!("the model produced a non-finite logit at step {}: its weights or metadata are corrupt", step + 1))
}

/// Runs the canvas loop. `unmasker` decides commits; `on_event` sees every step.
pub fn generate(
    model: &mut dyn Forward,
    prefix: &[u32],
    suffix: &[u32],
    p: &GenParams,
    unmasker: &mut dyn Unmasker,
    mut on_event: impl FnMut(Event<'_>) -> Flow,
) -> Result<Generation> {
    let mut engine = Engine::new();
    let id = engine.add(prefix, suffix, p.clone(), Box::new(unmasker))?;
    let result = run_one(&mut engine, id, model, &mut on_event);
    // Stopped early: the sequence's cache goes now (a finished one's went with its last step).
    engine.remove(id);
    engine.free_caches(model);
    result
}

/// [`generate`]'s loop over its engine of one sequence.
fn run_one(engine: &mut Engine<'_>, id: SeqId, model: &mut dyn Forward, on_event: &mut dyn FnMut(Event<'_>) -> Flow) -> Result<Generation> {
    while let Some(mut st) = engine.step(model)? {
        if let Some((_, e)) = st.failed.pop() {
            return Err(e);
        }
        let Some(&(_, committed)) = st.ran.first() else {
            if let Some((_, g)) = st.finished.into_iter().next() {
                return Ok(g);
            }
            continue;
        };
        let (flow, done) = match (engine.view(id), st.finished.into_iter().next()) {
            (Some(v), _) => {
                let ev = Event::Step { step: v.steps - 1, canvas: v.canvas, masked: v.masked, committed, forward_seconds: st.forward_seconds };
                (on_event(ev), None)
            }
            (None, Some((_, g))) => {
                let masked = vec![false; g.canvas.len()];
                let ev = Event::Step { step: g.steps - 1, canvas: &g.canvas, masked: &masked, committed, forward_seconds: st.forward_seconds };
                (on_event(ev), Some(g))
            }
            (None, None) => unreachable!("a sequence leaves the engine only when it finishes"),
        };
        if let Some(g) = done {
            return Ok(g);
        }
        if flow == Flow::Stop {
            break;
        }
    }
    engine.remove(id).ok_or_else(|| Error::Invalid("the sequence left the engine without a result".into()))
}

/// One pass of [`generate_batch`].
#[derive(Clone, Debug)]
pub struct BatchStep {
    /// Passes so far, from 0.
    pub step: usize,
    /// Sequences in this pass (finished ones have left the batch).
    pub sequences: usize,
    /// Masked positions left over all sequences after this pass.
    pub masked: usize,
    pub forward_seconds: f64,
    /// The sequences that this pass completed (index into the batch, and the result the batch
    /// will return for it), for a caller that shows each as soon as it is done.
    pub finished: Vec<(usize, Generation)>,
}

/// Denoises several canvases together: each pass runs every unfinished sequence through
/// [`Forward::forward_batch`] (one read of the weights for all of them), then each sequence
/// samples and commits on its own schedule, exactly as [`generate`] would for it alone with the
/// same parameters and seed. A sequence whose canvas is complete (or whose EOS finalized the
/// rest) leaves the batch. With a [`Cache`], each sequence has its own key/value cache and
/// computes what its own schedule says, in the same passes. `unmasker` makes one unmasking
/// rule per sequence.
pub fn generate_batch(
    model: &mut dyn Forward,
    prompts: &[(&[u32], &[u32])],
    p: &GenParams,
    unmasker: &dyn Fn() -> Box<dyn Unmasker>,
    on_step: impl FnMut(BatchStep) -> Flow,
) -> Result<Vec<Generation>> {
    generate_batch_seeded(model, prompts, &vec![p.seed; prompts.len()], p, unmasker, on_step)
}

/// [`generate_batch`] with a seed per sequence (`seeds[i]` in place of `p.seed` for
/// `prompts[i]`): each result equals [`generate`] with that seed, so a batch of independent
/// problems draws independent schedules.
pub fn generate_batch_seeded(
    model: &mut dyn Forward,
    prompts: &[(&[u32], &[u32])],
    seeds: &[u64],
    p: &GenParams,
    unmasker: &dyn Fn() -> Box<dyn Unmasker>,
    mut on_step: impl FnMut(BatchStep) -> Flow,
) -> Result<Vec<Generation>> {
    if seeds.len() != prompts.len() {
        return Err(Error::Invalid(format!("{} seeds for {} prompts", seeds.len(), prompts.len())));
    }
    if prompts.is_empty() {
        return Err(Error::Invalid("a batch needs at least one prompt".into()));
    }
    let mut engine = Engine::new();
    // Ids count from 0 in the order added: the index into `prompts`.
    for ((prefix, suffix), &seed) in prompts.iter().zip(seeds) {
        engine.add(prefix, suffix, GenParams { seed, ..p.clone() }, unmasker())?;
    }
    let mut done: Vec<Option<Generation>> = vec![None; prompts.len()];
    let result = run_batch(&mut engine, model, &mut done, &mut on_step);
    for id in 0..prompts.len() {
        if let Some(g) = engine.remove(id as SeqId) {
            done[id] = Some(g);
        }
    }
    // Whatever ended the loop, the sequences' caches go now.
    engine.free_caches(model);
    result?;
    done.into_iter().map(|g| g.ok_or_else(|| Error::Invalid("a sequence left the batch without a result".into()))).collect()
}

/// [`generate_batch_seeded`]'s loop: `done[id]` gets each sequence's result as it finishes.
fn run_batch(engine: &mut Engine<'_>, model: &mut dyn Forward, done: &mut [Option<Generation>], on_step: &mut dyn FnMut(BatchStep) -> Flow) -> Result<()> {
    let mut step = 0;
    while let Some(mut st) = engine.step(model)? {
        if let Some((_, e)) = st.failed.pop() {
            return Err(e);
        }
        for (id, g) in &st.finished {
            done[*id as usize] = Some(g.clone());
        }
        if st.ran.is_empty() {
            continue;
        }
        let masked = engine.ids().filter_map(|id| engine.view(id)).map(|v| v.masked.iter().filter(|&&m| m).count()).sum();
        let finished = st.finished.into_iter().map(|(id, g)| (id as usize, g)).collect();
        if on_step(BatchStep { step, sequences: st.ran.len(), masked, forward_seconds: st.forward_seconds, finished }) == Flow::Stop {
            break;
        }
        step += 1;
    }
    Ok(())
}
