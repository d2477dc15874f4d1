//! The canvas loop of parallel unmasking: forward → sample every masked position → commit some
//! → repeat, left to right over blocks when `block_length` is set.
//!
//! The canvas is `prefix + [MASK] * n + suffix`; prefix and suffix are fixed (infilling needs no
//! reordering). With `shift_logits` (DiffuLLaMA) the prediction for position p is logits row
//! p − 1, so the prefix must not be empty (it starts with BOS).

use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::sample::{Candidate, Rng, TokenSampler, Unmasker};

/// Which positions a forward pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Every position, nothing kept.
    Full,
    /// Every position, keys and values kept for later [`Pass::Reuse`] passes on a sequence of
    /// the same length.
    Store,
    /// Only positions `start..end`; every other position is represented by its keys/values from
    /// the last [`Pass::Store`] (an approximation once those positions' context has changed:
    /// Fast-dLLM's prefix and dual caches).
    Reuse { start: usize, end: usize },
}

impl Pass {
    /// The first computed position.
    pub fn start(self) -> usize {
        match self {
            Pass::Reuse { start, .. } => start,
            _ => 0,
        }
    }
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
            (Pass::Reuse { start, end }, None) => all[start * v..end * v].to_vec(),
            (_, None) => all,
        })
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
}

/// Progress reports; the callback returns whether to go on.
#[derive(Debug)]
pub enum Event<'a> {
    Step { step: usize, block: usize, canvas: &'a [u32], masked: &'a [bool], committed: usize, forward_seconds: f64 },
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

/// Runs the canvas loop. `unmasker` decides commits; `on_event` sees every step.
pub fn generate(
    model: &mut dyn Forward,
    prefix: &[u32],
    suffix: &[u32],
    p: &GenParams,
    unmasker: &mut dyn Unmasker,
    mut on_event: impl FnMut(Event<'_>) -> Flow,
) -> Result<Generation> {
    if p.n_gen == 0 || p.steps == 0 {
        return Err(Error::Invalid("need at least one token to generate and one step".into()));
    }
    if p.shift_logits && prefix.is_empty() {
        return Err(Error::Invalid("with shifted logits the canvas must start with a fixed token (BOS)".into()));
    }
    let start = prefix.len();
    let end = start + p.n_gen;
    let mut canvas: Vec<u32> = prefix.iter().copied().chain(std::iter::repeat_n(p.mask_id, p.n_gen)).chain(suffix.iter().copied()).collect();
    let mut masked: Vec<bool> = (0..canvas.len()).map(|i| (start..end).contains(&i)).collect();
    let block = p.block_length.unwrap_or(p.n_gen).clamp(1, p.n_gen);
    let n_blocks = p.n_gen.div_ceil(block);
    let steps_per_block = (p.steps / n_blocks).max(1);
    let n_vocab = model.n_vocab();
    let mut forward_seconds = Vec::new();
    let mut step_rng = Rng::new(p.seed);

    'blocks: for b in 0..n_blocks {
        let range = start + b * block..(start + (b + 1) * block).min(end);
        for s in 0..steps_per_block {
            let positions: Vec<usize> = range.clone().filter(|&i| masked[i]).collect();
            if positions.is_empty() {
                break;
            }
            let shift = usize::from(p.shift_logits);
            let rows: Vec<usize> = positions.iter().map(|&i| i - shift).collect();
            let pass = match p.cache {
                Cache::None => Pass::Full,
                _ if s == 0 => Pass::Store,
                Cache::Prefix => Pass::Reuse { start: range.start - shift, end: canvas.len() },
                Cache::Dual => Pass::Reuse { start: range.start - shift, end: range.end },
            };
            let t0 = Instant::now();
            // Logits row of the k-th masked position.
            let (logits, row_of): (Vec<f32>, Box<dyn Fn(usize) -> usize + Sync>) = if p.full_lm_head {
                let first = pass.start();
                (model.forward_rows(&canvas, pass, None)?, Box::new(move |k| rows[k] - first))
            } else {
                (model.forward_rows(&canvas, pass, Some(&rows))?, Box::new(|k| k))
            };
            forward_seconds.push(t0.elapsed().as_secs_f64());
            let global_step = forward_seconds.len() as u64;
            let cands: Vec<Candidate> = (0..positions.len())
                .into_par_iter()
                .map(|k| {
                    let r = row_of(k);
                    let mut rng = Rng::for_position(p.seed, global_step, positions[k] as u64);
                    p.sampler.sample(&logits[r * n_vocab..(r + 1) * n_vocab], &mut rng)
                })
                .collect();
            let chosen = unmasker.select(s, steps_per_block, &cands, &mut step_rng);
            for &k in &chosen {
                canvas[positions[k]] = cands[k].token;
                masked[positions[k]] = false;
            }
            if let Some(eos) = p.eos {
                if let Some(e) = (start..end).find(|&i| !masked[i] && canvas[i] == eos) {
                    for i in e + 1..end {
                        if masked[i] {
                            canvas[i] = eos;
                            masked[i] = false;
                        }
                    }
                }
            }
            let ev = Event::Step { step: forward_seconds.len() - 1, block: b, canvas: &canvas, masked: &masked, committed: chosen.len(), forward_seconds: forward_seconds[forward_seconds.len() - 1] };
            if on_event(ev) == Flow::Stop {
                break 'blocks;
            }
        }
    }
    let mut tokens: Vec<u32> = canvas[start..end].to_vec();
    if let Some(e) = p.eos.and_then(|eos| tokens.iter().position(|&t| t == eos)) {
        tokens.truncate(e);
    }
    Ok(Generation { canvas, tokens, steps: forward_seconds.len(), forward_seconds })
}
