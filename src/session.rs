//! The front door: a model file loaded with its tokenizer and its family's sampling defaults,
//! then text in, text out, in a few lines. It runs the same code as `dlm-run`: for the same
//! settings and seed, [`Session::generate`] gives the text `dlm-run --json` prints.
//!
//! ```
//! # fn main() -> dlm::Result<()> {
//! # // The trained tiny DiffuLLaMA of this repository, converted for the example.
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("tiny.gguf");
//! # let opts = dlm_convert::Options { out_type: dlm_convert::OutType::Q8_0, mask_id: None, name: None, causal: false };
//! # dlm_convert::Plan::new("models/diffullama-tiny".as_ref(), &opts).unwrap().write(&path, |_, _| {}).unwrap();
//! let mut s = dlm::Session::load(&path)?;
//! let out = s.generate("copy 58213:", &dlm::Settings { n: 8, seed: 1, temp: Some(0.0), ..Default::default() })?;
//! println!("{} ({} tokens in {} passes)", out.text, out.tokens.len(), out.steps);
//! # assert!(out.steps >= 1 && out.steps <= 64);
//!
//! // The canvas as it denoises: masked positions as `_`.
//! let settings = dlm::Settings { n: 8, ..Default::default() };
//! s.generate_with(" copy 1234:", &settings, |frame| {
//!     println!("step {}: {} masked: {}", frame.step, frame.masked, frame.text);
//!     dlm::generate::Flow::Continue
//! })?;
//!
//! // The paper's likelihood score of a continuation (lower is more likely).
//! let good = s.score("copy 58213:", " 58213")?.score;
//! let bad = s.score("copy 58213:", " 11111")?.score;
//! # assert!(good < bad, "{good} vs {bad}");
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use crate::error::{Error, Result};
use crate::generate::{generate, Cache, Event, Flow, GenParams};
use crate::model::UnmaskRule;
use crate::sample::TokenSampler;
use crate::score::{item_seed, likelihoods, Likelihood, ScoreParams, Target};
use crate::{LoadOptions, Model, Tokenizer};

/// A loaded model and its tokenizer.
pub struct Session {
    model: Model,
    tok: Tokenizer,
}

/// What one generation asks for. A field left `None` takes the model family's default, as
/// `dlm-run` does for a flag not given (`dlm-run -m F --info` lists them).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Tokens to generate (`-n`).
    pub n: usize,
    /// Forward passes (`--steps`).
    pub steps: Option<usize>,
    /// Which positions each step commits (`--unmask`).
    pub unmask: Option<UnmaskRule>,
    /// The confidence threshold of [`UnmaskRule::Threshold`].
    pub threshold: Option<f32>,
    /// Temperature (0: greedy).
    pub temp: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// Semi-autoregressive blocks of this many positions (`--block-length`).
    pub block_length: Option<usize>,
    /// Fast-dLLM's approximate key/value cache (needs `block_length`).
    pub cache: Cache,
    /// Text after the generated span: the model infills between the prompt and it.
    pub suffix: String,
    pub seed: u64,
}

impl Default for Settings {
    /// 64 tokens, the family's defaults, seed 0.
    fn default() -> Self {
        Settings { n: 64, steps: None, unmask: None, threshold: None, temp: None, top_k: None, top_p: None, block_length: None, cache: Cache::None, suffix: String::new(), seed: 0 }
    }
}

/// What a generation gives back.
#[derive(Clone, Debug)]
pub struct Output {
    /// The generated text, as it continues the prompt (its first token's leading space kept).
    pub text: String,
    /// The generated ids, cut before the first EOS.
    pub tokens: Vec<u32>,
    /// Forward passes run.
    pub steps: usize,
}

/// The canvas after one step, for [`Session::generate_with`].
#[derive(Clone, Debug)]
pub struct Frame {
    /// Passes so far (from 1).
    pub step: usize,
    /// Positions of the generated span still masked.
    pub masked: usize,
    /// The span as its final text will read, each masked position shown as `_`.
    pub text: String,
}

impl Session {
    /// Loads a GGUF file on the CPU with every core (the file's values checked, as
    /// [`LoadOptions`]' defaults do).
    pub fn load(path: impl AsRef<Path>) -> Result<Session> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Loads with explicit options (threads, backend, device, ...).
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Session> {
        let model = Model::load(path, opts)?;
        let tok = Tokenizer::from_gguf(model.gguf())?;
        if tok.vocab_size() > model.params().n_vocab {
            return Err(Error::Invalid(format!("the tokenizer has {} tokens but the model's vocabulary is only {}", tok.vocab_size(), model.params().n_vocab)));
        }
        Ok(Session { model, tok })
    }

