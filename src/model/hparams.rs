//! Hyper-parameters every architecture reads into the same typed struct, once, at load.

use crate::error::Result;
use crate::gguf::Gguf;
use crate::keys;
use super::layer_of;

/// Hyper-parameters, read once from GGUF metadata and checked against the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub arch: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub rope_dims: usize,
    pub rope_theta: f32,
    /// The normalization epsilon (RMS norm in the LLaMA family).
    pub norm_eps: f32,
    /// Attention mask: false for diffusion models.
    pub causal: bool,
    /// Whether `output.weight` is absent and the embedding doubles as the LM head.
    pub tied_output: bool,
}

impl Hparams {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Reads the `{arch}.*` keys of a LLaMA-style decoder (RoPE, RMS norm, grouped heads) and
    /// checks them; `causal` is the attention mask in effect.
    pub fn llama_family(g: &Gguf, causal: bool) -> Result<Hparams> {
        let arch = g.get_str(keys::ARCHITECTURE)?.to_owned();
        let k = |name: &str| keys::arch(&arch, name);
        let usize_of = |key: &str| -> Result<usize> { Ok(g.get_u32(key)? as usize) };
        let opt = |key: &str| -> Result<Option<usize>> { g.get(key).map(|_| usize_of(key)).transpose() };
        let n_embd = usize_of(&k("embedding_length"))?;
        let n_head = usize_of(&k("attention.head_count"))?;
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| g.tensor_error("token_embd.weight", "missing"))?;
        let n_vocab = match opt(&k("vocab_size"))? {
            Some(v) => v,
            None => embd.shape.get(1).copied().unwrap_or(0) as usize,
        };
        let p = Hparams {
            n_vocab,
            n_embd,
            n_layer: usize_of(&k("block_count"))?,
            n_head,
            n_head_kv: opt(&k("attention.head_count_kv"))?.unwrap_or(n_head),
            n_ff: usize_of(&k("feed_forward_length"))?,
            n_ctx_train: opt(&k("context_length"))?.unwrap_or(4096),
            rope_dims: opt(&k("rope.dimension_count"))?.unwrap_or(if n_head > 0 { n_embd / n_head } else { 0 }),
            rope_theta: match g.get(&k("rope.freq_base")) {
                Some(_) => g.get_f64(&k("rope.freq_base"))? as f32,
                None => 10000.0,
            },
            norm_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))? as f32,
            causal,
            tied_output: g.tensor("output.weight").is_none(),
            arch: arch.clone(),
        };
        let bad = |key: &str, what: String| Err(g.metadata_error(&k(key), what));
        if p.n_embd == 0 || p.n_head == 0 || p.n_embd % p.n_head != 0 {
            return bad("attention.head_count", format!("{} heads do not divide embedding length {}", p.n_head, p.n_embd));
        }
        if p.head_dim() % 2 != 0 {
            return bad("attention.head_count", format!("head dimension {} (embedding length {} / {} heads) is odd; RoPE rotates pairs", p.head_dim(), p.n_embd, p.n_head));
        }
        if p.n_head_kv == 0 || p.n_head % p.n_head_kv != 0 {
            return bad("attention.head_count_kv", format!("{} does not divide head count {}", p.n_head_kv, p.n_head));
        }
        if p.rope_dims == 0 || p.rope_dims > p.head_dim() || p.rope_dims % 2 != 0 {
            return bad("rope.dimension_count", format!("{} must be even and at most the head dimension {}", p.rope_dims, p.head_dim()));
        }
        p.check_sizes(g)?;
        // Finite (the reader refuses NaN and infinities) but possibly out of range, or finite as
        // f64 and infinite as f32.
        if !(p.rope_theta.is_finite() && p.rope_theta > 0.0) {
            return bad("rope.freq_base", format!("{} is not a RoPE frequency base (a positive number such as 10000)", p.rope_theta));
        }
        if !(p.norm_eps.is_finite() && p.norm_eps > 0.0 && p.norm_eps < 1.0) {
            return bad("attention.layer_norm_rms_epsilon", format!("{} is not an RMS-norm epsilon (a small positive number such as 1e-5)", p.norm_eps));
        }
        // What this graph does not implement must not be silently ignored.
        for key in ["attention.key_length", "attention.value_length"] {
            if let Some(v) = g.get(&k(key)) {
                if v.as_u64() != Some(p.head_dim() as u64) {
                    let shown = v.as_u64().map_or_else(|| format!("{:?}", v.value_type()), |x| x.to_string());
                    return bad(key, format!("{shown} differs from the head dimension {} (embedding length / head count), which this graph requires", p.head_dim()));
                }
            }
        }
        if let Some(v) = g.get(&k("rope.scaling.type")) {
            if v.as_str() != Some("none") {
                return bad("rope.scaling.type", format!("RoPE scaling {v:?} is not supported (only none)"));
            }
        }
        if let Some(v) = g.get(&k("rope.scaling.factor")) {
            if v.as_f64() != Some(1.0) && v.as_f64() != Some(0.0) {
                return bad("rope.scaling.factor", format!("RoPE scaling by {v:?} is not supported"));
            }
        }
        if g.get(&k("expert_count")).and_then(|v| v.as_u64()).is_some_and(|n| n > 0) {
            return bad("expert_count", "mixture-of-experts models are not supported".into());
        }
        Ok(p)
    }

    /// The checks every architecture needs: no zero size, and no tensors of layers beyond
    /// `block_count` (they would be silently dropped).
    pub fn check_sizes(&self, g: &Gguf) -> Result<()> {
        let bad = |key: &str, what: String| Err(g.metadata_error(&keys::arch(&self.arch, key), what));
        for (key, v) in [("block_count", self.n_layer), ("vocab_size", self.n_vocab), ("feed_forward_length", self.n_ff), ("context_length", self.n_ctx_train)] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if let Some(extra) = g.tensors().iter().filter_map(|t| layer_of(&t.name)).filter(|&l| l >= self.n_layer).max() {
            return bad("block_count", format!("{} layers, but the file has tensors of layer {extra}", self.n_layer));
        }
        Ok(())
    }
}

