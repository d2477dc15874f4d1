//! LLaMA with a switchable attention mask: DiffuLLaMA (bidirectional) and plain autoregressive
//! LLaMA models; also the decoder that LLaDA (llada.rs) and Dream (dream.rs) are variants of.
//! Tensor names and the graph follow llama.cpp's `llm_build_llama` (and its `llada`/`dream`
//! graphs, which differ only where [`Variant`] says), so intermediate tensors can be compared
//! with llama.cpp's.

use crate::error::Result;
use crate::gguf::Gguf;
use crate::graph::{Ops, RopeMode};
use super::diffusion::{Family, SamplingDefaults, UnmaskRule};
use super::tensors::Tensors;
use super::{attend, Architecture, Handle, Hparams, Inputs, Network};

pub use super::layer_of;

/// How a member of the LLaMA family differs from LLaMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Which values RoPE rotates together.
    pub rope: RopeMode,
    /// Whether `attn_q/k/v.bias` are read (each optional) and added after the projections.
    pub qkv_bias: bool,
    /// Whether `attn_output.bias` is read (optional) and added after the output projection.
    pub out_bias: bool,
}

/// One transformer block's weights.
pub struct Layer<T> {
    pub attn_norm: T,
    pub wq: T,
    pub wk: T,
    pub wv: T,
    pub wo: T,
    pub bq: Option<T>,
    pub bk: Option<T>,
    pub bv: Option<T>,
    pub bo: Option<T>,
    pub ffn_norm: T,
    pub ffn_gate: T,
    pub ffn_up: T,
    pub ffn_down: T,
}

/// All weights of a LLaMA-family decoder, as handles of whichever backend holds them.
pub struct Decoder<T> {
    pub p: Hparams,
    pub variant: Variant,
    pub tok_embd: T,
    pub layers: Vec<Layer<T>>,
    pub output_norm: T,
    pub output: T,
}

