//! dlm-convert: Hugging Face checkpoint (DiffuLLaMA, LLaDA, Dream, DiffuGPT) → GGUF (see
//! docs/DESIGN.md §3).
//!
//! [`Plan::new`] reads and validates everything (config, tokenizer, every tensor's presence,
//! dtype and shape) before a byte is written; [`Plan::write`] then streams tensor by tensor:
//! source → f32 → (Q/K permutation) → ggml's quantizer in parallel → temporary file, renamed
//! over the target only when complete. Peak memory is about one tensor, not the model.

pub mod checkpoint;
pub mod config;
pub mod layout;
pub mod policy;
pub mod requant;
pub mod vocab;

use std::path::{Path, PathBuf};
use std::time::Instant;

use dlm::gguf::{GgufWriter, Value};
use dlm::{keys, GgmlType};
use rayon::prelude::*;

pub use checkpoint::{Checkpoint, SourceTensor};
pub use config::{HfArch, HfConfig};
pub use layout::Transform;
pub use policy::OutType;
pub use requant::{Requant, RequantTensor};
pub use vocab::{Vocab, VocabKind};

use layout::Layout;

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

/// The most `[PAD{i}]` placeholders a byte-level vocabulary is padded with to reach the
/// embedding's rows.
const MAX_VOCAB_PADDING: u64 = 1 << 16;

/// The largest metadata file (config, tokenizer, index) read whole into memory.
const MAX_TEXT_FILE: u64 = 1 << 30;

/// Opens a checkpoint's file for reading, refusing anything but a regular file: checked
/// before opening, since opening a FIFO blocks until someone writes to it, and reading a link
/// to `/dev/zero` never ends.
pub(crate) fn open_regular(path: &Path) -> Result<std::fs::File> {
    let meta = std::fs::metadata(path).map_err(|e| ConvertError::io(path, e))?;
    if !meta.is_file() {
        return Err(ConvertError::input(path, "not a regular file".into()));
    }
    std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))
}

/// A checkpoint's metadata file, read whole: a regular file of at most 1 GiB.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let file = open_regular(path)?;
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
    /// `--mask-id`: overrides the config files' mask token and the family's default.
    pub mask_id: Option<u32>,
    pub name: Option<String>,
    /// `--causal`: an autoregressive checkpoint; writes `{arch}.attention.causal = true` so that
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
    /// Q/K row permutation (Hugging Face rotate-half → ggml interleaved RoPE) or a GPT-2
    /// `Conv1D` transpose.
    pub transform: Transform,
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
    pub config: HfConfig,
    pub checkpoint: Checkpoint,
    pub tensors: Vec<PlannedTensor>,
    pub header: GgufWriter,
    pub mask_id: u32,
    /// Where the mask id came from (`--mask-id`, a config file, or the family's default).
    pub mask_source: String,
    /// What a user should know that does not stop the conversion.
    pub warnings: Vec<String>,
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

