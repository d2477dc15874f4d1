//! GPT-2 (`general.architecture = gpt2`), for DiffuGPT: the paper's GPT-2 adapted into a masked
//! diffusion model the same way as DiffuLLaMA. Tensor names and the graph are llama.cpp's `gpt2`
//! ones: learned position embeddings added to the token embeddings, LayerNorm with bias before
//! attention and the FFN, one fused Q/K/V projection with bias, biases on every projection, a
//! GELU FFN (tanh approximation), a final LayerNorm, and the LM head tied to the embedding unless
//! the file has `output.weight`. No RoPE. DiffuGPT attends bidirectionally and reads position
//! i + 1's prediction from position i's logits (shifted), like DiffuLLaMA.

use crate::error::Result;
use crate::gguf::Gguf;
use crate::graph::Ops;
use crate::keys;
use super::diffusion::{Family, SamplingDefaults, UnmaskRule};
use super::tensors::Tensors;
use super::{attend, Architecture, Handle, Hparams, Inputs, Network};

/// One block's weights.
pub struct Block<T> {
    pub attn_norm: T,
    pub attn_norm_b: T,
    pub wqkv: T,
    pub bqkv: T,
    pub wo: T,
    pub bo: T,
    pub ffn_norm: T,
    pub ffn_norm_b: T,
    pub ffn_up: T,
    pub ffn_up_b: T,
    pub ffn_down: T,
    pub ffn_down_b: T,
}

/// All weights of a GPT-2.
pub struct Gpt2Net<T> {
    pub p: Hparams,
    pub tok_embd: T,
    pub pos_embd: T,
    pub blocks: Vec<Block<T>>,
    pub output_norm: T,
    pub output_norm_b: T,
    pub output: T,
}

/// `x * w + b` after a norm.
fn affine<T: Copy>(o: &mut dyn Ops<T = T>, x: T, w: T, b: T) -> T {
    let x = o.mul(x, w);
    o.add(x, b)
}

impl<T: Handle> Network<T> for Gpt2Net<T> {
    fn hparams(&self) -> &Hparams {
        &self.p
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.p.n_ctx_train)
    }

    fn forward(&self, o: &mut dyn Ops<T = T>, x: &Inputs<'_, T>) -> T {
        let n = x.n;
        let p = &self.p;
        let (e, hd, eps) = (p.n_embd, p.head_dim(), p.norm_eps);
        let tok = o.get_rows(self.tok_embd, x.tokens); // [n_embd, n]
        let pos = o.get_rows(self.pos_embd, x.pos); // [n_embd, n]
        let mut h_in = o.add(tok, pos);
        for (il, l) in self.blocks.iter().enumerate() {
            let h = o.layer_norm(h_in, eps);
            let h = affine(o, h, l.attn_norm, l.attn_norm_b);
            let qkv = o.mul_mat(l.wqkv, h); // [3 n_embd, n]
            let qkv = o.add(qkv, l.bqkv);
            let (q, k, v) = (o.slice0(qkv, 0, e), o.slice0(qkv, e, e), o.slice0(qkv, 2 * e, e));
            let q = o.reshape_3d(q, [hd, p.n_head, n]);
            let k = o.reshape_3d(k, [hd, p.n_head, n]);
            let v = o.reshape_3d(v, [hd, p.n_head, n]);
            let a = attend(o, x, il, q, k, v, p.causal); // [n_embd, n]
            let a = o.mul_mat(l.wo, a);
            let a = o.add(a, l.bo);
            h_in = o.add(a, h_in);

            let h = o.layer_norm(h_in, eps);
            let h = affine(o, h, l.ffn_norm, l.ffn_norm_b);
            let f = o.mul_mat(l.ffn_up, h); // [n_ff, n]
            let f = o.add(f, l.ffn_up_b);
            let f = o.gelu(f);
            let f = o.mul_mat(l.ffn_down, f); // [n_embd, n]
            let f = o.add(f, l.ffn_down_b);
            h_in = o.add(f, h_in);
        }
        let h = match x.out_rows {
            Some(rows) => o.get_rows(h_in, rows),
            None => h_in,
        };
        let h = o.layer_norm(h, eps);
        let h = affine(o, h, self.output_norm, self.output_norm_b);
        o.mul_mat(self.output, h) // [n_vocab, n_out]
    }
}

/// GPT-2 as DiffuGPT uses it.
pub struct Gpt2;

impl Gpt2 {
    /// DiffuGPT-S's mask token (an existing GPT-2 token; DiffuGPT-M adds one at 50257).
    pub const MASK_ID: u32 = 10541;
}

impl Architecture for Gpt2 {
    const NAME: &'static str = "gpt2";
    type Net<T: Handle> = Gpt2Net<T>;