    pub fn model(&mut self) -> &mut Model {
        &mut self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    /// The full generation parameters and unmasking rule `s` stands for on this model.
    pub fn params(&self, s: &Settings) -> Result<(GenParams, UnmaskRule, f32)> {
        let d = self.model.diffusion();
        if s.n == 0 {
            return Err(Error::Invalid("Settings::n must be at least 1".into()));
        }
        let rule = s.unmask.unwrap_or(d.family.sampling.unmask);
        let f = d.sampling_for(s.n, rule);
        let steps = s.steps.unwrap_or_else(|| d.default_steps(s.n, rule));
        if steps == 0 {
            return Err(Error::Invalid("Settings::steps must be at least 1".into()));
        }
        let sampler = TokenSampler { temp: s.temp.unwrap_or(f.temp), top_k: s.top_k.unwrap_or(f.top_k), top_p: s.top_p.unwrap_or(f.top_p), gumbel: false };
        if !(sampler.temp >= 0.0 && sampler.temp.is_finite()) || !(sampler.top_p > 0.0 && sampler.top_p <= 1.0) {
            return Err(Error::Invalid(format!("temperature must be 0 or positive and top-p in (0, 1], got {} and {}", sampler.temp, sampler.top_p)));
        }
        let p = GenParams {
            n_gen: s.n,
            steps,
            block_length: s.block_length.or(f.block_length),
            sampler,
            seed: s.seed,
            mask_id: d.mask_id,
            shift_logits: d.shift_logits,
            eos: self.tok.eos,
            cache: s.cache,
            full_lm_head: false,
            cfg_scale: 0.0,
            prune: Default::default(),
        };
        p.check()?;
        Ok((p, rule, s.threshold.unwrap_or(f.threshold)))
    }

    /// Generates `s.n` tokens after `prompt` (and before `s.suffix`).
    pub fn generate(&mut self, prompt: &str, s: &Settings) -> Result<Output> {
        self.generate_with(prompt, s, |_| Flow::Continue)
    }

    /// [`Session::generate`], calling `on_step` with the canvas after every pass; it may stop
    /// the generation early ([`Flow::Stop`]: the output is the canvas as it stands).
    pub fn generate_with(&mut self, prompt: &str, s: &Settings, mut on_step: impl FnMut(&Frame) -> Flow) -> Result<Output> {
        let (params, rule, threshold) = self.params(s)?;
        let prefix = self.tok.prompt_ids(prompt)?;
        let suffix = self.tok.suffix_ids(&s.suffix)?;
        let len = prefix.len().saturating_add(s.n).saturating_add(suffix.len());
        let n_ctx = self.model.params().n_ctx_train;
        if len > n_ctx {
            return Err(Error::Invalid(format!("prompt ({}) + n ({}) + suffix ({}) = {len} tokens exceeds the model's context of {n_ctx}", prefix.len(), s.n, suffix.len())));
        }
        let continues = !prompt.is_empty();
        let span = prefix.len()..prefix.len() + s.n;
        let tok = &self.tok;
        let mut unmasker = rule.unmasker(threshold);
        let gen = generate(&mut self.model, &prefix, &suffix, &params, unmasker.as_mut(), |ev| {
            let Event::Step { step, canvas, masked, .. } = ev;
            let (tokens, masks) = (&canvas[span.clone()], &masked[span.clone()]);
            let runs = tok.decode_canvas(tokens, masks, continues).unwrap_or_default();
            let text = runs.iter().map(|r| r.as_deref().unwrap_or("_")).collect();
            on_step(&Frame { step: step + 1, masked: masks.iter().filter(|&&m| m).count(), text })
        })?;
        let runs = self.tok.decode_canvas(&gen.tokens, &vec![false; gen.tokens.len()], continues)?;
        Ok(Output { text: runs.into_iter().flatten().collect(), tokens: gen.tokens, steps: gen.steps })
    }

    /// The paper's likelihood score of `continuation` after `context` (its `eval_forward`: lower
    /// is more likely) with `dlm-score likelihood`'s defaults: 32 masking levels, 8 draws (for
    /// its standard error), seed 0; tokenized as it does ([`Tokenizer::split_continuation`]).
    pub fn score(&mut self, context: &str, continuation: &str) -> Result<Likelihood> {
        let d = self.model.diffusion();
        let p = ScoreParams { mask_id: d.mask_id, shift: d.shift_logits, draws: 8, ..ScoreParams::default() };
        let (context, continuation) = self.tok.split_continuation(context, continuation)?;
        if continuation.is_empty() {
            return Err(Error::Invalid("the continuation is empty: nothing to score".into()));
        }
        let (mut out, _) = likelihoods(&mut self.model, &[Target::new(&context, &continuation, &[])], &[item_seed(p.seed, 0)], &p)?;
        out.pop().ok_or_else(|| Error::Invalid("nothing was scored".into()))
    }
}