impl Plan {
    /// Reads and validates the checkpoint in `dir` against `opts`; writes nothing.
    pub fn new(dir: &Path, opts: &Options) -> Result<Plan> {
        if !dir.is_dir() {
            return Err(ConvertError::input(dir, "neither a folder nor a GGUF file (expected a Hugging Face checkpoint folder, or a GGUF model to re-quantize)".into()));
        }
        let config = HfConfig::load(dir)?;
        let mut vocab = Vocab::load(dir, config.vocab_size)?;
        let checkpoint = Checkpoint::open(dir)?;
        let cfg_path = dir.join("config.json");
        let c = &config;
        let family = c.arch.family();
        let n_tokens = vocab.tokens.len() as u64;
        let byte_level = matches!(vocab.kind, VocabKind::ByteLevel { .. });
        // A SentencePiece vocabulary must match exactly (LLaMA's always does); byte-level ones
        // are padded to the embedding's width as llama.cpp does (Qwen2's 151,665 tokens in 152,064
        // rows).
        if n_tokens > c.vocab_size || (!byte_level && n_tokens != c.vocab_size) {
            return Err(ConvertError::field(&cfg_path, "vocab_size", format!("{} but the tokenizer has {n_tokens} tokens", c.vocab_size)));
        }
        // Real paddings are a few hundred rows (Qwen2: 399, LLaDA: 115); millions of placeholder
        // strings would only be a way to exhaust memory.
        if c.vocab_size - n_tokens > MAX_VOCAB_PADDING {
            return Err(ConvertError::field(
                &cfg_path,
                "vocab_size",
                format!("{} is {} more than the tokenizer's {n_tokens} tokens; at most {MAX_VOCAB_PADDING} padding rows are accepted", c.vocab_size, c.vocab_size - n_tokens),
            ));
        }
        vocab.pad_to(c.vocab_size as usize);
        if c.arch == HfArch::Llada && vocab.bos.or(c.bos_token_id).is_some() {
            // llama.cpp's LLaDA converter: LLaDA is trained with BOS (when the files name one).
            vocab.add_bos = true;
        }
        // config.json's mask_token_id first, as llama.cpp's Dream converter reads it.
        let (mask_id, mask_source) = match (opts.mask_id, c.mask_token_id, vocab.mask_from_config) {
            (Some(id), _, _) => (id, "--mask-id".to_owned()),
            (None, Some(id), _) => (id, "config.json mask_token_id".to_owned()),
            (None, None, Some(id)) => (id, "tokenizer_config.json mask_token".to_owned()),
            (None, None, None) => (family.mask_id, format!("{} default", family.name)),
        };
        if mask_id as u64 >= c.vocab_size {
            return Err(ConvertError::input(
                dir,
                format!("mask id {mask_id} ({mask_source}) is outside the {}-token vocabulary", c.vocab_size),
            ));
        }

        let layout = Layout::new(c, |n| checkpoint.tensors.contains_key(n));
        // Layers the config names beyond those the checkpoint holds are missing tensors; say so
        // before listing every layer's names (a num_hidden_layers of 2^32 would take gigabytes).
        // Distinct layer numbers, not the highest: one stray `h.4000000000.*` must not pass.
        let layers: std::collections::BTreeSet<u64> = checkpoint.tensors.keys().filter_map(|n| layout.layer_of(n)).collect();
        if c.num_hidden_layers > layers.len() as u64 {
            let missing = (0..).find(|i| !layers.contains(i)).unwrap_or(0);
            return Err(ConvertError::input(
                dir,
                format!(
                    "tensor `{}` is missing from the checkpoint (config.json says {} layers, the checkpoint has {})",
                    layout.first_of_layer(missing),
                    c.num_hidden_layers,
                    layers.len()
                ),
            ));
        }
        let wanted = layout.tensors(c);
        let names: std::collections::HashSet<&str> = wanted.iter().map(|m| m.hf.as_str()).collect();
        for name in checkpoint.tensors.keys() {
            if !layout.ignorable(c, name) && !names.contains(name.as_str()) {
                return Err(ConvertError::input(
                    dir,
                    format!("unexpected tensor `{name}` for a {}-layer {} (wrong architecture or layer count?)", c.num_hidden_layers, family.name),
                ));
            }
        }

        let tied = !wanted.iter().any(|m| m.gguf == "output.weight");
        let mut tensors = Vec::with_capacity(wanted.len());
        for m in wanted {
            let src = checkpoint.tensors.get(&m.hf).ok_or_else(|| {
                ConvertError::input(dir, format!("tensor `{}` is missing from the checkpoint (needed for {})", m.hf, m.gguf))
            })?;
            if src.shape != m.hf_shape {
                return Err(ConvertError::Tensor {
                    name: m.hf.clone(),
                    file: checkpoint.files[src.file].clone(),
                    what: format!("shape {:?}, but config.json implies {:?}", src.shape, m.hf_shape),
                });
            }
            let shape = m.ggml_shape();
            let at = policy::Place { layer: m.layer, n_layer: c.num_hidden_layers, n_dims: shape.len(), tied, n_gqa: c.num_attention_heads / c.num_key_value_heads };
            let chosen = policy::choose(opts.out_type, &m.gguf, at);
            let ggml_type = policy::fit(chosen, shape[0]);
            tensors.push(PlannedTensor {
                hf_name: m.hf,
                name: m.gguf,
                shape,
                ggml_type,
                wanted: (ggml_type != chosen).then_some(chosen),
                transform: m.transform,
                source: src.clone(),
            });
        }

        let name = opts
            .name
            .clone()
            .or_else(|| c.name.as_ref().map(|n| n.rsplit('/').next().unwrap_or(n).to_owned()))
            .or_else(|| dir.canonicalize().ok()?.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| family.name.to_owned());
        let header = build_header(c, &vocab, &name, opts.out_type, mask_id, opts.causal, &tensors)?;
        let mut warnings = c.notes.clone();
        warnings.append(&mut vocab.warnings);
        if let VocabKind::ByteLevel { pre: None, .. } = vocab.kind {
            warnings.push(
                "the tokenizer's pre-tokenizer is not one llama.cpp names; tokenizer.ggml.pre is left out (dlm uses the embedded tokenizer.json; llama.cpp would fall back to its default)".to_owned(),
            );
        }
        Ok(Plan { dir: dir.to_owned(), config, checkpoint, tensors, header, mask_id, mask_source, warnings })
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
    /// it straight into the output: no full-size f32 copy of the tensor is made, except of a
    /// transposed GPT-2 weight, whose rows are the source's columns.
    pub fn convert_tensor(&self, t: &PlannedTensor) -> Result<Vec<u8>> {
        let row = t.shape[0] as usize;
        let rows = (t.n_elements() / t.shape[0]) as usize;
        let err = |what: String| ConvertError::Tensor {
            name: t.hf_name.clone(),
            file: self.checkpoint.files[t.source.file].clone(),
            what,
        };
        let row_bytes = t.ggml_type.row_bytes(row as u64).ok_or_else(|| err(format!("rows of {row} do not fit {}", t.ggml_type)))? as usize;
        // A transposed (GPT-2 Conv1D) source is read whole once: its output rows are columns.
        let whole = (t.transform == Transform::Transpose).then(|| self.checkpoint.to_f32(&t.source));
        let fill = |r: usize, vals: &mut [f32]| match (t.transform, &whole) {
            (Transform::Transpose, Some(src)) => {
                for (k, v) in vals.iter_mut().enumerate() {
                    *v = src[k * rows + r];
                }
            }
            (Transform::Permute(heads), _) => self.checkpoint.decode_row(&t.source, rope_source_row(r, rows, heads as usize), vals),
            _ => self.checkpoint.decode_row(&t.source, r, vals),
        };
        let rows_per_task = rows_per_task(row);
        let mut out = vec![0u8; rows * row_bytes];
        out.par_chunks_mut(rows_per_task * row_bytes)
            .enumerate()
            .try_for_each_init(Vec::new, |buf: &mut Vec<f32>, (chunk, dst)| {
                let n = dst.len() / row_bytes;
                buf.resize(n * row, 0.0);
                for (k, vals) in buf.chunks_exact_mut(row).enumerate() {
                    fill(chunk * rows_per_task + k, vals);
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
    c: &HfConfig,
    vocab: &Vocab,
    name: &str,
    out_type: OutType,
    mask_id: u32,
    causal: bool,
    tensors: &[PlannedTensor],
) -> Result<GgufWriter> {
    let mut w = GgufWriter::new();
    let arch = c.arch.gguf_name();
    let a = |k: &str| keys::arch(arch, k);
    let u32_of = |v: u64, what: &str| -> Result<Value> {
        u32::try_from(v)
            .map(Value::U32)
            .map_err(|_| ConvertError::field(Path::new("config.json"), what, format!("{v} does not fit in 32 bits")))
    };
    w.set(keys::ARCHITECTURE, arch)?;
    w.set(keys::NAME, name)?;
    w.set(keys::FILE_TYPE, out_type.file_type())?;
    w.set(keys::QUANTIZATION_VERSION, 2u32)?;
    w.set(keys::ALIGNMENT, dlm::gguf::DEFAULT_ALIGNMENT as u32)?;
    w.set(&a("context_length"), u32_of(c.max_position_embeddings, "max_position_embeddings")?)?;
    w.set(&a("embedding_length"), u32_of(c.hidden_size, "hidden_size")?)?;
    w.set(&a("block_count"), u32_of(c.num_hidden_layers, "num_hidden_layers")?)?;
    w.set(&a("feed_forward_length"), u32_of(c.intermediate_size, "intermediate_size")?)?;
    w.set(&a("attention.head_count"), u32_of(c.num_attention_heads, "num_attention_heads")?)?;
    if c.arch == HfArch::Gpt2 {
        w.set(&a("attention.layer_norm_epsilon"), c.norm_eps as f32)?;
    } else {
        w.set(&a("rope.dimension_count"), u32_of(c.head_dim(), "hidden_size")?)?;
        w.set(&a("attention.head_count_kv"), u32_of(c.num_key_value_heads, "num_key_value_heads")?)?;
        w.set(&a("attention.layer_norm_rms_epsilon"), c.norm_eps as f32)?;
        w.set(&a("rope.freq_base"), c.rope_theta as f32)?;
        w.set(&a("vocab_size"), u32_of(c.vocab_size, "vocab_size")?)?;
    }
    w.set(&a("attention.causal"), causal)?;

    match &vocab.kind {
        VocabKind::SentencePiece => {
            w.set(keys::TOKENIZER_MODEL, "llama")?;
            w.set(keys::TOKENS, Value::string_array(vocab.tokens.iter().cloned()))?;
            w.set(keys::SCORES, Value::f32_array(vocab.scores.iter().copied()))?;
            w.set(keys::TOKEN_TYPE, Value::i32_array(vocab.types.iter().copied()))?;
        }
        VocabKind::ByteLevel { merges, pre } => {
            w.set(keys::TOKENIZER_MODEL, "gpt2")?;
            if let Some(pre) = pre {
                w.set(keys::PRE, *pre)?;
            }
            w.set(keys::TOKENS, Value::string_array(vocab.tokens.iter().cloned()))?;
            w.set(keys::TOKEN_TYPE, Value::i32_array(vocab.types.iter().copied()))?;
            w.set(keys::MERGES, Value::string_array(merges.iter().cloned()))?;
        }
    }
    for (key, id) in [
        (keys::BOS_ID, vocab.bos.or(c.bos_token_id)),
        (keys::EOS_ID, vocab.eos.or(c.eos_token_id)),
        (keys::UNK_ID, vocab.unk),
        (keys::PAD_ID, vocab.pad),
    ] {
        if let Some(id) = id.filter(|&id| (id as u64) < c.vocab_size) {
            w.set(key, id)?;
        }
    }
    w.set(keys::ADD_BOS, vocab.add_bos)?;
    w.set(keys::ADD_EOS, vocab.add_eos)?;
    w.set(keys::MASK_ID, mask_id)?;
    w.set(keys::HF_JSON, vocab.hf_json.as_str())?;
    if let Some(t) = &vocab.chat_template {
        w.set(keys::CHAT_TEMPLATE, t.as_str())?;
    }
    w.set(keys::SHIFT_LOGITS, c.arch.family().shift_logits)?;

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
}
