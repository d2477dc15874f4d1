//! dlm-convert: Hugging Face DiffuLLaMA checkpoint → GGUF (see ../shared/DESIGN.md §3).
//!
//! [`Plan::new`] reads and validates everything (config, tokenizer, every tensor's presence,
//! dtype and shape) before a byte is written; [`Plan::write`] then streams tensor by tensor:
//! source → f32 → (Q/K permutation) → ggml's quantizer in parallel → temporary file, renamed
//! over the target only when complete. Peak memory is about one tensor, not the model.

pub mod checkpoint;
pub mod policy;
pub mod requant;
pub mod vocab;

use std::path::{Path, PathBuf};
use std::time::Instant;

use dlm::gguf::{GgufWriter, Value};
use dlm::{keys, GgmlType};
use rayon::prelude::*;

pub use checkpoint::{Checkpoint, LlamaConfig, SourceTensor};
pub use policy::OutType;
pub use requant::{Requant, RequantTensor};
pub use vocab::Vocab;

/// Conversion errors; each names the file, field or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: {what}")]
    Input { path: PathBuf, what: String },
    #[error("{path}: field `{field}`: {what}")]
    Field { path: PathBuf, field: String, what: String },
    #[error("tensor `{name}` ({file}): {what}")]
    Tensor { name: String, file: PathBuf, what: String },
    #[error(transparent)]
    Dlm(#[from] dlm::Error),
}

impl ConvertError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ConvertError::Io { path: path.to_owned(), err: source }
    }
    pub(crate) fn input(path: &Path, what: String) -> Self {
        ConvertError::Input { path: path.to_owned(), what }
    }
    pub(crate) fn field(path: &Path, field: &str, what: String) -> Self {
        ConvertError::Field { path: path.to_owned(), field: field.to_owned(), what }
    }
}

pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

/// The largest metadata file (config, tokenizer, index) read whole into memory.
const MAX_TEXT_FILE: u64 = 1 << 30;

/// A checkpoint's metadata file, read whole: a regular file (a link to `/dev/zero` or a FIFO
/// would never end) of at most 1 GiB.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path).map_err(|e| ConvertError::io(path, e))?;
    if !meta.is_file() {
        return Err(ConvertError::input(path, "not a regular file".into()));
    }
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
    file.take(MAX_TEXT_FILE + 1).read_to_end(&mut bytes).map_err(|e| ConvertError::io(path, e))?;
    if bytes.len() as u64 > MAX_TEXT_FILE {
        return Err(ConvertError::input(path, "more than 1 GiB; not a checkpoint's metadata file".into()));
    }
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_file(path)?).map_err(|e| ConvertError::input(path, format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub out_type: OutType,
    /// `--mask-id`: overrides the tokenizer config's mask token and the DiffuLLaMA default.
    pub mask_id: Option<u32>,
    pub name: Option<String>,
    /// `--causal`: an autoregressive checkpoint; writes `llama.attention.causal = true` so that
    /// dlm-run keeps the causal mask (decoded left to right with `--block-length 1`).
    pub causal: bool,
}

/// One output tensor.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub hf_name: String,
    pub name: String,
    /// ggml order (`shape[0]` is the row length).
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
    /// The policy's type when it did not fit the row length and `ggml_type` is the fallback.
    pub wanted: Option<GgmlType>,
    /// Heads to permute rows by (Hugging Face rotate-half → ggml interleaved RoPE), for Q and K.
    pub permute_heads: Option<u64>,
    pub source: SourceTensor,
}

impl PlannedTensor {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A validated conversion, ready to write.
pub struct Plan {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    pub checkpoint: Checkpoint,
    pub tensors: Vec<PlannedTensor>,
    pub header: GgufWriter,
    pub mask_id: u32,
    pub mask_source: &'static str,
}

/// What a finished conversion did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub tensors: usize,
    pub params: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes of tensor data alone (without header, tokenizer and padding).
    pub tensor_bytes: u64,
    pub seconds: f64,
}