impl<T: Handle> Decoder<T> {
    /// Checks every tensor's presence, shape and type, then takes its handle from `get`; also
    /// returns the tensors this graph never reads.
    pub fn load(g: &Gguf, p: Hparams, variant: Variant, get: &dyn Fn(&str) -> Option<T>) -> Result<(Decoder<T>, Vec<String>)> {
        let t = Tensors::new(g, &p, get);
        let (e, hd, ff) = (p.n_embd as u64, p.head_dim() as u64, p.n_ff as u64);
        let (q, kv, v) = (p.n_head as u64 * hd, p.n_head_kv as u64 * hd, p.n_vocab as u64);
        let bias = |on: bool, name: &str, len: u64| if on { t.optional_vector(name, len) } else { Ok(None) };
        let layers = (0..p.n_layer)
            .map(|i| {
                let w = |s: &str| format!("blk.{i}.{s}.weight");
                let b = |s: &str| format!("blk.{i}.{s}.bias");
                Ok(Layer {
                    attn_norm: t.vector(&w("attn_norm"), e)?,
                    wq: t.matrix(&w("attn_q"), &[e, q])?,
                    wk: t.matrix(&w("attn_k"), &[e, kv])?,
                    wv: t.matrix(&w("attn_v"), &[e, kv])?,
                    wo: t.matrix(&w("attn_output"), &[q, e])?,
                    bq: bias(variant.qkv_bias, &b("attn_q"), q)?,
                    bk: bias(variant.qkv_bias, &b("attn_k"), kv)?,
                    bv: bias(variant.qkv_bias, &b("attn_v"), kv)?,
                    bo: bias(variant.out_bias, &b("attn_output"), e)?,
                    ffn_norm: t.vector(&w("ffn_norm"), e)?,
                    ffn_gate: t.matrix(&w("ffn_gate"), &[e, ff])?,
                    ffn_up: t.matrix(&w("ffn_up"), &[e, ff])?,
                    ffn_down: t.matrix(&w("ffn_down"), &[ff, e])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tok_embd = t.matrix("token_embd.weight", &[e, v])?;
        let output = if p.tied_output { tok_embd } else { t.matrix("output.weight", &[e, v])? };
        let output_norm = t.vector("output_norm.weight", e)?;
        let unused = t.unused();
        Ok((Decoder { p, variant, tok_embd, layers, output_norm, output }, unused))
    }
}

impl<T: Handle> Network<T> for Decoder<T> {
    fn hparams(&self) -> &Hparams {
        &self.p
    }

    fn forward(&self, o: &mut dyn Ops<T = T>, x: &Inputs<'_, T>) -> T {
        let (n, pos) = (x.n, x.pos);
        debug_assert_eq!(x.seqs.iter().map(|s| s.len).sum::<usize>(), n);
        let p = &self.p;
        let (hd, eps, rope) = (p.head_dim(), p.norm_eps, self.variant.rope);
        let mut h_in = o.get_rows(self.tok_embd, x.tokens); // [n_embd, n]
        for (il, l) in self.layers.iter().enumerate() {
            let h = o.rms_norm(h_in, eps);
            let h = o.mul(h, l.attn_norm); // [n_embd, n]
            let q = o.mul_mat(l.wq, h); // [n_head * hd, n]
            let q = biased(o, q, l.bq);
            let k = o.mul_mat(l.wk, h); // [n_head_kv * hd, n]
            let k = biased(o, k, l.bk);
            let v = o.mul_mat(l.wv, h); // [n_head_kv * hd, n]
            let v = biased(o, v, l.bv);
            let q = o.reshape_3d(q, [hd, p.n_head, n]);
            let k = o.reshape_3d(k, [hd, p.n_head_kv, n]);
            let v = o.reshape_3d(v, [hd, p.n_head_kv, n]);
            let q = o.rope(q, pos, p.rope_dims, p.rope_theta, rope); // [hd, n_head, n]
            let k = o.rope(k, pos, p.rope_dims, p.rope_theta, rope); // [hd, n_head_kv, n]
            let a = attend(o, x, il, q, k, v, p.causal); // [n_head * hd, n]
            let a = o.mul_mat(l.wo, a); // [n_embd, n]
            let a = biased(o, a, l.bo);
            h_in = o.add(h_in, a);

            let h = o.rms_norm(h_in, eps);
            let h = o.mul(h, l.ffn_norm); // [n_embd, n]
            let gate = o.mul_mat(l.ffn_gate, h); // [n_ff, n]
            let up = o.mul_mat(l.ffn_up, h); // [n_ff, n]
            let f = o.swiglu(gate, up); // [n_ff, n]
            let f = o.mul_mat(l.ffn_down, f); // [n_embd, n]
            h_in = o.add(h_in, f);
        }
        // Only the rows someone reads go through the norm and the LM head.
        let h = match x.out_rows {
            Some(rows) => o.get_rows(h_in, rows), // [n_embd, n_out]
            None => h_in,
        };
        let h = o.rms_norm(h, eps);
        let h = o.mul(h, self.output_norm); // [n_embd, n_out]
        o.mul_mat(self.output, h) // [n_vocab, n_out]
    }
}

/// `y + b` when the layer has the bias `b`.
fn biased<T: Copy>(o: &mut dyn Ops<T = T>, y: T, b: Option<T>) -> T {
    match b {
        Some(b) => o.add(y, b),
        None => y,
    }
}

/// LLaMA (`general.architecture = llama`): DiffuLLaMA unless the file says it is causal.
pub struct Llama;

impl Llama {
    pub const VARIANT: Variant = Variant { rope: RopeMode::Norm, qkv_bias: false, out_bias: false };
}

impl Architecture for Llama {
    const NAME: &'static str = "llama";
    type Net<T: Handle> = Decoder<T>;

    /// DiffuLLaMA's facts: llama.cpp's converter writes a DiffuLLaMA as a plain `llama` file
    /// with no diffusion key at all. The sampling defaults are the fastest setting that kept the
    /// exact rule's accuracy on the trained tiny model (README: "Trained tiny model").
    fn family() -> Family {
        Family {
            name: "DiffuLLaMA",
            mask_id: crate::keys::DIFFULLAMA_MASK_ID,
            shift_logits: true,
            causal: false,
            sampling: SamplingDefaults { steps: Some(64), unmask: UnmaskRule::Threshold, threshold: 0.5, temp: 0.9, top_p: 0.9, top_k: 0, block_length: None },
        }
    }

    fn hparams(g: &Gguf, causal: bool) -> Result<Hparams> {
        Hparams::llama_family(g, causal)
    }

    fn load<T: Handle>(g: &Gguf, p: Hparams, get: &dyn Fn(&str) -> Option<T>) -> Result<(Decoder<T>, Vec<String>)> {
        Decoder::load(g, p, Self::VARIANT, get)
    }
}
