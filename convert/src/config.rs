//! A checkpoint's `config.json`: which architecture it is and the hyper-parameters dlm needs,
//! read under each family's own key names and validated.
//!
//! | Hugging Face class | GGUF architecture | Key names |
//! |---|---|---|
//! | `LlamaForCausalLM` (DiffuLLaMA) | `llama` | LLaMA's (`hidden_size`, `num_hidden_layers`, …) |
//! | `LLaDAModelLM` (LLaDA) | `llada` | OLMo's (`d_model`, `n_layers`, `n_heads`, `mlp_hidden_size`, `max_sequence_length`) |
//! | `DreamModel` (Dream) | `dream` | Qwen2's (LLaMA's names) |
//! | `GPT2LMHeadModel` (DiffuGPT) | `gpt2` | GPT-2's (`n_embd`, `n_layer`, `n_head`, `n_positions`, `n_inner`) |
//!
//! Where a family has two spellings (LLaDA's configs carry both OLMo's and LLaMA's in some
//! releases), the first present in [`Keys`] wins, and messages name the key the file uses.

use std::path::Path;

use serde_json::Value as Json;

use crate::{ConvertError, Result};

/// The model families dlm-convert reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfArch {
    /// DiffuLLaMA (and any LLaMA-architecture checkpoint).
    Llama,
    /// LLaDA (GSAI-ML's LLaDA-8B: OLMo-style names, no logit shift).
    Llada,
    /// Dream (Qwen2-style, biases on Q/K/V).
    Dream,
    /// DiffuGPT (GPT-2: Conv1D weights, learned positions, LayerNorm, GELU).
    Gpt2,
}

/// `(architectures entry, model_type, arch)`; the (lower-case) model_type is also the GGUF
/// `general.architecture` llama.cpp writes for the family.
const CLASSES: &[(&str, &str, HfArch)] = &[
    ("LlamaForCausalLM", "llama", HfArch::Llama),
    ("LLaDAModelLM", "llada", HfArch::Llada),
    ("DreamModel", "dream", HfArch::Dream),
    ("GPT2LMHeadModel", "gpt2", HfArch::Gpt2),
];

impl HfArch {
    /// `general.architecture`.
    pub fn gguf_name(self) -> &'static str {
        CLASSES.iter().find(|&&(_, _, a)| a == self).map(|&(_, t, _)| t).expect("every architecture has a row in CLASSES")
    }

    /// The family's defaults as the runtime knows them (mask id, logit shift, name).
    pub fn family(self) -> dlm::model::Family {
        dlm::model::family_of(self.gguf_name()).expect("every converter architecture is a runtime architecture")
    }

    /// Whether Q/K rows are permuted for ggml's adjacent-pair (NORM) RoPE, as llama.cpp's
    /// converter does for LLaMA and LLaDA; Dream's Qwen2 stays in Hugging Face's order (NEOX).
    pub fn permutes_qk(self) -> bool {
        matches!(self, HfArch::Llama | HfArch::Llada)
    }

    /// The names users know, for messages.
    fn supported() -> String {
        CLASSES.iter().map(|(c, _, _)| *c).collect::<Vec<_>>().join(", ")
    }
}

/// The hyper-parameters dlm needs from `config.json`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    pub arch: HfArch,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_hidden_layers: u64,
    pub num_attention_heads: u64,
    pub num_key_value_heads: u64,
    pub vocab_size: u64,
    /// Positions the model was trained on (GPT-2: the size of its position table).
    pub max_position_embeddings: u64,
    /// RMS-norm epsilon (LLaMA family) or LayerNorm epsilon (GPT-2).
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `mask_token_id` (LLaDA's and Dream's configs name their mask token here).
    pub mask_token_id: Option<u32>,
    pub name: Option<String>,
    /// Things the user should know about how the file was read (warnings).
    pub notes: Vec<String>,
}