    /// The paper's inference scripts: 64 steps, DiffuLLaMA's origin rule, temperature 0.95,
    /// top-p 0.9.
    fn family() -> Family {
        Family {
            name: "DiffuGPT",
            mask_id: Self::MASK_ID,
            shift_logits: true,
            causal: false,
            sampling: SamplingDefaults { steps: Some(64), unmask: UnmaskRule::Origin, threshold: 0.9, temp: 0.95, top_p: 0.9, top_k: 0, block_length: None },
        }
    }

    fn hparams(g: &Gguf, causal: bool) -> Result<Hparams> {
        let k = |name: &str| keys::arch(Self::NAME, name);
        let usize_of = |key: &str| -> Result<usize> { Ok(g.get_u32(key)? as usize) };
        let n_embd = usize_of(&k("embedding_length"))?;
        let n_head = usize_of(&k("attention.head_count"))?;
        let embd = g.tensor("token_embd.weight").ok_or_else(|| g.tensor_error("token_embd.weight", "missing"))?;
        let p = Hparams {
            arch: Self::NAME.into(),
            n_vocab: match g.get(&k("vocab_size")) {
                Some(_) => usize_of(&k("vocab_size"))?,
                None => embd.shape.get(1).copied().unwrap_or(0) as usize,
            },
            n_embd,
            n_layer: usize_of(&k("block_count"))?,
            n_head,
            n_head_kv: match g.get(&k("attention.head_count_kv")) {
                Some(_) => usize_of(&k("attention.head_count_kv"))?,
                None => n_head,
            },
            n_ff: usize_of(&k("feed_forward_length"))?,
            n_ctx_train: usize_of(&k("context_length"))?,
            rope_dims: 0,
            rope_theta: 0.0,
            norm_eps: g.get_f64(&k("attention.layer_norm_epsilon"))? as f32,
            causal,
            tied_output: g.tensor("output.weight").is_none(),
        };
        let bad = |key: &str, what: String| Err(g.metadata_error(&k(key), what));
        if p.n_embd == 0 || p.n_head == 0 || p.n_embd % p.n_head != 0 {
            return bad("attention.head_count", format!("{} heads do not divide embedding length {}", p.n_head, p.n_embd));
        }
        if p.n_head_kv != p.n_head {
            return bad("attention.head_count_kv", format!("{} differs from the head count {}: GPT-2 has no grouped heads", p.n_head_kv, p.n_head));
        }
        p.check_sizes(g)?;
        if !(p.norm_eps.is_finite() && p.norm_eps > 0.0 && p.norm_eps < 1.0) {
            return bad("attention.layer_norm_epsilon", format!("{} is not a LayerNorm epsilon (a small positive number such as 1e-5)", p.norm_eps));
        }
        Ok(p)
    }

    fn load<T: Handle>(g: &Gguf, p: Hparams, get: &dyn Fn(&str) -> Option<T>) -> Result<(Gpt2Net<T>, Vec<String>)> {
        let t = Tensors::new(g, &p, get);
        let (e, ff, v, ctx) = (p.n_embd as u64, p.n_ff as u64, p.n_vocab as u64, p.n_ctx_train as u64);
        let blocks = (0..p.n_layer)
            .map(|i| {
                let w = |s: &str| format!("blk.{i}.{s}.weight");
                let b = |s: &str| format!("blk.{i}.{s}.bias");
                Ok(Block {
                    attn_norm: t.vector(&w("attn_norm"), e)?,
                    attn_norm_b: t.vector(&b("attn_norm"), e)?,
                    wqkv: t.matrix(&w("attn_qkv"), &[e, 3 * e])?,
                    bqkv: t.vector(&b("attn_qkv"), 3 * e)?,
                    wo: t.matrix(&w("attn_output"), &[e, e])?,
                    bo: t.vector(&b("attn_output"), e)?,
                    ffn_norm: t.vector(&w("ffn_norm"), e)?,
                    ffn_norm_b: t.vector(&b("ffn_norm"), e)?,
                    ffn_up: t.matrix(&w("ffn_up"), &[e, ff])?,
                    ffn_up_b: t.vector(&b("ffn_up"), ff)?,
                    ffn_down: t.matrix(&w("ffn_down"), &[ff, e])?,
                    ffn_down_b: t.vector(&b("ffn_down"), e)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tok_embd = t.matrix("token_embd.weight", &[e, v])?;
        let pos_embd = t.matrix("position_embd.weight", &[e, ctx])?;
        let output = if p.tied_output { tok_embd } else { t.matrix("output.weight", &[e, v])? };
        let output_norm = t.vector("output_norm.weight", e)?;
        let output_norm_b = t.vector("output_norm.bias", e)?;
        let unused = t.unused();
        Ok((Gpt2Net { p, tok_embd, pos_embd, blocks, output_norm, output_norm_b, output }, unused))
    }
}
