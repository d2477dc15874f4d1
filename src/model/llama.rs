//! LLaMA with a switchable attention mask: DiffuLLaMA (bidirectional, the default for files
//! that say `llama.attention.causal = false`) and plain autoregressive LLaMA models.
//! Tensor names and the graph follow llama.cpp's `llm_build_llama`, so intermediate tensors can
//! be compared with llama.cpp's.

use crate::error::Result;
use crate::gguf::{GgmlType, Gguf};
use crate::graph::{LayerKv, Ops};
use crate::keys;

/// Hyper-parameters, read once from GGUF metadata and checked against the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaParams {
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
    pub rms_eps: f32,
    /// Attention mask: false for diffusion models.
    pub causal: bool,
    /// Whether `output.weight` is absent and the embedding doubles as the LM head.
    pub tied_output: bool,
}

impl LlamaParams {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Reads `{arch}.*` keys. `causal` overrides `{arch}.attention.causal`; with neither, the
    /// model is treated as causal (a plain LLaMA).
    pub fn from_gguf(g: &Gguf, causal: Option<bool>) -> Result<LlamaParams> {
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
        let file_causal = match g.get(&k("attention.causal")) {
            Some(_) => Some(g.get_bool(&k("attention.causal"))?),
            None => None,
        };
        let p = LlamaParams {
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
            rms_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))? as f32,
            causal: causal.or(file_causal).unwrap_or(true),
            tied_output: g.tensor("output.weight").is_none(),
            arch: arch.clone(),
        };
        let bad = |key: &str, what: String| Err(g.metadata_error(&k(key), what));
        if p.n_embd == 0 || p.n_head == 0 || p.n_embd % p.n_head != 0 {
            return bad("attention.head_count", format!("{} heads do not divide embedding length {}", p.n_head, p.n_embd));
        }
        if p.n_head_kv == 0 || p.n_head % p.n_head_kv != 0 {
            return bad("attention.head_count_kv", format!("{} does not divide head count {}", p.n_head_kv, p.n_head));
        }
        if p.rope_dims == 0 || p.rope_dims > p.head_dim() || p.rope_dims % 2 != 0 {
            return bad("rope.dimension_count", format!("{} must be even and at most the head dimension {}", p.rope_dims, p.head_dim()));
        }
        if p.n_layer == 0 {
            return bad("block_count", "must be at least 1".into());
        }
        if p.n_vocab == 0 {
            return bad("vocab_size", "must be at least 1".into());
        }
        if p.n_ff == 0 {
            return bad("feed_forward_length", "must be at least 1".into());
        }
        if p.n_ctx_train == 0 {
            return bad("context_length", "must be at least 1".into());
        }
        // Finite (the reader refuses NaN and infinities) but possibly out of range, or finite as
        // f64 and infinite as f32.
        if !(p.rope_theta.is_finite() && p.rope_theta > 0.0) {
            return bad("rope.freq_base", format!("{} is not a RoPE frequency base (a positive number such as 10000)", p.rope_theta));
        }
        if !(p.rms_eps.is_finite() && p.rms_eps > 0.0 && p.rms_eps < 1.0) {
            return bad("attention.layer_norm_rms_epsilon", format!("{} is not an RMS-norm epsilon (a small positive number such as 1e-5)", p.rms_eps));
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
        // Layers beyond block_count would be silently dropped.
        if let Some(extra) = g.tensors().iter().filter_map(|t| layer_of(&t.name)).filter(|&l| l >= p.n_layer).max() {
            return bad("block_count", format!("{} layers, but the file has tensors of layer {extra}", p.n_layer));
        }
        Ok(p)
    }
}

/// The layer index of a `blk.N.*` tensor name.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// One transformer block's weights.
pub struct Layer<T> {
    pub attn_norm: T,
    pub wq: T,
    pub wk: T,
    pub wv: T,
    pub wo: T,
    pub ffn_norm: T,
    pub ffn_gate: T,
    pub ffn_up: T,
    pub ffn_down: T,
}