impl HfConfig {
    pub fn head_dim(&self) -> u64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads and validates `dir/config.json`.
    pub fn load(dir: &Path) -> Result<HfConfig> {
        let path = dir.join("config.json");
        let text = crate::read_text(&path)?;
        let raw: Json = serde_json::from_str(&text)
            .map_err(|e| ConvertError::input(&path, format!("not valid JSON for a model config: {e}")))?;
        if !raw.is_object() {
            return Err(ConvertError::input(&path, "not a JSON object; expected a model config".into()));
        }
        let bad = |field: &str, what: String| ConvertError::field(&path, field, what);
        let (arch, arch_note) = arch_of(&raw).ok_or_else(|| {
            bad(
                "architectures",
                format!(
                    "expected one of {} (DiffuLLaMA, LLaDA, Dream, DiffuGPT), found {} / model_type {}",
                    HfArch::supported(),
                    raw.get("architectures").unwrap_or(&Json::Null),
                    raw.get("model_type").unwrap_or(&Json::Null)
                ),
            )
        })?;
        // The first of `names` present; `null` counts as absent (HF writes `"n_inner": null`).
        fn find<'a>(raw: &'a Json, names: &[&'static str]) -> Option<(&'static str, &'a Json)> {
            names.iter().find_map(|&n| raw.get(n).filter(|v| !v.is_null()).map(|v| (n, v)))
        }
        let find = |names: &[&'static str]| find(&raw, names);
        let int = |names: &[&'static str]| -> Result<Option<u64>> {
            match find(names) {
                None => Ok(None),
                Some((n, v)) => v.as_u64().filter(|&x| x > 0).map(Some).ok_or_else(|| bad(n, format!("{v} is not a positive integer"))),
            }
        };
        let req = |names: &[&'static str]| -> Result<u64> { int(names)?.ok_or_else(|| bad(names[0], "missing; expected a positive integer".into())) };
        let float = |names: &[&'static str], default: f64| -> Result<f64> {
            match find(names) {
                None => Ok(default),
                Some((n, v)) => v.as_f64().ok_or_else(|| bad(n, format!("{v} is not a number"))),
            }
        };
        let flag = |names: &[&'static str], default: bool| -> Result<bool> {
            match find(names) {
                None => Ok(default),
                Some((n, v)) => v.as_bool().ok_or_else(|| bad(n, format!("{v} is not true or false"))),
            }
        };
        let string = |names: &[&'static str]| find(names).map(|(n, v)| (n, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())));

        let k = Keys::of(arch);
        let heads = req(k.heads)?;
        let hidden = req(k.hidden)?;
        let cfg = HfConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: match (int(k.ffn)?, arch) {
                (Some(f), _) => f,
                // GPT-2's `n_inner: null` means four times the width.
                (None, HfArch::Gpt2) => hidden.checked_mul(4).ok_or_else(|| bad(k.hidden[0], format!("{hidden} is too large")))?,
                (None, _) => req(k.ffn)?,
            },
            num_hidden_layers: req(k.layers)?,
            num_attention_heads: heads,
            num_key_value_heads: int(k.kv)?.unwrap_or(heads),
            vocab_size: req(k.vocab)?,
            max_position_embeddings: match (int(k.ctx)?, arch) {
                (Some(n), _) => n,
                (None, HfArch::Gpt2) => req(k.ctx)?, // the size of its position table
                (None, HfArch::Dream) => 32768,
                (None, _) => 4096,
            },
            norm_eps: float(k.eps, if matches!(arch, HfArch::Llama | HfArch::Dream) { 1e-6 } else { 1e-5 })?,
            rope_theta: float(&["rope_theta"], 10000.0)?,
            tie_word_embeddings: flag(k.tie, arch == HfArch::Gpt2)?,
            bos_token_id: None,
            eos_token_id: None,
            mask_token_id: None,
            name: None,
            notes: arch_note.map(|n| format!("{}: {n}", path.display())).into_iter().collect(),
        };
        let id = |names: &[&'static str]| -> Result<Option<u32>> {
            match find(names) {
                None => Ok(None),
                Some((n, v)) => first_id(v).map(Some).ok_or_else(|| bad(n, format!("{v} is not a token id"))),
            }
        };
        let cfg = HfConfig {
            bos_token_id: id(&["bos_token_id"])?,
            eos_token_id: id(&["eos_token_id"])?,
            mask_token_id: id(&["mask_token_id"])?,
            name: string(&["_name_or_path"]).map(|(_, s)| s).filter(|s| !s.is_empty()),
            ..cfg
        };

        // Messages name the key the file uses (`n_heads`, not its LLaMA name).
        let used = |names: &[&'static str]| find(names).map_or(names[0], |(n, _)| n);
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(bad(used(k.heads), format!("{} does not divide the hidden size {}", cfg.num_attention_heads, cfg.hidden_size)));
        }
        if cfg.num_attention_heads % cfg.num_key_value_heads != 0 {
            return Err(bad(used(k.kv), format!("{} does not divide the {} attention heads", cfg.num_key_value_heads, cfg.num_attention_heads)));
        }
        if arch != HfArch::Gpt2 && cfg.head_dim() % 2 != 0 {
            return Err(bad(used(k.hidden), format!("head dimension {} (hidden size / heads) must be even for RoPE", cfg.head_dim())));
        }
        if let Some(hd) = int(&["head_dim"])?.filter(|&hd| hd != cfg.head_dim()) {
            return Err(bad("head_dim", format!("{hd} differs from the hidden size / heads ({}), which the graph requires", cfg.head_dim())));
        }
        if let Some((n, v)) = find(&["rope_scaling"]) {
            return Err(bad(n, format!("RoPE scaling {v} is not supported yet; expected null")));
        }
        // What the runtime's graph does not compute must not be converted into a silently
        // different model.
        let expect_str = |names: &[&'static str], allowed: &[&str], what: &str| -> Result<()> {
            match string(names) {
                Some((n, s)) if !allowed.contains(&s.as_str()) => {
                    Err(bad(n, format!("`{s}` is not supported; expected {}{what}", allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(" or "))))
                }
                _ => Ok(()),
            }
        };
        match arch {
            HfArch::Llama | HfArch::Dream => {
                expect_str(&["hidden_act"], &["silu"], "")?;
                if flag(&["use_sliding_window"], false)? {
                    return Err(bad("use_sliding_window", "sliding-window attention is not supported; expected false".into()));
                }
            }
            HfArch::Llada => {
                expect_str(&["activation_type", "hidden_act"], &["silu", "swiglu"], "")?;
                expect_str(&["layer_norm_type"], &["rms"], " (RMSNorm)")?;
                expect_str(&["block_type"], &["llama"], "")?;
                if flag(&["include_bias"], false)? {
                    return Err(bad("include_bias", "biases on every projection are not supported (LLaDA-8B has none); expected false".into()));
                }
                if !flag(&["rope"], true)? {
                    return Err(bad("rope", "models without RoPE are not supported; expected true".into()));
                }
                for key in ["alibi", "scale_logits"] {
                    if flag(&[key], false)? {
                        return Err(bad(key, "is not supported (LLaDA-8B does not use it); expected false".into()));
                    }
                }
                if let Some((n, v)) = find(&["clip_qkv"]) {
                    return Err(bad(n, format!("clipping Q/K/V at {v} is not supported; expected null")));
                }
            }
            HfArch::Gpt2 => {
                // GPT-2's "gelu_new" is the tanh approximation, which ggml's GELU computes.
                expect_str(&["activation_function"], &["gelu_new", "gelu_pytorch_tanh", "gelu_fast"], " (the tanh GELU)")?;
                if flag(&["scale_attn_by_inverse_layer_idx"], false)? {
                    return Err(bad("scale_attn_by_inverse_layer_idx", "is not supported; expected false".into()));
                }
                if !flag(&["scale_attn_weights"], true)? {
                    return Err(bad("scale_attn_weights", "attention without the 1/sqrt(head size) scale is not supported; expected true".into()));
                }
            }
        }
        // Both are written as f32: a value finite (or nonzero) as f64 may not be as f32.
        let as_f32 = |v: f64| (v as f32).is_finite() && v as f32 > 0.0;
        if !(cfg.norm_eps > 0.0 && cfg.norm_eps < 1.0 && as_f32(cfg.norm_eps)) {
            return Err(bad(used(k.eps), format!("{} is not a norm epsilon (a small positive number such as 1e-5, nonzero in f32)", cfg.norm_eps)));
        }
        if !(cfg.rope_theta > 0.0 && as_f32(cfg.rope_theta)) {
            return Err(bad("rope_theta", format!("{} is not a RoPE frequency base (a positive number such as 10000)", cfg.rope_theta)));
        }
        for (names, v) in [(k.hidden, cfg.hidden_size), (k.ffn, cfg.intermediate_size), (k.vocab, cfg.vocab_size), (k.ctx, cfg.max_position_embeddings), (k.layers, cfg.num_hidden_layers)] {
            if v > u32::MAX as u64 {
                return Err(bad(used(names), format!("{v} does not fit in 32 bits")));
            }
        }
        Ok(cfg)
    }
}

/// A family's `config.json` names for each hyper-parameter, the first present winning (LLaDA's
/// LLaMA-style names before its OLMo ones, as llama.cpp's converter reads them; its embedding
/// is `embedding_size` rows when given, as its modelling code sizes it).
struct Keys {
    hidden: &'static [&'static str],
    ffn: &'static [&'static str],
    layers: &'static [&'static str],
    heads: &'static [&'static str],
    kv: &'static [&'static str],
    vocab: &'static [&'static str],
    ctx: &'static [&'static str],
    eps: &'static [&'static str],
    tie: &'static [&'static str],
}

