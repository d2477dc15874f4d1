//! Reading a Hugging Face LLaMA-family checkpoint: `config.json` and safetensors weights
//! (one `model.safetensors` or shards listed in `model.safetensors.index.json`), memory-mapped.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::{ConvertError, Result};

/// The hyper-parameters dlm needs from `config.json`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_hidden_layers: u64,
    pub num_attention_heads: u64,
    pub num_key_value_heads: u64,
    pub vocab_size: u64,
    pub max_position_embeddings: u64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<u64>,
    intermediate_size: Option<u64>,
    num_hidden_layers: Option<u64>,
    num_attention_heads: Option<u64>,
    num_key_value_heads: Option<u64>,
    vocab_size: Option<u64>,
    max_position_embeddings: Option<u64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    hidden_act: Option<String>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    #[serde(rename = "_name_or_path")]
    name_or_path: Option<String>,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> u64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads and validates `dir/config.json`.
    pub fn load(dir: &Path) -> Result<LlamaConfig> {
        let path = dir.join("config.json");
        let text = crate::read_text(&path)?;
        let raw: RawConfig = serde_json::from_str(&text)
            .map_err(|e| ConvertError::input(&path, format!("not valid JSON for a model config: {e}")))?;
        let bad = |field: &str, what: String| ConvertError::field(&path, field, what);
        let arch_ok = raw.architectures.as_ref().is_some_and(|a| a.iter().any(|s| s == "LlamaForCausalLM"))
            || raw.model_type.as_deref() == Some("llama");
        if !arch_ok {
            return Err(bad(
                "architectures",
                format!("expected LlamaForCausalLM (DiffuLLaMA), found {:?} / model_type {:?}", raw.architectures, raw.model_type),
            ));
        }
        let req = |field: &str, v: Option<u64>| v.filter(|&x| x > 0).ok_or_else(|| bad(field, "missing or not a positive integer".into()));
        let heads = req("num_attention_heads", raw.num_attention_heads)?;
        let cfg = LlamaConfig {
            hidden_size: req("hidden_size", raw.hidden_size)?,
            intermediate_size: req("intermediate_size", raw.intermediate_size)?,
            num_hidden_layers: req("num_hidden_layers", raw.num_hidden_layers)?,
            num_attention_heads: heads,
            num_key_value_heads: match raw.num_key_value_heads {
                None => heads,
                v => req("num_key_value_heads", v)?,
            },
            vocab_size: req("vocab_size", raw.vocab_size)?,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10000.0),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: first_id(&raw.bos_token_id),
            eos_token_id: first_id(&raw.eos_token_id),
            name: raw.name_or_path.filter(|s| !s.is_empty()),
        };
        if cfg.max_position_embeddings == 0 {
            return Err(bad("max_position_embeddings", "must be at least 1".into()));
        }
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(bad("num_attention_heads", format!("{} does not divide hidden_size {}", heads, cfg.hidden_size)));
        }
        if cfg.num_attention_heads % cfg.num_key_value_heads != 0 {
            return Err(bad("num_key_value_heads", format!("{} does not divide num_attention_heads {heads}", cfg.num_key_value_heads)));
        }
        if cfg.head_dim() % 2 != 0 {
            return Err(bad("hidden_size", format!("head dimension {} must be even for RoPE", cfg.head_dim())));
        }
        if let Some(scaling) = raw.rope_scaling.filter(|v| !v.is_null()) {
            return Err(bad("rope_scaling", format!("RoPE scaling {scaling} is not supported yet; expected null")));
        }
        if let Some(act) = raw.hidden_act.filter(|a| a != "silu") {
            return Err(bad("hidden_act", format!("`{act}` is not supported; expected \"silu\"")));
        }
        // Both are written as f32: a value finite as f64 may not be as f32.
        let as_f32 = |v: f64| (v as f32).is_finite();
        if !(cfg.rms_norm_eps > 0.0 && cfg.rms_norm_eps < 1.0 && as_f32(cfg.rms_norm_eps)) {
            return Err(bad("rms_norm_eps", format!("{} is not an RMS-norm epsilon (a small positive number such as 1e-5)", cfg.rms_norm_eps)));
        }
        if !(cfg.rope_theta > 0.0 && as_f32(cfg.rope_theta)) {
            return Err(bad("rope_theta", format!("{} is not a RoPE frequency base (a positive number such as 10000)", cfg.rope_theta)));
        }
        Ok(cfg)
    }
}

fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).and_then(|x| u32::try_from(x).ok()),
        _ => None,
    }
}

/// Element type of a source tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceDtype {
    F32,
    F16,
    BF16,
}

impl SourceDtype {
    pub fn size(self) -> usize {
        match self {
            SourceDtype::F32 => 4,
            SourceDtype::F16 | SourceDtype::BF16 => 2,
        }
    }
}

/// Where one source tensor lives.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub file: usize,
    pub dtype: SourceDtype,
    /// Hugging Face (row-major) shape: `[rows, cols]` for a weight matrix.
    pub shape: Vec<u64>,
    /// Byte range inside the file's map.
    pub start: usize,
    pub end: usize,
}

/// All safetensors files of a checkpoint, mapped, with a name index.
pub struct Checkpoint {
    pub files: Vec<PathBuf>,
    maps: Vec<memmap2::Mmap>,
    pub tensors: BTreeMap<String, SourceTensor>,
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = crate::read_text(&index_path)?;
            let index: Index = serde_json::from_str(&text)
                .map_err(|e| ConvertError::field(&index_path, "weight_map", format!("expected a map of tensor name to file: {e}")))?;
            let mut names: Vec<&String> = index.weight_map.values().collect();
            names.sort();
            names.dedup();
            for n in &names {
                if n.contains('/') || n.contains('\\') || n.starts_with('.') {
                    return Err(ConvertError::field(&index_path, "weight_map", format!("shard name {n:?} must be a plain file name")));
                }
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(ConvertError::input(
                dir,
                "no weights found: expected model.safetensors or model.safetensors.index.json (PyTorch .bin checkpoints are not supported; save with safe_serialization=True)".into(),
            ));
        };

        let mut maps = Vec::with_capacity(files.len());
        let mut tensors = BTreeMap::new();
        for (fi, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| ConvertError::io(path, e))?;
            // SAFETY: read-only map of a checkpoint file for the duration of the conversion;
            // undefined only if another process truncates the file meanwhile, which is outside
            // our control as for any mmap-based loader. All reads go through bounds-checked slices.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ConvertError::io(path, e))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| ConvertError::input(path, format!("not a valid safetensors file: {e}")))?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let dtype = match view.dtype() {
                    Dtype::F32 => SourceDtype::F32,
                    Dtype::F16 => SourceDtype::F16,
                    Dtype::BF16 => SourceDtype::BF16,
                    other => {
                        return Err(ConvertError::input(path, format!("tensor `{name}` has dtype {other:?}; expected BF16, F16 or F32")))
                    }
                };
                let start = view.data().as_ptr() as usize - base;
                let end = start + view.data().len();
                let shape = view.shape().iter().map(|&d| d as u64).collect();
                if tensors.insert(name.clone(), SourceTensor { file: fi, dtype, shape, start, end }).is_some() {
                    return Err(ConvertError::input(path, format!("tensor `{name}` appears in more than one file")));
                }
            }
            maps.push(map);
        }
        Ok(Checkpoint { files, maps, tensors })
    }

    /// Raw bytes of a tensor.
    pub fn bytes(&self, t: &SourceTensor) -> &[u8] {
        &self.maps[t.file][t.start..t.end]
    }

    /// Row `row` (of length `n`) of a tensor, decoded to f32 into `out`.
    pub fn decode_row(&self, t: &SourceTensor, row: usize, out: &mut [f32]) {
        let n = out.len();
        let size = t.dtype.size();
        decode(t.dtype, &self.bytes(t)[row * n * size..(row + 1) * n * size], out);
    }

    /// A whole tensor as f32.
    pub fn to_f32(&self, t: &SourceTensor) -> Vec<f32> {
        let mut out = vec![0f32; (t.end - t.start) / t.dtype.size()];
        decode(t.dtype, self.bytes(t), &mut out);
        out
    }
}

/// Little-endian `dtype` values to f32.
pub fn decode(dtype: SourceDtype, src: &[u8], out: &mut [f32]) {
    match dtype {
        SourceDtype::F32 => out.iter_mut().zip(src.chunks_exact(4)).for_each(|(d, b)| *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        SourceDtype::F16 => out.iter_mut().zip(src.chunks_exact(2)).for_each(|(d, b)| *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        SourceDtype::BF16 => out.iter_mut().zip(src.chunks_exact(2)).for_each(|(d, b)| *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
    }
}
