//! The diffusion facts of a file: which token is the mask, whether position i's logits predict
//! token i + 1 (shifted, models adapted from autoregressive ones) or token i, the attention
//! mask, and how the family samples by default. Each comes from a GGUF key when the file has
//! it, else from an override, else from the architecture's [`Family`]; [`DiffusionParams`]
//! remembers which, so a front end can say what it assumed.

use crate::error::Result;
use crate::gguf::Gguf;
use crate::keys;
pub use crate::sample::UnmaskRule;

/// Answers of at least this many positions take the long-answer defaults
/// ([`DiffusionParams::sampling_for`]).
pub const LONG_ANSWER: usize = 64;
/// Block length of the long-answer defaults.
pub const LONG_BLOCK: usize = 32;
/// Confidence threshold of the long-answer defaults.
pub const LONG_THRESHOLD: f32 = 0.9;

/// How a family samples when the user says nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingDefaults {
    /// Forward passes; `None`: one per generated token.
    pub steps: Option<usize>,
    pub unmask: UnmaskRule,
    /// Confidence threshold of [`UnmaskRule::Threshold`].
    pub threshold: f32,
    pub temp: f32,
    pub top_p: f32,
    pub top_k: usize,
    /// Semi-autoregressive blocks of this many positions; `None`: one block.
    pub block_length: Option<usize>,
}

/// An architecture's diffusion facts, used for the keys a file does not have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Family {
    /// The model family's name, as users know it ("DiffuLLaMA", "LLaDA").
    pub name: &'static str,
    pub mask_id: u32,
    pub shift_logits: bool,
    pub causal: bool,
    pub sampling: SamplingDefaults,
}

/// Settings that win over the file's (flags such as `--mask-id`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffusionOverrides {
    pub mask_id: Option<u32>,
    pub shift_logits: Option<bool>,
    pub causal: Option<bool>,
}

/// Where a setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// An override ([`DiffusionOverrides`]).
    Override,
    /// The file's key.
    File,
    /// The family's default: the file has no such key.
    Family,
}

impl Source {
    pub fn describe(self, family: &str) -> String {
        match self {
            Source::Override => "flag".into(),
            Source::File => "file".into(),
            Source::Family => format!("{family} default"),
        }
    }
}

/// The diffusion settings in effect for one file.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusionParams {
    /// `general.architecture`.
    pub arch: String,
    pub family: Family,
    pub mask_id: u32,
    pub shift_logits: bool,
    pub causal: bool,
    /// Where `mask_id`, `shift_logits` and `causal` came from.
    pub sources: [Source; 3],
}

impl DiffusionParams {
    /// Reads `tokenizer.ggml.mask_token_id`, `diffusion.shift_logits` and
    /// `{arch}.attention.causal`; a key of the wrong type is an error naming it.
    pub fn resolve(g: &Gguf, family: Family, over: &DiffusionOverrides) -> Result<DiffusionParams> {
        let arch = g.get_str(keys::ARCHITECTURE)?.to_owned();
        let causal_key = keys::arch(&arch, "attention.causal");
        let file_mask = g.get(keys::MASK_ID).map(|_| g.get_u32(keys::MASK_ID)).transpose()?;
        let file_shift = g.get(keys::SHIFT_LOGITS).map(|_| g.get_bool(keys::SHIFT_LOGITS)).transpose()?;
        let file_causal = g.get(&causal_key).map(|_| g.get_bool(&causal_key)).transpose()?;
        fn pick<V: Copy>(over: Option<V>, file: Option<V>, default: V) -> (V, Source) {
            match (over, file) {
                (Some(v), _) => (v, Source::Override),
                (None, Some(v)) => (v, Source::File),
                (None, None) => (default, Source::Family),
            }
        }
        let (mask_id, s_mask) = pick(over.mask_id, file_mask, family.mask_id);
        let (shift_logits, s_shift) = pick(over.shift_logits, file_shift, family.shift_logits);
        let (causal, s_causal) = pick(over.causal, file_causal, family.causal);
        Ok(DiffusionParams { arch, family, mask_id, shift_logits, causal, sources: [s_mask, s_shift, s_causal] })
    }

    /// The family defaults taken for keys the file lacks (and no override gave), one phrase
    /// each: empty when the file says everything.
    pub fn assumed(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.sources[0] == Source::Family {
            out.push(format!("mask id {}", self.mask_id));
        }
        if self.sources[1] == Source::Family {
            out.push(if self.shift_logits { "shifted logits".into() } else { "unshifted logits".into() });
        }
        if self.sources[2] == Source::Family {
            out.push(if self.causal { "causal attention".into() } else { "bidirectional attention".into() });
        }
        out
    }

    /// One line saying what was assumed, or `None` when nothing was.
    pub fn report(&self, path: &std::path::Path) -> Option<String> {
        let assumed = self.assumed();
        (!assumed.is_empty()).then(|| {
            format!("note: {} has no diffusion metadata; assuming {}: {} (override with --mask-id / --shift)", path.display(), self.family.name, assumed.join(", "))
        })
    }

    /// Forward passes for `n_gen` positions by the family's default, under the unmasking rule
    /// `rule` in effect.
    pub fn default_steps(&self, n_gen: usize, rule: UnmaskRule) -> usize {
        self.sampling_for(n_gen, rule).steps.unwrap_or(n_gen).max(1)
    }

    /// The family's defaults for an answer of `n_gen` positions decoded by `rule` (the rule in
    /// effect: given, or the family's). A family that decodes by confidence threshold in one
    /// block (DiffuLLaMA) switches, from [`LONG_ANSWER`] positions on and while the rule is the
    /// threshold, to Fast-dLLM's long-answer setting: blocks of [`LONG_BLOCK`], threshold
    /// [`LONG_THRESHOLD`], and a budget of one step per position, rounded up to whole blocks so
    /// that every block has a step per position (the threshold ends it early). Another rule
    /// keeps the family's defaults (the paper's `origin` sampler stays as it was).
    pub fn sampling_for(&self, n_gen: usize, rule: UnmaskRule) -> SamplingDefaults {
        let s = self.family.sampling;
        if n_gen >= LONG_ANSWER && rule == UnmaskRule::Threshold && s.unmask == UnmaskRule::Threshold && s.block_length.is_none() {
            let steps = n_gen.div_ceil(LONG_BLOCK).saturating_mul(LONG_BLOCK);
            return SamplingDefaults { steps: Some(steps), threshold: LONG_THRESHOLD, block_length: Some(LONG_BLOCK), ..s };
        }
        s
    }
}
