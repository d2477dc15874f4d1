//! Each family's Hugging Face tensor names and shapes, and the GGUF tensor each becomes in
//! llama.cpp's layout (the names its `convert_hf_to_gguf.py` writes, so llama.cpp reads our
//! files too).
//!
//! - LLaMA / DiffuLLaMA and Dream: `model.embed_tokens`, `model.layers.N.{self_attn,mlp}.*`,
//!   `model.norm`, `lm_head`; Dream (Qwen2) adds Q/K/V biases.
//! - LLaDA (OLMo-style): `model.transformer.wte`, `model.transformer.blocks.N.{q,k,v}_proj`,
//!   `attn_out`, `ff_proj` (the SwiGLU gate), `up_proj`, `ff_out`, `attn_norm`, `ff_norm`,
//!   `model.transformer.ln_f`, and the head `model.transformer.ff_out`.
//! - GPT-2 / DiffuGPT: `[transformer.]wte`, `wpe`, `h.N.ln_1`, `attn.c_attn` (fused Q|K|V),
//!   `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`. Its projections are `Conv1D`s,
//!   stored `[in, out]`: transposed here into ggml's `[out rows of in]`. `attn.bias` and
//!   `attn.masked_bias` are PyTorch's causal-mask buffers, not weights.
//!
//! Q/K rows of LLaMA and LLaDA are permuted for ggml's adjacent-pair RoPE; Dream's stay in
//! Hugging Face's order (llama.cpp runs Qwen2 with NEOX RoPE).

use crate::config::{HfArch, HfConfig};

/// What happens to a source tensor on its way into the GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    None,
    /// Rows permuted for ggml's NORM RoPE, in this many heads (Q or K, weight or bias).
    Permute(u64),
    /// A GPT-2 `Conv1D` weight `[in, out]` stored as ggml's `out` rows of `in`.
    Transpose,
}

/// One tensor of the output and its source.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    pub hf: String,
    pub gguf: String,
    pub layer: Option<u64>,
    /// The shape `config.json` implies for the source (row-major, as safetensors stores it).
    pub hf_shape: Vec<u64>,
    pub transform: Transform,
}

impl Mapping {
    /// The GGUF shape, ggml order (`[0]` is the row length).
    pub fn ggml_shape(&self) -> Vec<u64> {
        match self.transform {
            Transform::Transpose => self.hf_shape.clone(),
            _ => self.hf_shape.iter().rev().copied().collect(),
        }
    }
}

/// A family's naming: where layers live and what a checkpoint may hold besides weights.
pub struct Layout {
    arch: HfArch,
    /// GPT-2 checkpoints come with (`transformer.h.0…`) or without (`h.0…`) the prefix.
    prefix: &'static str,
}

impl Layout {
    /// The layout of `c`'s family; for GPT-2, `has` tells which prefix the checkpoint uses.
    pub fn new(c: &HfConfig, has: impl Fn(&str) -> bool) -> Layout {
        let prefix = match c.arch {
            HfArch::Gpt2 if !has("transformer.wte.weight") && has("wte.weight") => "",
            HfArch::Gpt2 => "transformer.",
            _ => "",
        };
        Layout { arch: c.arch, prefix }
    }

    /// The start of layer names, up to the layer number.
    fn layer_prefix(&self) -> String {
        match self.arch {
            HfArch::Llama | HfArch::Dream => "model.layers.".into(),
            HfArch::Llada => "model.transformer.blocks.".into(),
            HfArch::Gpt2 => format!("{}h.", self.prefix),
        }
    }

    /// The layer a source tensor belongs to, if its name is a layer's.
    pub fn layer_of(&self, hf: &str) -> Option<u64> {
        let rest = hf.strip_prefix(&self.layer_prefix())?;
        rest.split_once('.')?.0.parse().ok()
    }

    /// The name of layer `i`'s first tensor, for "missing layer" messages.
    pub fn first_of_layer(&self, i: u64) -> String {
        let leaf = match self.arch {
            HfArch::Llama | HfArch::Dream => "input_layernorm.weight",
            HfArch::Llada => "attn_norm.weight",
            HfArch::Gpt2 => "ln_1.weight",
        };
        format!("{}{i}.{leaf}", self.layer_prefix())
    }

