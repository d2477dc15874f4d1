//! GGUF → GGUF: llama-quantize's job. Every metadata key of the source is kept (only
//! `general.file_type` and `general.quantization_version` change, plus what `--mask-id`,
//! `--name` and `--causal` ask for); each tensor gets the type the same `--type` gives in a
//! conversion from Hugging Face ([`policy::choose`], [`policy::fit`]). A tensor already of its
//! target type is copied byte for byte; the others go through ggml's own dequantizer to f32 and
//! its quantizer, row range by row range in parallel, streamed to a temporary file as in
//! [`crate::Plan::write`].

use std::path::Path;
use std::time::Instant;

use dlm::gguf::{Gguf, GgufWriter, Value};
use dlm::{keys, GgmlType};
use rayon::prelude::*;

use crate::{policy, quantize_into, rows_per_task, write_streamed, ConvertError, Options, Result, Summary};

/// One output tensor of a re-quantization.
#[derive(Clone, Debug)]
pub struct RequantTensor {
    /// Index into the source's tensor list.
    pub index: usize,
    pub name: String,
    pub shape: Vec<u64>,
    pub from: GgmlType,
    pub ggml_type: GgmlType,
    /// The policy's type when it did not fit the row length and `ggml_type` is the fallback.
    pub wanted: Option<GgmlType>,
}

impl RequantTensor {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Whether the tensor's bytes are copied unchanged.
    pub fn copied(&self) -> bool {
        self.from == self.ggml_type
    }
}

/// A validated re-quantization, ready to write.
pub struct Requant {
    pub gguf: Gguf,
    pub tensors: Vec<RequantTensor>,
    pub header: GgufWriter,
    pub mask_id: u32,
    /// Where the mask id came from.
    pub mask_source: &'static str,
    /// One line each: what the user should know that did not stop the run.
    pub warnings: Vec<String>,
}