impl Summary {
    /// What writing `header`'s tensors (`(shape, type)` each) from `bytes_in` source bytes did,
    /// started at `start`.
    pub(crate) fn of<'a>(header: &GgufWriter, tensors: impl Iterator<Item = (&'a [u64], GgmlType)> + Clone, bytes_in: u64, start: Instant) -> Summary {
        Summary {
            tensors: tensors.clone().count(),
            params: tensors.clone().map(|(shape, _)| shape.iter().product::<u64>()).sum(),
            bytes_in,
            bytes_out: header.file_size(),
            tensor_bytes: tensors.map(|(shape, t)| t.tensor_bytes(shape).unwrap_or(0)).sum(),
            seconds: start.elapsed().as_secs_f64(),
        }
    }

    /// Bits per weight over all tensors.
    pub fn bits_per_weight(&self) -> f64 {
        self.tensor_bytes as f64 * 8.0 / self.params.max(1) as f64
    }
}

/// Hugging Face tensor name → (GGUF name, layer).
fn map_name(hf: &str) -> Option<(String, Option<u64>)> {
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, leaf) = rest.split_once('.')?;
    let layer: u64 = layer.parse().ok()?;
    let gg = match leaf {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some((format!("blk.{layer}.{gg}.weight"), Some(layer)))
}

/// Tensors present in many HF checkpoints that carry no weights (recomputed at run time).
fn ignorable(hf: &str) -> bool {
    hf.ends_with(".rotary_emb.inv_freq")
}

impl Plan {
    /// Reads and validates the checkpoint in `dir` against `opts`; writes nothing.
    pub fn new(dir: &Path, opts: &Options) -> Result<Plan> {
        if !dir.is_dir() {
            return Err(ConvertError::input(dir, "neither a folder nor a GGUF file (expected a Hugging Face checkpoint folder, or a GGUF model to re-quantize)".into()));
        }
        let config = LlamaConfig::load(dir)?;
        let vocab = Vocab::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let cfg_path = dir.join("config.json");
        if vocab.tokens.len() as u64 != config.vocab_size {
            return Err(ConvertError::field(
                &cfg_path,
                "vocab_size",
                format!("{} but the tokenizer has {} tokens", config.vocab_size, vocab.tokens.len()),
            ));
        }
        let (mask_id, mask_source) = match (opts.mask_id, vocab.mask_from_config) {
            (Some(id), _) => (id, "--mask-id"),
            (None, Some(id)) => (id, "tokenizer_config.json mask_token"),
            (None, None) => (keys::DIFFULLAMA_MASK_ID, "DiffuLLaMA default"),
        };
        if mask_id as u64 >= config.vocab_size {
            return Err(ConvertError::input(
                dir,
                format!("mask id {mask_id} ({mask_source}) is outside the {}-token vocabulary", config.vocab_size),
            ));
        }

        let c = &config;
        let (h, hd, f, v) = (c.hidden_size, c.head_dim(), c.intermediate_size, c.vocab_size);
        let (q_rows, kv_rows) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        // Expected Hugging Face shapes (row-major: [rows, cols]).
        let expect = |gg: &str| -> Vec<u64> {
            let leaf = gg.rsplit_once('.').map_or(gg, |(a, _)| a);
            let leaf = leaf.rsplit('.').next().unwrap_or(leaf);
            match leaf {
                "token_embd" | "output" => vec![v, h],
                "attn_q" => vec![q_rows, h],
                "attn_k" | "attn_v" => vec![kv_rows, h],
                "attn_output" => vec![h, q_rows],
                "ffn_gate" | "ffn_up" => vec![f, h],
                "ffn_down" => vec![h, f],
                _ => vec![h], // norms
            }
        };

        // Layers the config names beyond those the checkpoint holds are missing tensors; say so
        // before listing every layer's names (a num_hidden_layers of 2^32 would take gigabytes).
        let present = checkpoint.tensors.keys().filter_map(|n| map_name(n).and_then(|(_, l)| l)).max().map_or(0, |l| l + 1);
        if c.num_hidden_layers > present {
            return Err(ConvertError::input(
                dir,
                format!(
                    "tensor `model.layers.{present}.input_layernorm.weight` is missing from the checkpoint (config.json num_hidden_layers is {}, the checkpoint has {present} layers)",
                    c.num_hidden_layers
                ),
            ));
        }

        let mut wanted_names: Vec<(String, String, Option<u64>)> = Vec::new();
        let mut push = |hf: &str| {
            let (gg, layer) = map_name(hf).expect("names below are all mapped");
            wanted_names.push((hf.to_owned(), gg, layer));
        };
        push("model.embed_tokens.weight");
        for i in 0..c.num_hidden_layers {
            for leaf in [
                "input_layernorm",
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "post_attention_layernorm",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                push(&format!("model.layers.{i}.{leaf}.weight"));
            }
        }
        push("model.norm.weight");
        let tied = c.tie_word_embeddings && !checkpoint.tensors.contains_key("lm_head.weight");
        if !tied {
            push("lm_head.weight");
        }

        for name in checkpoint.tensors.keys() {
            if !ignorable(name) && !wanted_names.iter().any(|(hf, _, _)| hf == name) {
                return Err(ConvertError::input(
                    dir,
                    format!("unexpected tensor `{name}` for a {}-layer LLaMA (wrong architecture or layer count?)", c.num_hidden_layers),
                ));
            }
        }

        let mut tensors = Vec::with_capacity(wanted_names.len());
        for (hf, gg, layer) in wanted_names {
            let src = checkpoint.tensors.get(&hf).ok_or_else(|| {
                ConvertError::input(dir, format!("tensor `{hf}` is missing from the checkpoint (needed for {gg})"))
            })?;
            let want = expect(&gg);
            if src.shape != want {
                return Err(ConvertError::Tensor {
                    name: hf.clone(),
                    file: checkpoint.files[src.file].clone(),
                    what: format!("shape {:?}, but config.json implies {want:?}", src.shape),
                });
            }
            let shape: Vec<u64> = want.iter().rev().copied().collect(); // ggml order
            let chosen = policy::choose(opts.out_type, &gg, layer, c.num_hidden_layers, shape.len());
            let ggml_type = policy::fit(chosen, shape[0]);
            let permute_heads = match gg.rsplit('.').nth(1) {
                Some("attn_q") => Some(c.num_attention_heads),
                Some("attn_k") => Some(c.num_key_value_heads),
                _ => None,
            };
            tensors.push(PlannedTensor {
                hf_name: hf,
                name: gg,
                shape,
                ggml_type,
                wanted: (ggml_type != chosen).then_some(chosen),
                permute_heads,
                source: src.clone(),
            });
        }

        let name = opts
            .name
            .clone()
            .or_else(|| c.name.as_ref().map(|n| n.rsplit('/').next().unwrap_or(n).to_owned()))
            .or_else(|| dir.canonicalize().ok()?.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "DiffuLLaMA".into());
        let header = build_header(c, &vocab, &name, opts.out_type, mask_id, opts.causal, &tensors)?;
        Ok(Plan { dir: dir.to_owned(), config, checkpoint, tensors, header, mask_id, mask_source })
    }

