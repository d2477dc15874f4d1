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

/// Anything that maps a token sequence to logits (`n × n_vocab`, row-major).
pub trait Forward {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    fn n_vocab(&self) -> usize;
}

#[cfg(feature = "ggml")]
impl Forward for crate::Model {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        crate::Model::forward(self, tokens)
    }
    fn n_vocab(&self) -> usize {
        self.params().n_vocab
    }
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
            let t0 = Instant::now();
            let logits = model.forward(&canvas)?;
            forward_seconds.push(t0.elapsed().as_secs_f64());
            let global_step = forward_seconds.len() as u64;
            let cands: Vec<Candidate> = positions
                .par_iter()
                .map(|&i| {
                    let row = if p.shift_logits { i - 1 } else { i };
                    let mut rng = Rng::for_position(p.seed, global_step, i as u64);
                    p.sampler.sample(&logits[row * n_vocab..(row + 1) * n_vocab], &mut rng)
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
