//! Weights on the device: every tensor uploaded once, converted on the way into the layout its
//! kernel loader reads (see `kernels/load_*.wgsl`), split into row chunks where a tensor is
//! larger than one storage binding may be (lavapipe: 128 MiB). Quantized blocks keep their
//! size: blocks whose fields are word-aligned are copied as they are, the others have their f16
//! scale moved behind the quants ([`Packing`]), so quantized weights take the file's bytes on
//! the device (plus at most 2 bytes of scale padding and 3 of word padding per chunk).

use rayon::prelude::*;

use super::kernels::{Layout, Packing};
use super::Gpu;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Gguf, TensorInfo};

/// Rows `row0..row0 + rows` of a weight, in one buffer.
pub struct Chunk {
    pub buffer: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
    /// The loader's row stride (`P.w_row`: values for f32/f16, blocks for quantized layouts).
    pub w_row: u32,
    /// Word offset of the scales (`P.w_sc`; layouts packed with [`Packing::SplitScale`]).
    pub w_sc: u32,
}

/// One tensor on the device.
pub struct GpuWeight {
    pub layout: Layout,
    /// `[ne0, rows]`: a 1-D tensor is one row.
    pub ne: [usize; 2],
    pub chunks: Vec<Chunk>,
}

/// Every tensor of a file, by name.
pub struct WeightSet {
    pub(crate) names: Vec<String>,
    pub(crate) weights: Vec<GpuWeight>,
    /// Tensors whose type has no kernel and were converted to f16 (or f32 for bf16) at upload.
    pub converted: Vec<(String, GgmlType)>,
    /// Device bytes of all weights.
    pub bytes: u64,
}

/// Values per row on the device: matrices pad rows to whole 32-value tiles (with zeros) so
/// the matmul's k loop never reads past a row; vectors stay as they are.
fn padded_len(ne0: usize, is_matrix: bool) -> usize {
    if is_matrix {
        ne0.next_multiple_of(32)
    } else {
        ne0
    }
}

impl WeightSet {
    pub fn upload(gpu: &Gpu, gguf: &Gguf) -> Result<WeightSet> {
        let mut set = WeightSet { names: Vec::new(), weights: Vec::new(), converted: Vec::new(), bytes: 0 };
        for info in gguf.tensors() {
            let w = upload_tensor(gpu, gguf, info, &mut set.converted)?;
            set.bytes += w.chunks.iter().map(|c| c.buffer.size()).sum::<u64>();
            set.names.push(info.name.clone());
            set.weights.push(w);
        }
        Ok(set)
    }

