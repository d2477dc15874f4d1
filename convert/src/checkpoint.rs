//! Reading a Hugging Face checkpoint's safetensors weights (one `model.safetensors` or shards
//! listed in `model.safetensors.index.json`), memory-mapped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::{ConvertError, Result};

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
        let mut index = None;
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = crate::read_text(&index_path)?;
            let parsed: Index = serde_json::from_str(&text)
                .map_err(|e| ConvertError::field(&index_path, "weight_map", format!("expected a map of tensor name to file: {e}")))?;
            let index = index.insert(parsed);
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
            let file = crate::open_regular(path)?;
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
        // The index and the shards must agree: a tensor it names must be in the shard it names
        // (a shard that lost a tensor is a damaged download, not a smaller model).
        if let Some(index) = &index {
            for (name, shard) in &index.weight_map {
                let found = tensors.get(name).map(|t: &SourceTensor| files[t.file].file_name().unwrap_or_default().to_string_lossy());
                if found.as_deref() != Some(shard.as_str()) {
                    let what = match found {
                        None => format!("names tensor `{name}` in {shard}, which has no such tensor (a damaged or incomplete download?)"),
                        Some(other) => format!("names tensor `{name}` in {shard}, but it is in {other}"),
                    };
                    return Err(ConvertError::field(&index_path, "weight_map", what));
                }
            }
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