/// All weights, as handles of whichever backend holds them.
pub struct Llama<T> {
    pub p: LlamaParams,
    pub tok_embd: T,
    pub layers: Vec<Layer<T>>,
    pub output_norm: T,
    pub output: T,
    /// Tensors of the file this graph never reads (a warning for the user: a file from a
    /// variant of the architecture that this graph would run wrongly).
    pub unused: Vec<String>,
}

impl<T: Copy> Llama<T> {
    /// Checks every tensor's presence, shape and type, then takes its handle from `get`.
    pub fn load(g: &Gguf, p: LlamaParams, get: impl Fn(&str) -> Option<T>) -> Result<Llama<T>> {
        let (e, hd, ff) = (p.n_embd as u64, p.head_dim() as u64, p.n_ff as u64);
        let (q, kv, v) = (p.n_head as u64 * hd, p.n_head_kv as u64 * hd, p.n_vocab as u64);
        let used = std::cell::RefCell::new(std::collections::HashSet::new());
        let tensor = |name: &str, shape: &[u64], norm: bool| -> Result<T> {
            used.borrow_mut().insert(name.to_owned());
            let info = g.tensor(name).ok_or_else(|| match layer_of(name) {
                Some(_) => g.tensor_error(name, format!("missing ({} says {} layers)", keys::arch(&p.arch, "block_count"), p.n_layer)),
                None => g.tensor_error(name, "missing"),
            })?;
            if info.shape != shape {
                return Err(g.tensor_error(name, format!("shape {:?}, expected {shape:?} from the metadata", info.shape)));
            }
            if norm && info.ggml_type != GgmlType::F32 {
                return Err(g.tensor_error(name, format!("norm weights must be f32, found {}", info.ggml_type)));
            }
            if !norm && matches!(info.ggml_type, GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64) {
                return Err(g.tensor_error(name, format!("type {} cannot be a weight matrix", info.ggml_type)));
            }
            get(name).ok_or_else(|| g.tensor_error(name, "not loaded by the backend"))
        };
        let layers = (0..p.n_layer)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(Layer {
                    attn_norm: tensor(&n("attn_norm"), &[e], true)?,
                    wq: tensor(&n("attn_q"), &[e, q], false)?,
                    wk: tensor(&n("attn_k"), &[e, kv], false)?,
                    wv: tensor(&n("attn_v"), &[e, kv], false)?,
                    wo: tensor(&n("attn_output"), &[q, e], false)?,
                    ffn_norm: tensor(&n("ffn_norm"), &[e], true)?,
                    ffn_gate: tensor(&n("ffn_gate"), &[e, ff], false)?,
                    ffn_up: tensor(&n("ffn_up"), &[e, ff], false)?,
                    ffn_down: tensor(&n("ffn_down"), &[ff, e], false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tok_embd = tensor("token_embd.weight", &[e, v], false)?;
        let output = if p.tied_output { tok_embd } else { tensor("output.weight", &[e, v], false)? };
        let output_norm = tensor("output_norm.weight", &[e], true)?;
        let used = used.into_inner();
        let unused = g.tensors().iter().map(|t| t.name.clone()).filter(|n| !used.contains(n)).collect();
        Ok(Llama { tok_embd, layers, output_norm, output, unused, p })
    }

    /// Logits `[n_vocab, n_out]` for the `n` token ids `tokens` at positions `pos` (i32 inputs).
    ///
    /// `kv` says what happens to each layer's keys and values (see [`Kv`]); `out_rows` (i32
    /// indices into the `n` computed rows) restricts the LM head to those rows, else every row.
    /// `seqs` splits the `n` tokens into independent sequences (lengths summing to `n`, each
    /// with its own positions in `pos`): attention never crosses them, so a batch of
    /// sequences costs one pass over the weights. With a cache, `seqs` must be `[n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<O: Ops<T = T>>(&self, o: &mut O, tokens: T, pos: T, n: usize, kv: &Kv<'_, T>, out_rows: Option<T>, seqs: &[usize]) -> T {
        debug_assert_eq!(seqs.iter().sum::<usize>(), n);
        let p = &self.p;
        let (hd, eps) = (p.head_dim(), p.rms_eps);
        let mut x = o.get_rows(self.tok_embd, tokens); // [n_embd, n]
        for (il, l) in self.layers.iter().enumerate() {
            let h = o.rms_norm(x, eps);
            let h = o.mul(h, l.attn_norm); // [n_embd, n]
            let q = o.mul_mat(l.wq, h); // [n_head * hd, n]
            let k = o.mul_mat(l.wk, h); // [n_head_kv * hd, n]
            let v = o.mul_mat(l.wv, h); // [n_head_kv * hd, n]
            let q = o.reshape_3d(q, [hd, p.n_head, n]);
            let k = o.reshape_3d(k, [hd, p.n_head_kv, n]);
            let v = o.reshape_3d(v, [hd, p.n_head_kv, n]);
            let q = o.rope(q, pos, p.rope_dims, p.rope_theta); // [hd, n_head, n]
            let k = o.rope(k, pos, p.rope_dims, p.rope_theta); // [hd, n_head_kv, n]
            // With a cache, the computed positions' keys/values go into it and attention reads
            // the whole cache: the other positions' entries are those of the last full pass.
            let (k, v) = match kv {
                Kv::None => (k, v),
                Kv::Store(cache) => (o.write_tokens(cache[il].k, k, 0), o.write_tokens(cache[il].v, v, 0)),
                Kv::Reuse { cache, start } => (o.write_tokens(cache[il].k, k, *start), o.write_tokens(cache[il].v, v, *start)),
            };
            let a = if seqs.len() <= 1 {
                o.attention(q, k, v, p.causal) // [n_head * hd, n]
            } else {
                let mut parts = Vec::with_capacity(seqs.len());
                let mut s0 = 0;
                for &len in seqs {
                    let (qs, ks, vs) = (o.token_range(q, s0, len), o.token_range(k, s0, len), o.token_range(v, s0, len));
                    parts.push(o.attention(qs, ks, vs, p.causal)); // [n_head * hd, len]
                    s0 += len;
                }
                o.concat_tokens(&parts) // [n_head * hd, n]
            };
            let a = o.mul_mat(l.wo, a); // [n_embd, n]
            x = o.add(x, a);

            let h = o.rms_norm(x, eps);
            let h = o.mul(h, l.ffn_norm); // [n_embd, n]
            let gate = o.mul_mat(l.ffn_gate, h); // [n_ff, n]
            let up = o.mul_mat(l.ffn_up, h); // [n_ff, n]
            let f = o.swiglu(gate, up); // [n_ff, n]
            let f = o.mul_mat(l.ffn_down, f); // [n_embd, n]
            x = o.add(x, f);
        }
        // Only the rows someone reads go through the norm and the LM head.
        let x = match out_rows {
            Some(rows) => o.get_rows(x, rows), // [n_embd, n_out]
            None => x,
        };
        let x = o.rms_norm(x, eps);
        let x = o.mul(x, self.output_norm); // [n_embd, n_out]
        o.mul_mat(self.output, x) // [n_vocab, n_out]
    }
}

/// What a forward pass does with keys and values.
#[derive(Clone, Copy, Debug)]
pub enum Kv<'a, T> {
    /// Nothing kept: every position is computed.
    None,
    /// Every position is computed and its keys/values are kept in the cache (sized for exactly
    /// this sequence).
    Store(&'a [LayerKv<T>]),
    /// Only positions `start..start + n` are computed (their keys/values replace the cached
    /// ones); they attend to every position, the others through the cache.
    Reuse { cache: &'a [LayerKv<T>], start: usize },
}