    /// Total bytes of source weights that will be read.
    pub fn bytes_in(&self) -> u64 {
        self.tensors.iter().map(|t| (t.source.end - t.source.start) as u64).sum()
    }

    /// Refuses an output path that is a folder, a device, or (also through a link) a file of
    /// the input folder: config, tokenizer, shards and their index may all be read.
    pub fn check_output(&self, out: &Path) -> Result<()> {
        let inputs: Vec<PathBuf> = std::fs::read_dir(&self.dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        Ok(dlm::atomic::check_output(out, &inputs)?)
    }

    /// Converts and writes every tensor to `out`. `progress(i, tensor)` is called as each
    /// tensor is converted. Writing overlaps conversion: a writer thread takes each finished
    /// tensor through a one-slot channel while the next one is quantized (so at most two
    /// converted tensors are in memory).
    pub fn write(&self, out: &Path, progress: impl FnMut(usize, &PlannedTensor)) -> Result<Summary> {
        let start = Instant::now();
        self.check_output(out)?;
        write_streamed(&self.header, out, &self.tensors, |t| self.convert_tensor(t), progress)?;
        Ok(Summary::of(&self.header, self.tensors.iter().map(|t| (t.shape.as_slice(), t.ggml_type)), self.bytes_in(), start))
    }

    /// One tensor's output bytes. Each parallel task takes a run of output rows, decodes the
    /// matching source rows (through the Q/K permutation) into a small f32 buffer and quantizes
    /// it straight into the output: no full-size f32 copy of the tensor is ever made.
    pub fn convert_tensor(&self, t: &PlannedTensor) -> Result<Vec<u8>> {
        let row = t.shape[0] as usize;
        let rows = (t.n_elements() / t.shape[0]) as usize;
        let err = |what: String| ConvertError::Tensor {
            name: t.hf_name.clone(),
            file: self.checkpoint.files[t.source.file].clone(),
            what,
        };
        let row_bytes = t.ggml_type.row_bytes(row as u64).ok_or_else(|| err(format!("rows of {row} do not fit {}", t.ggml_type)))? as usize;
        let src_row = |r: usize| match t.permute_heads {
            Some(heads) => rope_source_row(r, rows, heads as usize),
            None => r,
        };
        let rows_per_task = rows_per_task(row);
        let mut out = vec![0u8; rows * row_bytes];
        out.par_chunks_mut(rows_per_task * row_bytes)
            .enumerate()
            .try_for_each_init(Vec::new, |buf: &mut Vec<f32>, (chunk, dst)| {
                let n = dst.len() / row_bytes;
                buf.resize(n * row, 0.0);
                for (k, vals) in buf.chunks_exact_mut(row).enumerate() {
                    self.checkpoint.decode_row(&t.source, src_row(chunk * rows_per_task + k), vals);
                }
                quantize_into(t.ggml_type, buf, row, dst)
            })
            .map_err(|e| err(e.to_string()))?;
        Ok(out)
    }
}

/// Writes `header` and then each of `tensors` as `convert` makes it, to a temporary file
/// renamed to `out` when complete. Writing overlaps conversion: a writer thread takes each
/// finished tensor through a one-slot channel while the next one is converted (so at most two
/// converted tensors are in memory). `progress(i, tensor)` is called as each is converted.
pub(crate) fn write_streamed<T: Sync>(
    header: &GgufWriter,
    out: &Path,
    tensors: &[T],
    convert: impl Fn(&T) -> Result<Vec<u8>>,
    mut progress: impl FnMut(usize, &T),
) -> Result<()> {
    let mut stream = header.create(out)?;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let writer = scope.spawn(move || -> Result<dlm::gguf::TensorStream> {
            for data in rx {
                stream.write_tensor(&data)?;
            }
            Ok(stream)
        });
        let mut converted = Ok(());
        for (i, t) in tensors.iter().enumerate() {
            match convert(t) {
                // A closed channel means the writer failed: its error is returned below.
                Ok(data) => {
                    if tx.send(data).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    converted = Err(e);
                    break;
                }
            }
            progress(i, t);
        }
        drop(tx);
        let stream = writer.join().expect("the writer thread does not panic")?;
        converted?;
        Ok(stream.finish()?)
    })
}