impl Keys {
    fn of(arch: HfArch) -> Keys {
        match arch {
            HfArch::Llama | HfArch::Dream => Keys {
                hidden: &["hidden_size"],
                ffn: &["intermediate_size"],
                layers: &["num_hidden_layers"],
                heads: &["num_attention_heads"],
                kv: &["num_key_value_heads"],
                vocab: &["vocab_size"],
                ctx: &["max_position_embeddings"],
                eps: &["rms_norm_eps"],
                tie: &["tie_word_embeddings"],
            },
            HfArch::Llada => Keys {
                hidden: &["hidden_size", "d_model"],
                ffn: &["intermediate_size", "mlp_hidden_size"],
                layers: &["num_hidden_layers", "n_layers"],
                heads: &["num_attention_heads", "n_heads"],
                kv: &["num_key_value_heads", "n_kv_heads"],
                vocab: &["embedding_size", "vocab_size"],
                ctx: &["max_sequence_length", "max_position_embeddings"],
                eps: &["rms_norm_eps"],
                tie: &["weight_tying", "tie_word_embeddings"],
            },
            HfArch::Gpt2 => Keys {
                hidden: &["n_embd", "hidden_size"],
                ffn: &["n_inner"],
                layers: &["n_layer", "num_hidden_layers"],
                heads: &["n_head", "num_attention_heads"],
                kv: &["n_head", "num_attention_heads"],
                vocab: &["vocab_size"],
                ctx: &["n_positions", "n_ctx", "max_position_embeddings"],
                eps: &["layer_norm_epsilon"],
                tie: &["tie_word_embeddings"],
            },
        }
    }
}

