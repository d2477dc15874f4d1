//! dlm: run diffusion language models (DiffuLLaMA first) from quantized GGUF files.
//!
//! Data flows one way: file → [`gguf`] → model → logits → sampler → tokens → [`tokenizer`].
//! Design notes, model facts and the reference sampler: `docs/DESIGN.md`; the paper is
//! "Scaling Diffusion Language Models via Adaptation from Autoregressive Models" (ICLR 2025).
#![deny(unsafe_code)]

pub mod atomic;
pub mod backend;
pub mod cli;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod graph;
pub mod keys;
pub mod sample;
pub mod score;
pub mod model;
pub mod tokenizer;

pub use error::{Error, Result};
pub use gguf::{GgmlType, Gguf, GgufWriter};
pub use tokenizer::Tokenizer;
#[cfg(feature = "ggml")]
pub use model::{Backend, LoadOptions, Model};