/// Rows per parallel task: about 256 KiB of f32, enough to amortize, small enough to balance.
pub(crate) fn rows_per_task(row: usize) -> usize {
    ((1 << 16) / row).max(1)
}

/// For output row `dst_row` of a Q or K weight with `rows` rows and `heads` heads, the
/// Hugging Face (rotate-half) row it comes from. ggml's NORM RoPE rotates adjacent pairs
/// (2i, 2i+1) where Hugging Face rotates (i, i + head_dim/2): llama.cpp's converter does
/// `w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn rope_source_row(dst_row: usize, rows: usize, heads: usize) -> usize {
    let hd = rows / heads;
    let (h, r) = (dst_row / hd, dst_row % hd);
    h * hd + (r % 2) * (hd / 2) + r / 2
}

/// `values` (whole rows of `row`) into `dst` as type `t`.
pub(crate) fn quantize_into(t: GgmlType, values: &[f32], row: usize, dst: &mut [u8]) -> dlm::Result<()> {
    if t == GgmlType::F32 {
        for (d, x) in dst.chunks_exact_mut(4).zip(values) {
            d.copy_from_slice(&x.to_le_bytes());
        }
        return Ok(());
    }
    dlm::backend::ggml::quantize(t, values, row, dst)
}

/// Quantizes rows of `values` in parallel with ggml's quantizer alone: the bound a conversion
/// can approach (benches/convert.rs compares the two).
pub fn quantize_parallel(t: GgmlType, values: &[f32], row: usize) -> dlm::Result<Vec<u8>> {
    let row_bytes = t
        .row_bytes(row as u64)
        .ok_or_else(|| dlm::Error::Ggml(format!("row length {row} does not fit {t}")))? as usize;
    let per = rows_per_task(row);
    let mut out = vec![0u8; values.len() / row * row_bytes];
    out.par_chunks_mut(per * row_bytes)
        .zip(values.par_chunks(per * row))
        .try_for_each(|(dst, src)| quantize_into(t, src, row, dst))?;
    Ok(out)
}

