//! Models: `general.architecture` → the model, weights as backend tensors, `forward(tokens) -> logits`.

pub mod llama;

use std::path::Path;

use crate::backend::ggml::{Executor, TensorRef, Weights};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::graph::Ops;
pub use llama::{Llama, LlamaParams};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// CPU threads for compute.
    pub threads: usize,
    /// Overrides the file's attention mask (`{arch}.attention.causal`).
    pub causal: Option<bool>,
    /// Copy matmul weights whose type has interleaved CPU kernels (Q4_0, Q4_K, IQ4_NL on AVX2)
    /// into ggml's repacked layout at load: faster matmuls for one extra copy of those weights
    /// in RAM. Off: every weight is used in place from the memory map.
    pub repack: bool,
    /// Bidirectional attention through ggml's flash attention (the default) rather than
    /// explicit scores and soft-max (what llama.cpp runs with flash attention off).
    pub flash_attn: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { threads: std::thread::available_parallelism().map_or(1, |n| n.get()), causal: None, repack: true, flash_attn: true }
    }
}

/// A loaded model on the ggml CPU backend.
pub struct Model {
    // Field order is drop order: graphs, then weight tensors, then the map they point into.
    executor: Executor,
    llama: Llama<TensorRef>,
    weights: Weights,
    gguf: Gguf,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.gguf.path()).field("params", &self.llama.p).finish()
    }
}

impl Model {
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model> {
        Self::from_gguf(Gguf::open(path)?, opts)
    }

    /// Loads from an already opened file (to inspect its metadata first).
    pub fn from_gguf(gguf: Gguf, opts: &LoadOptions) -> Result<Model> {
        let arch = gguf.get_str(crate::keys::ARCHITECTURE)?;
        if arch != "llama" {
            return Err(gguf.metadata_error(crate::keys::ARCHITECTURE, format!("architecture `{arch}` is not supported (supported: llama)")));
        }
        let params = LlamaParams::from_gguf(&gguf, opts.causal)?;
        // The embedding is read by row lookups, which need the file's layout; every other matrix
        // is only ever the weight of a matmul.
        let weights = Weights::map(&gguf, |t| opts.repack && t.name != "token_embd.weight")?;
        let llama = Llama::load(&gguf, params, |name| weights.get(name))?;
        Ok(Model { executor: Executor::cpu(opts.threads, opts.flash_attn)?, llama, weights, gguf })
    }

    pub fn params(&self) -> &LlamaParams {
        &self.llama.p
    }

    /// Weight matrices copied into ggml's repacked CPU layout at load (see [`LoadOptions::repack`]).
    pub fn repacked_tensors(&self) -> usize {
        self.weights.n_repacked()
    }

    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// Logits for every position: `n_tokens × n_vocab`, row `i` is the output at position `i`.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let n = tokens.len();
        let n_vocab = self.llama.p.n_vocab;
        if n == 0 {
            return Err(Error::Invalid("forward needs at least one token".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::Invalid(format!("token id {bad} is outside the {n_vocab}-token vocabulary")));
        }
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let pos: Vec<i32> = (0..n as i32).collect();
        let llama = &self.llama;
        self.executor.run(n, &[&ids, &pos], |b| {
            let (t, p) = (b.input_i32(n), b.input_i32(n));
            llama.forward(b, t, p, n)
        })
    }
}