/// The architecture `config.json` names: the first `architectures` entry dlm converts. A list
/// that names only other classes is refused even when `model_type` is one dlm knows (a
/// `MistralForCausalLM` says `model_type: llama` in some fine-tunes, and is not a LLaMA). Only
/// without a list (absent, null or empty) does `model_type` decide, with a note saying so.
fn arch_of(raw: &Json) -> Option<(HfArch, Option<String>)> {
    let listed: Vec<&Json> = match raw.get("architectures") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(a)) => a.iter().collect(),
        Some(other) => vec![other],
    };
    if !listed.is_empty() {
        return listed.iter().filter_map(|v| v.as_str()).find_map(|name| CLASSES.iter().find(|(c, _, _)| *c == name)).map(|&(_, _, a)| (a, None));
    }
    let ty = raw.get("model_type").and_then(Json::as_str)?.to_ascii_lowercase();
    let &(class, _, a) = CLASSES.iter().find(|(_, t, _)| *t == ty)?;
    Some((a, Some(format!("no `architectures` list; converting by model_type `{ty}` as {class}"))))
}

/// A token id, or the first of a list (`eos_token_id: [1, 2]`).
fn first_id(v: &Json) -> Option<u32> {
    match v {
        Json::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        Json::Array(a) => a.first().and_then(Json::as_u64).and_then(|x| u32::try_from(x).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_model_types() {
        let j = |s: &str| serde_json::from_str::<Json>(s).unwrap();
        let arch = |s: &str| arch_of(&j(s)).map(|(a, note)| (a, note.is_some()));
        assert_eq!(arch(r#"{"architectures": ["GPT2LMHeadModel"]}"#), Some((HfArch::Gpt2, false)));
        assert_eq!(arch(r#"{"model_type": "Dream"}"#), Some((HfArch::Dream, true)));
        assert_eq!(arch(r#"{"architectures": [], "model_type": "llama"}"#), Some((HfArch::Llama, true)));
        assert_eq!(arch(r#"{"architectures": ["Foo", "LLaDAModelLM"]}"#), Some((HfArch::Llada, false)));
        assert_eq!(arch(r#"{"architectures": ["MambaForCausalLM"], "model_type": "mamba"}"#), None);
        // A list naming another class decides, whatever model_type says.
        assert_eq!(arch(r#"{"architectures": ["MistralForCausalLM"], "model_type": "llama"}"#), None);
        assert_eq!(arch(r#"{"architectures": [7], "model_type": "llama"}"#), None);
        assert!(HfArch::Llama.permutes_qk() && HfArch::Llada.permutes_qk() && !HfArch::Dream.permutes_qk());
        assert_eq!(HfArch::Gpt2.family().name, "DiffuGPT");
    }
}