/// Source types whose values a re-quantization keeps exactly before quantizing (llama-quantize
/// refuses any other source without `--allow-requantize`).
fn is_float(t: GgmlType) -> bool {
    matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

impl Requant {
    /// Reads and validates the GGUF model at `path` against `opts`; writes nothing.
    /// `allow_requantize` lets already-quantized tensors be quantized again.
    pub fn new(path: &Path, opts: &Options, allow_requantize: bool) -> Result<Requant> {
        let gguf = Gguf::open(path)?;
        // The file must be one this runtime runs: re-quantizing a broken file would only move
        // the error to dlm-run.
        let checked = dlm::model::check(&gguf, &dlm::model::DiffusionOverrides { causal: opts.causal.then_some(true), ..Default::default() })?;
        let arch = gguf.get_str(keys::ARCHITECTURE)?.to_owned();
        let n_layer = checked.params.n_layer as u64;
        let n_vocab = checked.params.n_vocab as u64;

        let (mask_id, mask_source) = match (opts.mask_id, gguf.get(keys::MASK_ID).and_then(Value::as_u64)) {
            (Some(id), _) => (id, "--mask-id"),
            (None, Some(id)) => (id as u32, "the source file"),
            (None, None) => (checked.diffusion.mask_id, "the family's default, which dlm-run takes"),
        };
        if mask_id as u64 >= n_vocab {
            return Err(ConvertError::input(path, format!("mask id {mask_id} ({mask_source}) is outside the {n_vocab}-token vocabulary")));
        }

        let tied = gguf.tensor("output.weight").is_none();
        let mut tensors = Vec::with_capacity(gguf.tensors().len());
        for (index, t) in gguf.tensors().iter().enumerate() {
            let layer = dlm::model::layer_of(&t.name).map(|l| l as u64);
            let at = policy::Place { layer, n_layer, n_dims: t.shape.len(), tied, n_gqa: (checked.params.n_head / checked.params.n_head_kv.max(1)) as u64 };
            let chosen = policy::choose(opts.out_type, &t.name, at);
            let ggml_type = policy::fit(chosen, t.shape[0]);
            let shown = dlm::gguf::shown_name(&t.name);
            if ggml_type != t.ggml_type {
                if !is_float(t.ggml_type) && !allow_requantize {
                    return Err(ConvertError::input(
                        path,
                        format!(
                            "tensor `{shown}` is already {}; quantizing it again to {ggml_type} loses more than converting the original weights would (pass --allow-requantize to do it anyway)",
                            t.ggml_type
                        ),
                    ));
                }
                if !dlm::backend::ggml::can_dequantize(t.ggml_type) {
                    return Err(ConvertError::input(path, format!("tensor `{shown}`: ggml cannot read {} back to floats", t.ggml_type)));
                }
            }
            tensors.push(RequantTensor {
                index,
                name: t.name.clone(),
                shape: t.shape.clone(),
                from: t.ggml_type,
                ggml_type,
                wanted: (ggml_type != chosen).then_some(chosen),
            });
        }

        let mut header = GgufWriter::new();
        for (key, value) in gguf.metadata() {
            header.set(key, value.clone())?;
        }
        header.set(keys::FILE_TYPE, opts.out_type.file_type())?;
        header.set(keys::QUANTIZATION_VERSION, 2u32)?;
        if let Some(name) = &opts.name {
            header.set(keys::NAME, name.as_str())?;
        }
        if opts.mask_id.is_some() {
            header.set(keys::MASK_ID, mask_id)?;
        }
        if opts.causal {
            header.set(&keys::arch(&arch, "attention.causal"), true)?;
        }
        for t in &tensors {
            header.add_tensor(&t.name, &t.shape, t.ggml_type)?;
        }
        Ok(Requant { gguf, tensors, header, mask_id, mask_source, warnings: checked.warnings })
    }

    /// Total bytes of source tensor data that will be read.
    pub fn bytes_in(&self) -> u64 {
        self.tensors.iter().map(|t| self.gguf.tensors()[t.index].size).sum()
    }

    /// Refuses an output path that is a folder, a device, or (also through a link) the input.
    pub fn check_output(&self, out: &Path) -> Result<()> {
        Ok(dlm::atomic::check_output(out, &[self.gguf.path().to_owned()])?)
    }

    /// Re-quantizes and writes every tensor to `out`; `progress(i, tensor)` after each.
    pub fn write(&self, out: &Path, progress: impl FnMut(usize, &RequantTensor)) -> Result<Summary> {
        let start = Instant::now();
        self.check_output(out)?;
        write_streamed(&self.header, out, &self.tensors, |t| self.convert_tensor(t), progress)?;
        Ok(Summary::of(&self.header, self.tensors.iter().map(|t| (t.shape.as_slice(), t.ggml_type)), self.bytes_in(), start))
    }

    /// One tensor's output bytes: the source's when the type is unchanged, otherwise each
    /// parallel task dequantizes a run of rows into a small f32 buffer and quantizes it straight
    /// into the output.
    pub fn convert_tensor(&self, t: &RequantTensor) -> Result<Vec<u8>> {
        let info = &self.gguf.tensors()[t.index];
        let src = self.gguf.tensor_data(info);
        if t.copied() {
            return Ok(src.to_vec());
        }
        let err = |what: String| ConvertError::Tensor { name: t.name.clone(), file: self.gguf.path().to_owned(), what };
        let row = t.shape[0] as usize;
        let rows = (t.n_elements() / t.shape[0]) as usize;
        let row_bytes = |ty: GgmlType| ty.row_bytes(row as u64).map(|b| b as usize).ok_or_else(|| err(format!("rows of {row} do not fit {ty}")));
        let (src_row, dst_row) = (row_bytes(t.from)?, row_bytes(t.ggml_type)?);
        let per = rows_per_task(row);
        let mut out = vec![0u8; rows * dst_row];
        out.par_chunks_mut(per * dst_row)
            .zip(src.par_chunks(per * src_row))
            .try_for_each_init(Vec::new, |buf: &mut Vec<f32>, (dst, src)| {
                buf.resize(dst.len() / dst_row * row, 0.0);
                dlm::backend::ggml::dequantize(t.from, src, buf)?;
                quantize_into(t.ggml_type, buf, row, dst)
            })
            .map_err(|e| err(e.to_string()))?;
        Ok(out)
    }
}

/// Whether `path` starts with GGUF's magic (a model file rather than a checkpoint folder).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
        && std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && magic == *b"GGUF"
}