fn build_header(
    c: &LlamaConfig,
    vocab: &Vocab,
    name: &str,
    out_type: OutType,
    mask_id: u32,
    causal: bool,
    tensors: &[PlannedTensor],
) -> Result<GgufWriter> {
    let mut w = GgufWriter::new();
    let a = |k: &str| keys::arch("llama", k);
    let u32_of = |v: u64, what: &str| -> Result<Value> {
        u32::try_from(v)
            .map(Value::U32)
            .map_err(|_| ConvertError::field(Path::new("config.json"), what, format!("{v} does not fit in 32 bits")))
    };
    w.set(keys::ARCHITECTURE, "llama")?;
    w.set(keys::NAME, name)?;
    w.set(keys::FILE_TYPE, out_type.file_type())?;
    w.set(keys::QUANTIZATION_VERSION, 2u32)?;
    w.set(keys::ALIGNMENT, dlm::gguf::DEFAULT_ALIGNMENT as u32)?;
    w.set(&a("context_length"), u32_of(c.max_position_embeddings, "max_position_embeddings")?)?;
    w.set(&a("embedding_length"), u32_of(c.hidden_size, "hidden_size")?)?;
    w.set(&a("block_count"), u32_of(c.num_hidden_layers, "num_hidden_layers")?)?;
    w.set(&a("feed_forward_length"), u32_of(c.intermediate_size, "intermediate_size")?)?;
    w.set(&a("rope.dimension_count"), u32_of(c.head_dim(), "hidden_size")?)?;
    w.set(&a("attention.head_count"), u32_of(c.num_attention_heads, "num_attention_heads")?)?;
    w.set(&a("attention.head_count_kv"), u32_of(c.num_key_value_heads, "num_key_value_heads")?)?;
    w.set(&a("attention.layer_norm_rms_epsilon"), c.rms_norm_eps as f32)?;
    w.set(&a("rope.freq_base"), c.rope_theta as f32)?;
    w.set(&a("vocab_size"), u32_of(c.vocab_size, "vocab_size")?)?;
    w.set(&a("attention.causal"), causal)?;

    w.set(keys::TOKENIZER_MODEL, "llama")?;
    w.set(keys::TOKENS, Value::string_array(vocab.tokens.iter().cloned()))?;
    w.set(keys::SCORES, Value::f32_array(vocab.scores.iter().copied()))?;
    w.set(keys::TOKEN_TYPE, Value::i32_array(vocab.types.iter().copied()))?;
    for (key, id) in [
        (keys::BOS_ID, vocab.bos.or(c.bos_token_id)),
        (keys::EOS_ID, vocab.eos.or(c.eos_token_id)),
        (keys::UNK_ID, vocab.unk),
        (keys::PAD_ID, vocab.pad),
    ] {
        if let Some(id) = id {
            w.set(key, id)?;
        }
    }
    w.set(keys::ADD_BOS, vocab.add_bos)?;
    w.set(keys::ADD_EOS, vocab.add_eos)?;
    w.set(keys::MASK_ID, mask_id)?;
    w.set(keys::HF_JSON, vocab.hf_json.as_str())?;
    w.set(keys::SHIFT_LOGITS, true)?;

    for t in tensors {
        w.add_tensor(&t.name, &t.shape, t.ggml_type)?;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_numpy_formula() {
        // numpy: np.arange(8).reshape(2, 2, 2).swapaxes(1, 2).reshape(8) == [0, 2, 1, 3, 4, 6, 5, 7]
        let rows: Vec<usize> = (0..8).map(|r| rope_source_row(r, 8, 2)).collect();
        assert_eq!(rows, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // head_dim 6: [0, 3, 1, 4, 2, 5]
        let rows: Vec<usize> = (0..6).map(|r| rope_source_row(r, 6, 1)).collect();
        assert_eq!(rows, vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn names_map_like_llama_cpp() {
        assert_eq!(map_name("model.layers.12.mlp.down_proj.weight"), Some(("blk.12.ffn_down.weight".into(), Some(12))));
        assert_eq!(map_name("model.layers.x.mlp.down_proj.weight"), None);
        assert_eq!(map_name("lm_head.weight").unwrap().0, "output.weight");
    }
}