    /// Tensors that hold no weights (recomputed at run time) or that a tied head makes redundant.
    pub fn ignorable(&self, c: &HfConfig, hf: &str) -> bool {
        let tied_head = match self.arch {
            HfArch::Llama | HfArch::Dream => "lm_head.weight",
            HfArch::Llada => "model.transformer.ff_out.weight",
            HfArch::Gpt2 => "lm_head.weight",
        };
        (c.tie_word_embeddings && hf == tied_head)
            || hf.ends_with(".rotary_emb.inv_freq")
            || (self.arch == HfArch::Gpt2 && (hf.ends_with(".attn.bias") || hf.ends_with(".attn.masked_bias")))
    }

    /// Every tensor of a `c`-shaped checkpoint, in the order llama.cpp writes them.
    pub fn tensors(&self, c: &HfConfig) -> Vec<Mapping> {
        let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let hd = c.head_dim();
        let (q_rows, kv_rows) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let mut out = Vec::new();
        let mut add = |hf: String, gguf: String, layer: Option<u64>, hf_shape: Vec<u64>, transform: Transform| {
            out.push(Mapping { hf, gguf, layer, hf_shape, transform });
        };
        let perm = |heads: u64| if self.arch.permutes_qk() { Transform::Permute(heads) } else { Transform::None };
        let n = c.num_hidden_layers;
        match self.arch {
            HfArch::Llama | HfArch::Dream | HfArch::Llada => {
                let llada = self.arch == HfArch::Llada;
                let (embd, norm, head) = if llada {
                    ("model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight")
                } else {
                    ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
                };
                add(embd.into(), "token_embd.weight".into(), None, vec![v, h], Transform::None);
                for i in 0..n {
                    let p = format!("{}{i}.", self.layer_prefix());
                    // (Hugging Face leaf, LLaDA leaf, GGUF leaf, shape, transform)
                    let leaves: [(&str, &str, &str, Vec<u64>, Transform); 9] = [
                        ("input_layernorm", "attn_norm", "attn_norm", vec![h], Transform::None),
                        ("self_attn.q_proj", "q_proj", "attn_q", vec![q_rows, h], perm(c.num_attention_heads)),
                        ("self_attn.k_proj", "k_proj", "attn_k", vec![kv_rows, h], perm(c.num_key_value_heads)),
                        ("self_attn.v_proj", "v_proj", "attn_v", vec![kv_rows, h], Transform::None),
                        ("self_attn.o_proj", "attn_out", "attn_output", vec![h, q_rows], Transform::None),
                        ("post_attention_layernorm", "ff_norm", "ffn_norm", vec![h], Transform::None),
                        ("mlp.gate_proj", "ff_proj", "ffn_gate", vec![f, h], Transform::None),
                        ("mlp.up_proj", "up_proj", "ffn_up", vec![f, h], Transform::None),
                        ("mlp.down_proj", "ff_out", "ffn_down", vec![h, f], Transform::None),
                    ];
                    for (hf, ll, gg, shape, t) in leaves {
                        let src = if llada { ll } else { hf };
                        add(format!("{p}{src}.weight"), format!("blk.{i}.{gg}.weight"), Some(i), shape, t);
                    }
                    if self.arch == HfArch::Dream {
                        for (hf, gg, rows) in [("q_proj", "attn_q", q_rows), ("k_proj", "attn_k", kv_rows), ("v_proj", "attn_v", kv_rows)] {
                            add(format!("{p}self_attn.{hf}.bias"), format!("blk.{i}.{gg}.bias"), Some(i), vec![rows], Transform::None);
                        }
                    }
                }
                add(norm.into(), "output_norm.weight".into(), None, vec![h], Transform::None);
                if !c.tie_word_embeddings {
                    add(head.into(), "output.weight".into(), None, vec![v, h], Transform::None);
                }
            }
            HfArch::Gpt2 => {
                let p = self.prefix;
                add(format!("{p}wte.weight"), "token_embd.weight".into(), None, vec![v, h], Transform::None);
                add(format!("{p}wpe.weight"), "position_embd.weight".into(), None, vec![c.max_position_embeddings, h], Transform::None);
                for i in 0..n {
                    let l = format!("{}{i}.", self.layer_prefix());
                    let b = |gg: &str| format!("blk.{i}.{gg}");
                    add(format!("{l}ln_1.weight"), b("attn_norm.weight"), Some(i), vec![h], Transform::None);
                    add(format!("{l}ln_1.bias"), b("attn_norm.bias"), Some(i), vec![h], Transform::None);
                    add(format!("{l}attn.c_attn.weight"), b("attn_qkv.weight"), Some(i), vec![h, 3 * h], Transform::Transpose);
                    add(format!("{l}attn.c_attn.bias"), b("attn_qkv.bias"), Some(i), vec![3 * h], Transform::None);
                    add(format!("{l}attn.c_proj.weight"), b("attn_output.weight"), Some(i), vec![h, h], Transform::Transpose);
                    add(format!("{l}attn.c_proj.bias"), b("attn_output.bias"), Some(i), vec![h], Transform::None);
                    add(format!("{l}ln_2.weight"), b("ffn_norm.weight"), Some(i), vec![h], Transform::None);
                    add(format!("{l}ln_2.bias"), b("ffn_norm.bias"), Some(i), vec![h], Transform::None);
                    add(format!("{l}mlp.c_fc.weight"), b("ffn_up.weight"), Some(i), vec![h, f], Transform::Transpose);
                    add(format!("{l}mlp.c_fc.bias"), b("ffn_up.bias"), Some(i), vec![f], Transform::None);
                    add(format!("{l}mlp.c_proj.weight"), b("ffn_down.weight"), Some(i), vec![f, h], Transform::Transpose);
                    add(format!("{l}mlp.c_proj.bias"), b("ffn_down.bias"), Some(i), vec![h], Transform::None);
                }
                add(format!("{p}ln_f.weight"), "output_norm.weight".into(), None, vec![h], Transform::None);
                add(format!("{p}ln_f.bias"), "output_norm.bias".into(), None, vec![h], Transform::None);
                if !c.tie_word_embeddings {
                    add("lm_head.weight".into(), "output.weight".into(), None, vec![v, h], Transform::None);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(arch: HfArch) -> HfConfig {
        HfConfig {
            arch,
            hidden_size: 8,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            vocab_size: 100,
            max_position_embeddings: 16,
            norm_eps: 1e-5,
            rope_theta: 1e4,
            tie_word_embeddings: arch == HfArch::Gpt2,
            bos_token_id: None,
            eos_token_id: None,
            mask_token_id: None,
            name: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn names_map_like_llama_cpp() {
        let c = cfg(HfArch::Llada);
        let l = Layout::new(&c, |_| true);
        let t = l.tensors(&c);
        let find = |g: &str| t.iter().find(|m| m.gguf == g).unwrap();
        assert_eq!(find("blk.1.ffn_gate.weight").hf, "model.transformer.blocks.1.ff_proj.weight");
        assert_eq!(find("blk.1.ffn_down.weight").hf, "model.transformer.blocks.1.ff_out.weight");
        assert_eq!(find("output.weight").hf, "model.transformer.ff_out.weight");
        assert_eq!(find("blk.0.attn_k.weight").transform, Transform::Permute(1));
        assert_eq!(l.layer_of("model.transformer.blocks.12.q_proj.weight"), Some(12));
        assert_eq!(l.layer_of("model.transformer.ff_out.weight"), None);

        let c = cfg(HfArch::Dream);
        let t = Layout::new(&c, |_| true).tensors(&c);
        assert!(t.iter().any(|m| m.gguf == "blk.1.attn_v.bias" && m.hf_shape == vec![4]));
        assert!(t.iter().all(|m| m.transform == Transform::None), "Dream's Q/K stay in HF order");

        let c = cfg(HfArch::Gpt2);
        let l = Layout::new(&c, |n| n == "wte.weight");
        let t = l.tensors(&c);
        let qkv = t.iter().find(|m| m.gguf == "blk.0.attn_qkv.weight").unwrap();
        assert_eq!((qkv.hf.as_str(), qkv.ggml_shape()), ("h.0.attn.c_attn.weight", vec![8, 24]));
        assert!(!t.iter().any(|m| m.gguf == "output.weight"), "GPT-2 ties its head");
        assert!(l.ignorable(&c, "h.3.attn.masked_bias") && l.ignorable(&c, "lm_head.weight"));
        assert!(!l.ignorable(&c, "h.3.attn.c_attn.bias"));
    }
}