    /// How many buffers tensor `name` was split into.
    pub fn chunks(&self, name: &str) -> Option<usize> {
        self.index(name).map(|i| self.weights[i].chunks.len())
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Host bytes of `rows` rows in `layout` (`k` values each, already a multiple of the block size
/// for quantized layouts; padded for matrices in f32/f16), and the loader's row stride.
fn chunk_bytes(layout: Layout, k: usize, rows: usize) -> (usize, u32) {
    match layout.blocks() {
        None if layout == Layout::F32 => (rows * k * 4, k as u32),
        None => (rows * k * 2, k as u32),
        Some((per, bytes, packing)) => {
            let blocks = rows * (k / per);
            let size = match packing {
                Packing::Whole => blocks * bytes,
                Packing::SplitScale { .. } => blocks * (bytes - 2) + blocks.next_multiple_of(2) * 2,
            };
            (size, (k / per) as u32)
        }
    }
}

fn upload_tensor(gpu: &Gpu, gguf: &Gguf, info: &TensorInfo, converted: &mut Vec<(String, GgmlType)>) -> Result<GpuWeight> {
    let ne0 = info.shape.first().copied().unwrap_or(1) as usize;
    let rows = (info.shape.iter().skip(1).product::<u64>()) as usize;
    if ne0 == 0 || rows == 0 {
        return Err(gguf.tensor_error(&info.name, "has no elements"));
    }
    let is_matrix = info.shape.len() >= 2;
    let data = gguf.tensor_data(info);
    // Source rows as (layout, bytes of one row, row bytes → device bytes).
    let (layout, src_row, k) = match Layout::of(info.ggml_type) {
        Some(l) => (l, data.len() / rows, if matches!(l, Layout::F32 | Layout::F16) { padded_len(ne0, is_matrix) } else { ne0 }),
        None => {
            converted.push((info.name.clone(), info.ggml_type));
            let l = if info.ggml_type == GgmlType::BF16 { Layout::F32 } else { Layout::F16 };
            (l, data.len() / rows, padded_len(ne0, is_matrix))
        }
    };
    let row_dev = chunk_bytes(layout, k, 1).0.max(1);
    let max_rows = ((gpu.max_binding() as usize - 4) / row_dev).max(1);
    if row_dev as u64 > gpu.max_binding() {
        return Err(gguf.tensor_error(&info.name, format!("one row is {row_dev} bytes, more than the adapter binds at once ({})", gpu.max_binding())));
    }
    let mut chunks = Vec::new();
    let mut row0 = 0;
    while row0 < rows {
        let n = max_rows.min(rows - row0);
        let (bytes, w_row) = chunk_bytes(layout, k, n);
        let src = &data[row0 * src_row..(row0 + n) * src_row];
        let buffer = gpu.checked(&format!("uploading {}", info.name), || {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&info.name),
                size: (bytes.next_multiple_of(4)).max(4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: true,
            })
        })?;
        // Converted on the host (in parallel), then copied once into the mapped buffer.
        let mut host = vec![0u8; buffer.size() as usize];
        let w_sc = fill(layout, info.ggml_type, ne0, k, n, src, &mut host[..bytes]).map_err(|e| gguf.tensor_error(&info.name, e))?;
        {
            let mut view = buffer.slice(..).get_mapped_range_mut().map_err(|e| Error::Gpu(format!("uploading {}: {e}", info.name)))?;
            view.copy_from_slice(&host);
        }
        buffer.unmap();
        chunks.push(Chunk { buffer, row0, rows: n, w_row, w_sc });
        row0 += n;
    }
    Ok(GpuWeight { layout, ne: [ne0, rows], chunks })
}

/// Writes `rows` source rows (`src`, the file's bytes of type `t`, `ne0` values each) into `dst`
/// in `layout` with `k` values per row; returns the scales' word offset ([`Packing::SplitScale`]).
fn fill(layout: Layout, t: GgmlType, ne0: usize, k: usize, rows: usize, src: &[u8], dst: &mut [u8]) -> Result<u32, String> {
    let src_row = src.len() / rows;
    match (layout, t) {
        (Layout::F32, GgmlType::F32) | (Layout::F16, GgmlType::F16) => {
            let es = if t == GgmlType::F32 { 4 } else { 2 };
            dst.par_chunks_mut(k * es).zip(src.par_chunks(src_row)).for_each(|(d, s)| {
                d[..s.len()].copy_from_slice(s);
                d[s.len()..].fill(0);
            });
            Ok(0)
        }
        (Layout::F32 | Layout::F16, _) => from_any(layout, t, ne0, k, src_row, src, dst),
        (l, _) => {
            let (_, bytes, packing) = l.blocks().expect("every layout but f32 and f16 is blocks");
            match packing {
                Packing::Whole => {
                    dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s));
                    Ok(0)
                }
                Packing::SplitScale { at_start } => {
                    let (qb, n_blocks) = (bytes - 2, src.len() / bytes);
                    let (quants, scales) = dst.split_at_mut(n_blocks * qb);
                    quants.par_chunks_mut(qb).zip(scales[..n_blocks * 2].par_chunks_mut(2)).zip(src.par_chunks(bytes)).for_each(|((q, d), s)| {
                        let (ds, qs) = if at_start { (&s[..2], &s[2..]) } else { (&s[qb..], &s[..qb]) };
                        d.copy_from_slice(ds);
                        q.copy_from_slice(qs);
                    });
                    scales[n_blocks * 2..].fill(0);
                    Ok((n_blocks * qb / 4) as u32)
                }
            }
        }
    }
}

/// Rows of a type without a kernel: ggml's own dequantizer, then f32 or f16 rows of `k` values.
fn from_any(layout: Layout, t: GgmlType, ne0: usize, k: usize, src_row: usize, src: &[u8], dst: &mut [u8]) -> Result<u32, String> {
    let f16 = layout == Layout::F16;
    let es = if f16 { 2 } else { 4 };
    dst.par_chunks_mut(k * es).zip(src.par_chunks(src_row)).try_for_each(|(d, s)| {
        let mut row = vec![0f32; ne0];
        crate::backend::ggml::dequantize(t, s, &mut row).map_err(|e| e.to_string())?;
        for (i, v) in row.iter().enumerate() {
            if f16 {
                d[2 * i..2 * i + 2].copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            } else {
                d[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        d[ne0 * es..].fill(0);
        Ok::<(), String>(())
    })?;
    Ok(0)
}
