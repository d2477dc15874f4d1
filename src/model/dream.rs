//! Dream (`general.architecture = dream`, "Dream 7B", Ye et al. 2025): Qwen2.5 adapted into a
//! masked diffusion model, as llama.cpp's converter writes it. Its graph is llama.cpp's `dream`
//! one (Qwen2's): LLaMA's with biases on the Q/K/V projections (and an optional one on the
//! attention output), NEOX RoPE (Hugging Face's `rotate_half` on unpermuted rows), and
//! bidirectional attention. Like DiffuLLaMA, position i's logits predict token i + 1 (shifted);
//! its mask token is `<|mask|>`, 151666.

use crate::error::Result;
use crate::gguf::Gguf;
use crate::graph::RopeMode;
use super::diffusion::{Family, SamplingDefaults, UnmaskRule};
use super::llama::{Decoder, Variant};
use super::{Architecture, Handle, Hparams};

pub struct Dream;

impl Dream {
    pub const VARIANT: Variant = Variant { rope: RopeMode::Neox, qkv_bias: true, out_bias: true };
    /// `<|mask|>` in Dream's Qwen2 vocabulary.
    pub const MASK_ID: u32 = 151666;
}

impl Architecture for Dream {
    const NAME: &'static str = "dream";
    type Net<T: Handle> = Decoder<T>;

    /// The model card's `diffusion_generate` settings: temperature 0.2, top-p 0.95, entropy
    /// ordering, one step per generated token.
    fn family() -> Family {
        Family {
            name: "Dream",
            mask_id: Self::MASK_ID,
            shift_logits: true,
            causal: false,
            sampling: SamplingDefaults { steps: None, unmask: UnmaskRule::Entropy, threshold: 0.9, temp: 0.2, top_p: 0.95, top_k: 0, block_length: None },
        }
    }

    fn hparams(g: &Gguf, causal: bool) -> Result<Hparams> {
        Hparams::llama_family(g, causal)
    }

    fn load<T: Handle>(g: &Gguf, p: Hparams, get: &dyn Fn(&str) -> Option<T>) -> Result<(Decoder<T>, Vec<String>)> {
        Decoder::load(g, p, Self::VARIANT, get)
    }
}
