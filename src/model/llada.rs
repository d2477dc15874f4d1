//! LLaDA (`general.architecture = llada`, "Large Language Diffusion Models", Nie et al. 2025):
//! a LLaMA-shaped masked diffusion model trained from scratch, as llama.cpp's converter writes
//! it. Its graph is llama.cpp's `llada` one: LLaMA's, bidirectional, with optional Q/K/V biases
//! (LLaDA-8B has none). Unlike DiffuLLaMA, position i's logits predict token i (no shift), and
//! its mask token is 126336.

use crate::error::Result;
use crate::gguf::Gguf;
use crate::graph::RopeMode;
use super::diffusion::{Family, SamplingDefaults, UnmaskRule};
use super::llama::{Decoder, Variant};
use super::{Architecture, Handle, Hparams};

pub struct Llada;

impl Llada {
    pub const VARIANT: Variant = Variant { rope: RopeMode::Norm, qkv_bias: true, out_bias: false };
    /// `<|mdm_mask|>` in LLaDA's 126,464-token vocabulary.
    pub const MASK_ID: u32 = 126336;
}

impl Architecture for Llada {
    const NAME: &'static str = "llada";
    type Net<T: Handle> = Decoder<T>;

    /// The official `generate.py` defaults: greedy, low-confidence remasking (the k most
    /// confident per step), blocks of 32, one step per generated token.
    fn family() -> Family {
        Family {
            name: "LLaDA",
            mask_id: Self::MASK_ID,
            shift_logits: false,
            causal: false,
            sampling: SamplingDefaults { steps: None, unmask: UnmaskRule::Confidence, threshold: 0.9, temp: 0.0, top_p: 1.0, top_k: 0, block_length: Some(32) },
        }
    }

    fn hparams(g: &Gguf, causal: bool) -> Result<Hparams> {
        Hparams::llama_family(g, causal)
    }

    fn load<T: Handle>(g: &Gguf, p: Hparams, get: &dyn Fn(&str) -> Option<T>) -> Result<(Decoder<T>, Vec<String>)> {
        Decoder::load(g, p, Self::VARIANT, get)
    }
}
