//! dlm: run diffusion language models (DiffuLLaMA first) from quantized GGUF files.
//!
//! Data flows one way: file → [`gguf`] → model → logits → sampler → tokens → [`tokenizer`].
//! Design notes, model facts and the reference sampler: `docs/DESIGN.md`; the paper is
//! "Scaling Diffusion Language Models via Adaptation from Autoregressive Models" (ICLR 2025).
//!
//! The front door is [`Session`]: load a GGUF file, generate, watch the canvas, score.
//!
//! ```
//! # fn main() -> dlm::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("tiny.gguf");
//! # let opts = dlm_convert::Options { out_type: dlm_convert::OutType::Q4_0, mask_id: None, name: None, causal: false };
//! # dlm_convert::Plan::new("models/diffullama-tiny".as_ref(), &opts).unwrap().write(&path, |_, _| {}).unwrap();
//! let mut session = dlm::Session::load(&path)?;
//! let out = session.generate("Today is a wonderful day,", &dlm::Settings { n: 16, seed: 7, ..Default::default() })?;
//! println!("{}", out.text);
//! # Ok(())
//! # }
//! ```
//!
//! Below it: [`gguf`] reads and writes files, [`model`] builds the graph on a backend,
//! [`generate`] runs the canvas loop with an unmasking rule from [`sample`], [`engine`] batches
//! sequences continuously, [`score`] computes the paper's likelihoods; `examples/` has programs.
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
#[cfg(feature = "ggml")]
pub mod session;
pub mod tokenizer;

pub use error::{Error, Result};
pub use gguf::{GgmlType, Gguf, GgufWriter};
pub use tokenizer::Tokenizer;
#[cfg(feature = "ggml")]
pub use model::{Backend, LoadOptions, Model};
#[cfg(feature = "ggml")]
pub use session::{Session, Settings};
