//! Running model graphs on ggml's CPU backend.
//!
//! - [`Weights`]: tensor headers in a metadata-only context whose data points straight into the
//!   GGUF memory map (a CPU backend buffer wrapping the map): no copy of the weights is made.
//! - [`Builder`]: implements [`crate::graph::Ops`] by adding ggml nodes to a graph context.
//! - [`Executor`]: a CPU backend plus a graph allocator; builds a graph once per token count,
//!   keeps it, and per call sets the inputs, computes, and reads the output back.

use std::collections::HashMap;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{ggml_type, Context};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Gguf, TensorInfo};
use crate::graph::{CacheId, Engine, GraphKey, KvStore, LayerKv, Ops, PlanCache, RopeMode};

/// ggml's `TENSOR_ALIGNMENT`: where a CPU buffer wrapping foreign memory must start.
const CPU_BUFFER_ALIGNMENT: usize = 32;

/// A tensor inside the contexts of one [`Executor`]/[`Weights`] pair.
///
/// Invariant: a `TensorRef` is only created by this module, from a tensor of a context that the
/// owner of the handle keeps alive (the model owns its `Weights` and its `Executor`, which owns
/// the cached graph context) for as long as it uses the handle.
///
/// Crate-private: a handle is a bare pointer, so safe code outside this crate must never hold
/// one past the weights or graph it points into. Inside the crate only [`crate::model`]'s
/// runtime holds them, next to their owners and dropped before them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TensorRef(NonNull<sys::ggml_tensor>);

// SAFETY: a handle is only an address; ggml tensors have no thread affinity (no thread-local
// state, no interior mutation through a shared handle: graphs are built and computed through
// `&mut Executor`), so moving or sharing the address between threads is sound as long as its
// owner is alive, which the TensorRef invariant already requires.
unsafe impl Send for TensorRef {}
// SAFETY: as above: `&TensorRef` gives nothing but a copy of the address.
unsafe impl Sync for TensorRef {}

impl TensorRef {
    fn ptr(self) -> *mut sys::ggml_tensor {
        self.0.as_ptr()
    }
}

/// A ggml backend buffer, freed on drop.
struct Buffer(NonNull<sys::ggml_backend_buffer>);

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the buffer came from ggml and is freed exactly once; tensors using it are
        // owned by the same struct and dropped with it.
        unsafe { sys::ggml_backend_buffer_free(self.0.as_ptr()) };
    }
}

impl Buffer {
    /// Marks the buffer as holding weights: the scheduler then runs each op on the backend
    /// where its weights live (else it may run a layer on the CPU and copy its device weights
    /// back every step), and treats host weights as candidates for offloading big batches.
    fn holds_weights(self) -> Buffer {
        // SAFETY: a live buffer; this sets one field.
        unsafe { sys::ggml_backend_buffer_set_usage(self.0.as_ptr(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS) };
        self
    }
}

impl Context {
    /// A context that holds tensor headers only (data lives in backend buffers), and with
    /// `with_graph` room for a graph of as many nodes.
    pub(crate) fn metadata_only(n_tensors: usize, with_graph: bool) -> Result<Context> {
        // SAFETY: pure functions returning constants.
        let per_tensor = unsafe { sys::ggml_tensor_overhead() };
        // SAFETY: as above.
        let graph = if with_graph { unsafe { sys::ggml_graph_overhead_custom(n_tensors, false) } } else { 0 };
        Context::with_params(n_tensors * per_tensor + graph + 1024, true)
    }
}

/// Where offloaded weights go: the devices' buffer types, and for each tensor the index of its
/// device among them (`None`: host memory).
pub type Offload<'a> = (&'a [sys::ggml_backend_buffer_type_t], &'a dyn Fn(&TensorInfo) -> Option<usize>);

/// Model weights as ggml tensors over the GGUF map.
pub(crate) struct Weights {
    // Field order is drop order: tensors (ctx) go before the buffer they point into.
    // Never read: it owns the tensor headers the handles in `tensors` point to.
    _ctx: Context,
    _buffer: Buffer,
    _packed: Option<Buffer>,
    _device: Vec<Buffer>,
    _copies: Option<Buffer>,
    tensors: HashMap<String, TensorRef>,
    n_repacked: usize,
    n_offloaded: usize,
}

// SAFETY: Weights owns its context and buffers exclusively (nothing else frees them), ggml
// buffers and tensor headers have no thread affinity, and after construction nothing mutates
// them (lookups read the name map), so moving the whole set to another thread is sound.
unsafe impl Send for Weights {}
// SAFETY: `&Weights` only reads the name map and counters; the tensors it hands out are only
// read by graphs.
unsafe impl Sync for Weights {}

impl Weights {
    /// Wraps every tensor of `gguf`. Tensors for which `repack` says yes (matrices used only as
    /// the weight of a matmul) are copied once into ggml's CPU_REPACK buffer when this CPU has
    /// interleaved kernels for their type (Q4_0, Q4_K and IQ4_NL on AVX2), which llama.cpp does
    /// too and which makes those matmuls much faster; every other tensor stays zero-copy in
    /// the memory map.
    pub fn map(gguf: &Gguf, repack: impl Fn(&TensorInfo) -> bool) -> Result<Weights> {
        Self::map_offload(gguf, repack, None)
    }

    /// [`Weights::map`], with the tensors `offload` selects copied once, straight from the map,
    /// into a buffer of the GPU buffer type `buft` (device memory).
    pub fn map_offload(
        gguf: &Gguf,
        repack: impl Fn(&TensorInfo) -> bool,
        offload: Option<Offload<'_>>,
    ) -> Result<Weights> {
        super::init_logging();
        let ctx = Context::metadata_only(gguf.tensors().len() + 1, false)?;
        let mut tensors = HashMap::with_capacity(gguf.tensors().len());
        for info in gguf.tensors() {
            let t = ctx.new_header(info.ggml_type, &info.shape)?;
            tensors.insert(info.name.clone(), t);
        }
        let data = gguf.data_section();
        // ggml wants a CPU buffer to start at a multiple of its tensor alignment (it asserts
        // so). The buffer wraps the file from the first such address: a map starts at a page,
        // so with a mapped file that is the file's first byte and every tensor is inside
        // whatever `general.alignment` says; tensors before it (a file held in memory at an
        // unaligned address) are copied into aligned memory instead.
        let file = gguf.file_bytes();
        let skip = file.as_ptr().align_offset(CPU_BUFFER_ALIGNMENT).min(file.len());
        let wrapped = &file[skip..];
        let data_at = gguf.data_offset() as usize;
        let before_buffer = |i: &TensorInfo| data_at + (i.offset as usize) < skip;
        let device_of = |i: &TensorInfo| offload.as_ref().and_then(|(bufts, f)| f(i).filter(|&d| d < bufts.len()));
        let on_device = |i: &TensorInfo| device_of(i).is_some();
        let candidates: Vec<&TensorInfo> = match repack_buffer_type() {
            Some(buft) => gguf.tensors().iter().filter(|i| !on_device(i) && i.shape.len() == 2 && repack(i) && repackable(buft, i)).collect(),
            None => Vec::new(),
        };
        let offloaded: Vec<&TensorInfo> = gguf.tensors().iter().filter(|i| on_device(i)).collect();
        let mut device = Vec::new();
        if let Some((bufts, _)) = offload {
            for (d, &buft) in bufts.iter().enumerate() {
                let here: Vec<&TensorInfo> = offloaded.iter().copied().filter(|i| device_of(i) == Some(d)).collect();
                if !here.is_empty() {
                    device.push(fill_device(buft, data, &here, &tensors)?);
                }
            }
        }
        let realigned: Vec<&TensorInfo> = gguf.tensors().iter().filter(|i| !on_device(i) && before_buffer(i) && !candidates.iter().any(|c| c.name == i.name)).collect();
        let copies = match realigned.is_empty() {
            true => None,
            // SAFETY: the CPU buffer type is static.
            false => Some(fill_device(unsafe { sys::ggml_backend_cpu_buffer_type() }, data, &realigned, &tensors)?),
        };
        let mut packed = None;
        if let (Some(buft), false) = (repack_buffer_type(), candidates.is_empty()) {
            packed = Some(fill_repacked(buft, data, &candidates, &tensors)?);
        }
        // SAFETY: `wrapped` is the file's bytes from a `CPU_BUFFER_ALIGNMENT`-aligned address
        // (or an empty tail, which ggml never reads), alive as long as `gguf` (the model keeps
        // the Gguf alive longer than its Weights). The CPU backend never writes to weight
        // tensors (they are only sources of ops), so handing ggml a mutable pointer to read-only
        // pages is sound; the buffer does not free memory it did not allocate.
        let buf = unsafe { sys::ggml_backend_cpu_buffer_from_ptr(wrapped.as_ptr() as *mut _, wrapped.len().max(1)) };
        let buffer = Buffer(NonNull::new(buf).ok_or_else(|| Error::Ggml("cannot wrap the model map as a buffer".into()))?).holds_weights();
        for info in gguf.tensors() {
            if candidates.iter().chain(&offloaded).chain(&realigned).any(|c| c.name == info.name) {
                continue;
            }
            let t = tensors[&info.name];
            let addr = tensor_addr(data, info);
            // SAFETY: `addr` points at `info.size` bytes inside the buffer's range (the reader
            // validated offset and size against the data section), and the tensor's header was
            // made for exactly this type and shape.
            let status = unsafe { sys::ggml_backend_tensor_alloc(buffer.0.as_ptr(), t.ptr(), addr) };
            if status != 0 {
                return Err(gguf.tensor_error(&info.name, format!("ggml refused to place the tensor (status {status})")));
            }
        }
        Ok(Weights { _ctx: ctx, _buffer: buffer, _packed: packed, _device: device, _copies: copies, tensors, n_repacked: candidates.len(), n_offloaded: offloaded.len() })
    }

    /// How many tensors live in device memory.
    pub fn n_offloaded(&self) -> usize {
        self.n_offloaded
    }

    pub fn get(&self, name: &str) -> Option<TensorRef> {
        self.tensors.get(name).copied()
    }

    /// How many tensors were repacked for the CPU's interleaved kernels.
    pub fn n_repacked(&self) -> usize {
        self.n_repacked
    }
}

/// ggml's `CPU_REPACK` buffer type, if this build and CPU have one.
fn repack_buffer_type() -> Option<sys::ggml_backend_buffer_type_t> {
    // SAFETY: the CPU registry is static; device 0 is the CPU; the proc address, when present,
    // has the documented `ggml_backend_dev_get_extra_bufts_t` signature and returns a
    // null-terminated array of static buffer types.
    unsafe {
        let reg = sys::ggml_backend_cpu_reg();
        let dev = sys::ggml_backend_reg_dev_get(reg, 0);
        let f = sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_dev_get_extra_bufts".as_ptr());
        if f.is_null() || dev.is_null() {
            return None;
        }
        let f: sys::ggml_backend_dev_get_extra_bufts_t = std::mem::transmute(f);
        let mut p = f?(dev);
        while !p.is_null() && !(*p).is_null() {
            if std::ffi::CStr::from_ptr(sys::ggml_backend_buft_name(*p)).to_bytes() == b"CPU_REPACK" {
                return Some(*p);
            }
            p = p.add(1);
        }
        None
    }
}

/// Whether ggml has an interleaved layout for `info` on this CPU: a probe header placed in a
/// scratch repack buffer gets its kernel table (`extra`) set exactly when one exists.
fn repackable(buft: sys::ggml_backend_buffer_type_t, info: &TensorInfo) -> bool {
    let Ok(ctx) = Context::metadata_only(1, false) else { return false };
    let Ok(t) = ctx.new_header(info.ggml_type, &info.shape) else { return false };
    // SAFETY: `t` is a live header; the buffer is allocated for exactly its size (memory that
    // is never written, so never touched), the header placed at its base, and both are freed here.
    unsafe {
        let size = sys::ggml_backend_buft_get_alloc_size(buft, t.ptr());
        let Some(probe) = NonNull::new(sys::ggml_backend_buft_alloc_buffer(buft, size)) else { return false };
        let probe = Buffer(probe);
        let base = sys::ggml_backend_buffer_get_base(probe.0.as_ptr());
        let ok = sys::ggml_backend_tensor_alloc(probe.0.as_ptr(), t.ptr(), base) == 0 && !(*t.ptr()).extra.is_null();
        drop(probe);
        ok
    }
}

/// One repack buffer holding `candidates`, each converted from its bytes in the map (in
/// parallel: every tensor is repacked independently into its own range).
fn fill_repacked(
    buft: sys::ggml_backend_buffer_type_t,
    data: &[u8],
    candidates: &[&TensorInfo],
    tensors: &HashMap<String, TensorRef>,
) -> Result<Buffer> {
    let names: Vec<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
    let buffer = place_all(buft, &names, tensors, "repacked weights")?;
    use rayon::prelude::*;
    let jobs: Vec<(usize, usize, usize)> =
        candidates.iter().map(|c| (tensors[&c.name].ptr() as usize, c.offset as usize, c.size as usize)).collect();
    jobs.par_iter().for_each(|&(t, offset, size)| {
        // SAFETY: `t` is a live header allocated in the repack buffer above with a kernel table
        // (probed), `data[offset..offset + size]` is exactly its bytes in the map (validated by
        // the reader), and every job writes only its own tensor's range, so jobs may run at once.
        unsafe { sys::ggml_backend_tensor_set(t as *mut sys::ggml_tensor, data[offset..offset + size].as_ptr().cast(), 0, size) };
    });
    Ok(buffer)
}

/// One weight buffer of type `buft` with every tensor of `names` placed at its own aligned
/// range (`what` names the memory in errors).
fn place_all(buft: sys::ggml_backend_buffer_type_t, names: &[&str], tensors: &HashMap<String, TensorRef>, what: &str) -> Result<Buffer> {
    // SAFETY: a valid buffer type (static, or from a registered device).
    let align = unsafe { sys::ggml_backend_buft_get_alignment(buft) }.max(1);
    let mut offsets = Vec::with_capacity(names.len());
    let mut total = 0usize;
    for n in names {
        offsets.push(total);
        // SAFETY: a valid buffer type and a live header.
        total += unsafe { sys::ggml_backend_buft_get_alloc_size(buft, tensors[*n].ptr()) }.next_multiple_of(align);
    }
    // SAFETY: allocates `total` bytes of this type; checked for null.
    let buffer = NonNull::new(unsafe { sys::ggml_backend_buft_alloc_buffer(buft, total) })
        .map(|b| Buffer(b).holds_weights())
        .ok_or_else(|| Error::Ggml(format!("cannot allocate {} MiB for {what}", total >> 20)))?;
    // SAFETY: a live buffer.
    let base = unsafe { sys::ggml_backend_buffer_get_base(buffer.0.as_ptr()) } as usize;
    for (n, off) in names.iter().zip(&offsets) {
        // SAFETY: each header gets its own aligned range of the buffer, sized by the buffer type.
        let status = unsafe { sys::ggml_backend_tensor_alloc(buffer.0.as_ptr(), tensors[*n].ptr(), (base + off) as *mut _) };
        if status != 0 {
            return Err(Error::Ggml(format!("tensor `{n}`: cannot place it in {what} (status {status})")));
        }
    }
    Ok(buffer)
}

/// One device buffer holding `tensors`, each copied once from its bytes in the map.
fn fill_device(buft: sys::ggml_backend_buffer_type_t, data: &[u8], tensors: &[&TensorInfo], headers: &HashMap<String, TensorRef>) -> Result<Buffer> {
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let buffer = place_all(buft, &names, headers, "the weights in device memory")?;
    for t in tensors {
        let h = headers[&t.name];
        let bytes = &data[t.offset as usize..(t.offset + t.size) as usize];
        // SAFETY: the header was just placed in the device buffer; `bytes` are exactly its
        // `t.size` bytes in the map (validated by the reader).
        unsafe { sys::ggml_backend_tensor_set(h.ptr(), bytes.as_ptr().cast(), 0, bytes.len()) };
    }
    Ok(buffer)
}

fn tensor_addr(data: &[u8], info: &TensorInfo) -> *mut std::ffi::c_void {
    data[info.offset as usize..].as_ptr() as *mut _
}

impl Context {
    fn new_header(&self, t: GgmlType, shape: &[u64]) -> Result<TensorRef> {
        let mut ne = [1i64; 4];
        for (n, &d) in ne.iter_mut().zip(shape) {
            *n = i64::try_from(d).map_err(|_| Error::Ggml(format!("dimension {d} too large")))?;
        }
        // SAFETY: a live no-alloc context sized for this many headers; valid type and dims.
        let raw = unsafe { sys::ggml_new_tensor(self.raw(), ggml_type(t), shape.len() as i32, ne.as_ptr()) };
        NonNull::new(raw).map(TensorRef).ok_or_else(|| Error::Ggml("context full".into()))
    }
}

/// Adds ggml nodes to one graph context. See [`Ops`] for what each op means.
pub(crate) struct Builder<'c> {
    ctx: &'c Context,
    inputs: Vec<TensorRef>,
    flash_attn: bool,
    /// The tensor [`Ops::keep`] named.
    kept: Option<TensorRef>,
}

macro_rules! node {
    ($b:expr, $call:expr) => {{
        // SAFETY: every operand is a live tensor of the weight context or of this builder's
        // context (TensorRef invariant), and models validate shapes at load, so ggml's shape
        // assertions hold; the context was sized for the whole graph (`graph_size` of `run`).
        let raw = unsafe { $call };
        TensorRef(NonNull::new(raw).expect("ggml graph context sized for the whole graph"))
    }};
}

/// Asks for f32 accumulation in a matrix multiply. The CPU always accumulates in f32, but GPU
/// backends default to f16 accumulation where the device has it (ggml-vulkan on lavapipe: an
/// f16 model's logits 9.3e-3 (relative) from the CPU's with f16 accumulation, 1.2e-3 with f32):
/// "correct to the last logit" wins over what f32 accumulation costs.
fn f32_accumulation(t: TensorRef) -> TensorRef {
    // SAFETY: `t` is a live mul_mat node (TensorRef invariant); this sets one op parameter.
    unsafe { sys::ggml_mul_mat_set_prec(t.ptr(), sys::GGML_PREC_F32) };
    t
}

impl Ops for Builder<'_> {
    type T = TensorRef;

    fn row_stats(&mut self, x: TensorRef) -> TensorRef {
        // SAFETY: `x` is a live tensor (TensorRef invariant); reading its header is plain access.
        let [n, rows, _, _] = unsafe { x.0.as_ref() }.ne;
        let c = self.ctx.raw();
        // Each row's largest value ([1, rows]): the value at its argmax (any index of the
        // maximum has the same value), gathered with one row id per row. Argmax reduces a row
        // in parallel on CUDA and Vulkan (a max-pool over the whole row would be one thread).
        let row_max = |t: TensorRef| {
            let at = node!(self, sys::ggml_argmax(c, t.ptr()));
            let at = node!(self, sys::ggml_reshape_2d(c, at.ptr(), 1, rows));
            let cols = node!(self, sys::ggml_reshape_3d(c, t.ptr(), 1, n, rows));
            let v = node!(self, sys::ggml_get_rows(c, cols.ptr(), at.ptr()));
            node!(self, sys::ggml_reshape_2d(c, v.ptr(), 1, rows))
        };
        let m = row_max(x);
        let y = node!(self, sys::ggml_sub(c, x.ptr(), m.ptr()));
        let e = node!(self, sys::ggml_exp(c, y.ptr()));
        let z = node!(self, sys::ggml_sum_rows(c, e.ptr()));
        let ey = node!(self, sys::ggml_mul(c, e.ptr(), y.ptr()));
        let s = node!(self, sys::ggml_sum_rows(c, ey.ptr()));
        // 1 below the maximum, 0 at it.
        let neg = node!(self, sys::ggml_neg(c, y.ptr()));
        let below = node!(self, sys::ggml_step(c, neg.ptr()));
        let n_below = node!(self, sys::ggml_sum_rows(c, below.ptr()));
        let at_max = node!(self, sys::ggml_scale_bias(c, below.ptr(), -1.0, 1.0));
        // The lowest index of the maximum: the largest n − i where the maximum is.
        let ids = node!(self, sys::ggml_arange(c, 0.0, n as f32, 1.0));
        let rev = node!(self, sys::ggml_scale_bias(c, ids.ptr(), -1.0, n as f32));
        let rev_at_max = node!(self, sys::ggml_mul(c, at_max.ptr(), rev.ptr()));
        let first = row_max(rev_at_max);
        // The second largest: y where below the maximum, −1e30 at it.
        let y_below = node!(self, sys::ggml_mul(c, y.ptr(), below.ptr()));
        let big = node!(self, sys::ggml_scale(c, at_max.ptr(), 1e30));
        let masked = node!(self, sys::ggml_sub(c, y_below.ptr(), big.ptr()));
        let second = row_max(masked);
        let mut out = first;
        for part in [z, s, second, n_below] {
            out = node!(self, sys::ggml_concat(c, out.ptr(), part.ptr(), 0));
        }
        out
    }

    fn input_i32(&mut self, n: usize) -> TensorRef {
        let t = node!(self, sys::ggml_new_tensor_1d(self.ctx.raw(), ggml_type(GgmlType::I32), n as i64));
        // SAFETY: a live tensor of this context.
        unsafe { sys::ggml_set_input(t.ptr()) };
        self.inputs.push(t);
        t
    }
    fn input_f32(&mut self, n: usize) -> TensorRef {
        // The caller's i32 values are copied as bytes: f32 bit patterns land as f32.
        let t = node!(self, sys::ggml_new_tensor_1d(self.ctx.raw(), ggml_type(GgmlType::F32), n as i64));
        // SAFETY: a live tensor of this context.
        unsafe { sys::ggml_set_input(t.ptr()) };
        self.inputs.push(t);
        t
    }
    fn row_candidates(&mut self, x: TensorRef, inv_temp: TensorRef, k: usize) -> TensorRef {
        // SAFETY: `x` is a live tensor (TensorRef invariant); reading its header is plain access.
        let [n, rows, _, _] = unsafe { x.0.as_ref() }.ne;
        let c = self.ctx.raw();
        let k = (k as i64).clamp(1, n);
        // (x − max)·inv_temp, as the host scales a row: the maximum subtracted before scaling,
        // so the scaled values carry the rounding of (x − max) only. Their maximum is 0, at the
        // same (first) index as the row's.
        let at = node!(self, sys::ggml_argmax(c, x.ptr()));
        let at = node!(self, sys::ggml_reshape_2d(c, at.ptr(), 1, rows));
        let cols = node!(self, sys::ggml_reshape_3d(c, x.ptr(), 1, n, rows));
        let m = node!(self, sys::ggml_get_rows(c, cols.ptr(), at.ptr()));
        let m = node!(self, sys::ggml_reshape_2d(c, m.ptr(), 1, rows));
        let d = node!(self, sys::ggml_sub(c, x.ptr(), m.ptr()));
        let t = node!(self, sys::ggml_reshape_2d(c, inv_temp.ptr(), 1, rows));
        let scaled = node!(self, sys::ggml_mul(c, d.ptr(), t.ptr()));
        let stats = self.row_stats(scaled);
        // The k largest (i32 [k, rows]; partial sort on the CPU, a parallel select on CUDA and
        // Vulkan), their logits gathered one row of ids per row of logits.
        let ids = node!(self, sys::ggml_top_k(c, x.ptr(), k as i32));
        let vals = node!(self, sys::ggml_get_rows(c, cols.ptr(), ids.ptr()));
        let vals = node!(self, sys::ggml_reshape_2d(c, vals.ptr(), k, rows));
        let ids = node!(self, sys::ggml_cast(c, ids.ptr(), ggml_type(GgmlType::F32)));
        let out = node!(self, sys::ggml_concat(c, stats.ptr(), ids.ptr(), 0));
        node!(self, sys::ggml_concat(c, out.ptr(), vals.ptr(), 0))
    }
    fn keep(&mut self, x: TensorRef) {
        self.kept = Some(x);
    }
    fn get_rows(&mut self, table: TensorRef, ids: TensorRef) -> TensorRef {
        node!(self, sys::ggml_get_rows(self.ctx.raw(), table.ptr(), ids.ptr()))
    }
    fn mul_mat(&mut self, w: TensorRef, x: TensorRef) -> TensorRef {
        let t = node!(self, sys::ggml_mul_mat(self.ctx.raw(), w.ptr(), x.ptr()));
        f32_accumulation(t)
    }
    fn rms_norm(&mut self, x: TensorRef, eps: f32) -> TensorRef {
        node!(self, sys::ggml_rms_norm(self.ctx.raw(), x.ptr(), eps))
    }
    fn layer_norm(&mut self, x: TensorRef, eps: f32) -> TensorRef {
        node!(self, sys::ggml_norm(self.ctx.raw(), x.ptr(), eps))
    }
    fn gelu(&mut self, x: TensorRef) -> TensorRef {
        node!(self, sys::ggml_gelu(self.ctx.raw(), x.ptr()))
    }
    fn slice0(&mut self, x: TensorRef, start: usize, len: usize) -> TensorRef {
        // SAFETY: a live tensor (TensorRef invariant); reading its header is plain access.
        let (ne, nb) = { let t = unsafe { x.0.as_ref() }; (t.ne, t.nb) };
        let view = node!(self, sys::ggml_view_2d(self.ctx.raw(), x.ptr(), len as i64, ne[1], nb[1], start * nb[0]));
        node!(self, sys::ggml_cont(self.ctx.raw(), view.ptr()))
    }
    fn mul(&mut self, a: TensorRef, b: TensorRef) -> TensorRef {
        node!(self, sys::ggml_mul(self.ctx.raw(), a.ptr(), b.ptr()))
    }
    fn add(&mut self, a: TensorRef, b: TensorRef) -> TensorRef {
        node!(self, sys::ggml_add(self.ctx.raw(), a.ptr(), b.ptr()))
    }
    fn reshape_3d(&mut self, x: TensorRef, ne: [usize; 3]) -> TensorRef {
        node!(self, sys::ggml_reshape_3d(self.ctx.raw(), x.ptr(), ne[0] as i64, ne[1] as i64, ne[2] as i64))
    }
    fn rope(&mut self, x: TensorRef, pos: TensorRef, n_dims: usize, theta: f32, mode: RopeMode) -> TensorRef {
        node!(
            self,
            sys::ggml_rope_ext(
                self.ctx.raw(),
                x.ptr(),
                pos.ptr(),
                std::ptr::null_mut(),
                n_dims as i32,
                mode.ggml(),
                0,
                theta,
                1.0,
                0.0,
                1.0,
                0.0,
                0.0
            )
        )
    }
    fn attention(&mut self, q: TensorRef, k: TensorRef, v: TensorRef, causal: bool) -> TensorRef {
        let c = self.ctx.raw();
        // SAFETY: `q` is a live tensor (TensorRef invariant); reading its header is plain access.
        let [hd, n_head, n, _] = unsafe { q.0.as_ref() }.ne;
        let scale = 1.0 / (hd as f32).sqrt();
        let q = node!(self, sys::ggml_permute(c, q.ptr(), 0, 2, 1, 3)); // [hd, n, n_head]
        let k = node!(self, sys::ggml_permute(c, k.ptr(), 0, 2, 1, 3)); // [hd, n, n_head_kv]
        if !causal && self.flash_attn {
            // Bidirectional: no mask at all, so ggml's tiled flash attention applies; it never
            // materializes the n × n scores per head.
            let v = node!(self, sys::ggml_permute(c, v.ptr(), 0, 2, 1, 3)); // [hd, n, n_head_kv]
            let o = node!(self, sys::ggml_flash_attn_ext(c, q.ptr(), k.ptr(), v.ptr(), std::ptr::null_mut(), scale, 0.0, 0.0));
            // SAFETY: `o` is the flash-attention node just made in this builder's context.
            unsafe { sys::ggml_flash_attn_ext_set_prec(o.ptr(), sys::GGML_PREC_F32) };
            return node!(self, sys::ggml_reshape_2d(c, o.ptr(), hd * n_head, n)); // [hd * n_head, n]
        }
        let kq = f32_accumulation(node!(self, sys::ggml_mul_mat(c, k.ptr(), q.ptr()))); // [n_kv, n, n_head]
        let kq = if causal { node!(self, sys::ggml_diag_mask_inf(c, kq.ptr(), 0)) } else { kq };
        let kq = node!(self, sys::ggml_soft_max_ext(c, kq.ptr(), std::ptr::null_mut(), scale, 0.0));
        let vt = node!(self, sys::ggml_permute(c, v.ptr(), 1, 2, 0, 3)); // [n, hd, n_head_kv]
        let vt = node!(self, sys::ggml_cont(c, vt.ptr()));
        let kqv = f32_accumulation(node!(self, sys::ggml_mul_mat(c, vt.ptr(), kq.ptr()))); // [hd, n, n_head]
        let kqv = node!(self, sys::ggml_permute(c, kqv.ptr(), 0, 2, 1, 3)); // [hd, n_head, n]
        node!(self, sys::ggml_cont_2d(c, kqv.ptr(), hd * n_head, n)) // [hd * n_head, n]
    }
    fn swiglu(&mut self, gate: TensorRef, up: TensorRef) -> TensorRef {
        node!(self, sys::ggml_swiglu_split(self.ctx.raw(), gate.ptr(), up.ptr()))
    }
    fn token_range(&mut self, x: TensorRef, start: usize, len: usize) -> TensorRef {
        // SAFETY: a live tensor (TensorRef invariant); reading its header is plain access.
        let (ne, nb) = { let t = unsafe { x.0.as_ref() }; (t.ne, t.nb) };
        node!(self, sys::ggml_view_3d(self.ctx.raw(), x.ptr(), ne[0], ne[1], len as i64, nb[1], nb[2], start * nb[2]))
    }
    fn concat_tokens(&mut self, parts: &[TensorRef]) -> TensorRef {
        // Pairwise, as a balanced tree: each value is copied log2(parts) times, not parts/2.
        match parts {
            [] => panic!("concat_tokens needs at least one part"),
            [one] => *one,
            _ => {
                let (a, b) = parts.split_at(parts.len() / 2);
                let (a, b) = (self.concat_tokens(a), self.concat_tokens(b));
                node!(self, sys::ggml_concat(self.ctx.raw(), a.ptr(), b.ptr(), 1))
            }
        }
    }
    fn write_tokens(&mut self, cache: TensorRef, fresh: TensorRef, start: usize) -> TensorRef {
        // SAFETY: a live tensor (TensorRef invariant); reading its header is plain access.
        let nb = unsafe { cache.0.as_ref() }.nb;
        node!(self, sys::ggml_set_inplace(self.ctx.raw(), cache.ptr(), fresh.ptr(), nb[1], nb[2], nb[3], start * nb[2]))
    }
}

/// A ggml backend (the CPU, or a GPU device's), freed on drop.
struct CpuBackend(NonNull<sys::ggml_backend>);

impl Drop for CpuBackend {
    fn drop(&mut self) {
        // SAFETY: created by ggml_backend_cpu_init or ggml_backend_dev_init, freed once.
        unsafe { sys::ggml_backend_free(self.0.as_ptr()) };
    }
}

/// A backend scheduler, freed on drop: splits a graph between the devices' backends and the CPU
/// (ops the devices cannot run, and those on weights left in host memory).
struct Sched(NonNull<sys::ggml_backend_sched>);

impl Drop for Sched {
    fn drop(&mut self) {
        // SAFETY: created by ggml_backend_sched_new, freed once, before its backends.
        unsafe { sys::ggml_backend_sched_free(self.0.as_ptr()) };
    }
}

/// The device side of an executor: one or more GPUs, local or behind RPC servers.
struct Gpu {
    /// One backend per device, in the order of the devices given (the scheduler's priority).
    backends: Vec<CpuBackend>,
    names: Vec<String>,
}

impl Gpu {
    /// A scheduler for the newly built `graph`, splitting it between the devices and the CPU
    /// backend `cpu`, with the graph allocated. One per graph: splitting rewrites the graph's
    /// nodes to read the scheduler's copies of their inputs, which a second split of the same
    /// graph would find stale, so a cached graph keeps its own scheduler and allocation and is
    /// simply recomputed.
    fn alloc(&self, graph: NonNull<sys::ggml_cgraph>, graph_size: usize, cpu: NonNull<sys::ggml_backend>, key: &GraphKey) -> Result<Sched> {
        let mut backends: Vec<*mut sys::ggml_backend> = self.backends.iter().map(|b| b.0.as_ptr()).chain([cpu.as_ptr()]).collect();
        // SAFETY: live backends, the CPU last as ggml requires (at most GGML_SCHED_MAX_BACKENDS
        // = 16: `on_devices` refuses more); default buffer types; no pipeline parallelism; ops
        // on host weights may be offloaded.
        let raw = unsafe { sys::ggml_backend_sched_new(backends.as_mut_ptr(), std::ptr::null_mut(), backends.len() as i32, graph_size, false, true) };
        let sched = Sched(NonNull::new(raw).ok_or_else(|| Error::Ggml("ggml_backend_sched_new failed".into()))?);
        gathers_on_host(sched.0.as_ptr(), graph, cpu);
        // SAFETY: a live scheduler and a graph of live tensors; the scheduler assigns each node
        // a backend and allocates activations and inputs in that backend's memory.
        if !unsafe { sys::ggml_backend_sched_alloc_graph(sched.0.as_ptr(), graph.as_ptr()) } {
            return Err(Error::Ggml(format!("{}: cannot allocate the graph {key:?} (out of device memory?)", self.names.join(", "))));
        }
        Ok(sched)
    }
}

/// A graph allocator, freed on drop.
struct Gallocr(NonNull<sys::ggml_gallocr>);

impl Drop for Gallocr {
    fn drop(&mut self) {
        // SAFETY: created by ggml_gallocr_new, freed once; it owns the activation buffer.
        unsafe { sys::ggml_gallocr_free(self.0.as_ptr()) };
    }
}

/// Where a cached graph's activations live.
enum GraphAlloc {
    /// A CPU buffer of the graph's own allocator (held for its memory).
    Cpu { _galloc: Gallocr },
    /// The buffers of the graph's own scheduler (device and CPU).
    Sched(Sched),
}

struct CachedGraph {
    graph: NonNull<sys::ggml_cgraph>,
    inputs: Vec<TensorRef>,
    output: TensorRef,
    /// What [`Ops::keep`] named (also an output: its memory is its own).
    kept: Option<TensorRef>,
    // Drop order: the activation memory, then the context owning the graph and its headers.
    alloc: GraphAlloc,
    // Owns the graph and its tensors; only kept alive, never read.
    _ctx: Context,
}

/// Persistent per-layer key/value tensors, each layer's in a buffer of the backend its layer
/// runs on.
struct KvCache {
    layers: Vec<LayerKv<TensorRef>>,
    // Drop order: headers, then the buffers their data lives in.
    _ctxs: Vec<Context>,
    _buffers: Vec<Buffer>,
}

/// Builds, caches and runs graphs on the CPU backend (or a GPU device's through a scheduler).
pub(crate) struct Executor {
    // Drop order: graphs (which may point at cache tensors) before the cache, both before the
    // backends.
    plans: PlanCache<CachedGraph>,
    kv: KvStore<KvCache>,
    flash_attn: bool,
    gpu: Option<Gpu>,
    /// Per layer, the device (index into `gpu`'s backends) its key/value cache lives on;
    /// `None` or past the end: the host. Empty: every layer on the first device, if any.
    kv_places: Vec<Option<usize>>,
    /// The key of the last graph that ran to the end (what [`Executor::read_kept`] reads).
    last_run: Option<GraphKey>,
    backend: CpuBackend,
}

// SAFETY: the executor owns its backends, scheduler, allocator, graphs and cache exclusively;
// ggml's CPU backend and the GPU backends we link keep no thread-local state tied to the
// creating thread, and every use goes through `&mut self`, so moving it between threads (never
// using it from two at once) is sound.
unsafe impl Send for Executor {}

impl Executor {
    /// `flash_attn`: bidirectional attention through `ggml_flash_attn_ext` (O(n) memory per
    /// head) rather than scores, soft-max and a second matmul.
    pub fn cpu(threads: usize, flash_attn: bool) -> Result<Executor> {
        // SAFETY: creates a new CPU backend; checked for null.
        let backend = CpuBackend(NonNull::new(unsafe { sys::ggml_backend_cpu_init() }).ok_or_else(|| Error::Ggml("ggml_backend_cpu_init failed".into()))?);
        // SAFETY: a live CPU backend.
        unsafe { sys::ggml_backend_cpu_set_n_threads(backend.0.as_ptr(), threads.clamp(1, 512) as i32) };
        Ok(Executor { plans: PlanCache::new(PlanCache::<CachedGraph>::DEFAULT_CAPACITY), kv: KvStore::default(), flash_attn, gpu: None, kv_places: Vec::new(), last_run: None, backend })
    }

    /// An executor whose graphs run on the devices `devs` (GPUs, local or behind RPC servers)
    /// through a scheduler, with the CPU (`threads`) for whatever they cannot run.
    pub fn on_devices(threads: usize, flash_attn: bool, devs: &[super::GgmlDevice]) -> Result<Executor> {
        // ggml's scheduler takes at most 16 backends, the CPU's included.
        if devs.is_empty() || devs.len() > 15 {
            return Err(Error::Invalid(format!("{} devices: a model runs on 1 to 15 devices besides the CPU", devs.len())));
        }
        let mut e = Executor::cpu(threads, flash_attn)?;
        let mut backends = Vec::with_capacity(devs.len());
        for dev in devs {
            // SAFETY: a registered device; checked for null.
            let raw = unsafe { sys::ggml_backend_dev_init(super::device::handle(dev), std::ptr::null()) };
            backends.push(CpuBackend(NonNull::new(raw).ok_or_else(|| Error::Ggml(format!("cannot initialise {} ({})", dev.name, dev.description)))?));
        }
        e.gpu = Some(Gpu { backends, names: devs.iter().map(|d| d.name.clone()).collect() });
        Ok(e)
    }

    /// Where each layer's key/value cache lives (see `kv_places`): with the layer's weights,
    /// so attention reads it where it runs.
    pub fn with_kv_places(mut self, places: Vec<Option<usize>>) -> Executor {
        self.kv_places = places;
        self
    }

    /// Keeps up to `n` planned graphs (at least 1; each holds its own activation memory).
    pub fn with_plan_capacity(mut self, n: usize) -> Executor {
        self.plans = PlanCache::new(n);
        self
    }

    /// The devices' ggml names ("CUDA0", "RPC0, RPC1"), when graphs run on devices.
    pub fn device_name(&self) -> Option<String> {
        self.gpu.as_ref().map(|g| g.names.join(", "))
    }

    /// The key/value cache `id`: f32 `[head_dim, n_head_kv, total]` tensors for each of
    /// `layers`, allocated on first use and again whenever its shape changes (contents then
    /// undefined). Each id has buffers of its own.
    pub fn kv_cache(&mut self, id: CacheId, layers: usize, head_dim: usize, n_head_kv: usize, total: usize) -> Result<Vec<LayerKv<TensorRef>>> {
        let shape = [layers, head_dim, n_head_kv, total];
        if let Some(cache) = self.kv.get(id, shape) {
            return Ok(cache.layers.clone());
        }
        // Cached graphs point at the old cache's tensors: they go before it does.
        self.free_kv(id);
        // The backend of each layer: its device's, the host's, or (no placement given) the
        // first device's.
        let place = |i: usize| -> NonNull<sys::ggml_backend> {
            match &self.gpu {
                None => self.backend.0,
                Some(g) if self.kv_places.is_empty() => g.backends[0].0,
                Some(g) => self.kv_places.get(i).copied().flatten().and_then(|d| g.backends.get(d)).map_or(self.backend.0, |b| b.0),
            }
        };
        let dims = [head_dim as u64, n_head_kv as u64, total as u64];
        let mut handles: Vec<Option<LayerKv<TensorRef>>> = vec![None; layers];
        let (mut ctxs, mut buffers) = (Vec::new(), Vec::new());
        let mut order: Vec<NonNull<sys::ggml_backend>> = Vec::new();
        for on in (0..layers).map(place) {
            if !order.contains(&on) {
                order.push(on);
            }
        }
        for on in order {
            let here: Vec<usize> = (0..layers).filter(|&i| place(i) == on).collect();
            let ctx = Context::metadata_only(2 * here.len() + 1, false)?;
            for &i in &here {
                handles[i] = Some(LayerKv { k: ctx.new_header(GgmlType::F32, &dims)?, v: ctx.new_header(GgmlType::F32, &dims)? });
            }
            // SAFETY: a live context of unallocated headers and a live backend; checked for null.
            let buf = unsafe { sys::ggml_backend_alloc_ctx_tensors(ctx.raw(), on.as_ptr()) };
            let bytes = 8 * here.len() * head_dim * n_head_kv * total;
            buffers.push(Buffer(NonNull::new(buf).ok_or_else(|| Error::Ggml(format!("cannot allocate a {} MiB key/value cache", bytes >> 20)))?));
            ctxs.push(ctx);
        }
        let handles = handles.into_iter().map(|h| h.expect("every layer placed")).collect();
        let cache = self.kv.insert(id, shape, KvCache { layers: handles, _ctxs: ctxs, _buffers: buffers });
        Ok(cache.layers.clone())
    }

    /// Frees the key/value cache `id`, if held, after the graphs that point at it.
    pub fn free_kv(&mut self, id: CacheId) {
        self.plans.retain(|k| !k.reads_cache(id));
        self.kv.remove(id);
    }

    /// Runs the graph `build` makes (built once per distinct `key`, which must determine the
    /// graph, and kept among the last few), with `inputs` copied into the graph's i32 inputs in
    /// the order `build` created them, and returns the output tensor as f32.
    pub fn run(&mut self, key: &GraphKey, inputs: &[&[i32]], build: impl FnOnce(&mut Builder<'_>) -> TensorRef) -> Result<Vec<f32>> {
        let Executor { plans, flash_attn, gpu, backend, last_run, .. } = self;
        let cpu = backend.0;
        *last_run = None;
        let g = plans.get_or_make(key, || build_graph(key, *flash_attn, gpu.as_ref(), cpu, build))?;
        // SAFETY: live input tensors (4-byte vectors made by input_i32 or input_f32).
        let sizes: Vec<usize> = g.inputs.iter().map(|t| unsafe { sys::ggml_nelements(t.ptr()) } as usize).collect();
        if inputs.len() != sizes.len() || inputs.iter().zip(&sizes).any(|(i, &n)| i.len() != n) {
            return Err(Error::Invalid(format!("graph takes inputs of {sizes:?} values")));
        }
        for (t, data) in g.inputs.iter().zip(inputs) {
            // SAFETY: the input tensor was allocated with its graph, of 4-byte elements (i32,
            // or f32 taking the caller's bit patterns), exactly `data.len()` of them (checked
            // above).
            unsafe { sys::ggml_backend_tensor_set(t.ptr(), data.as_ptr().cast(), 0, data.len() * 4) };
        }
        let status = match &g.alloc {
            // SAFETY: the graph's own scheduler allocated it when it was built and was never
            // reset since.
            GraphAlloc::Sched(s) => unsafe { sys::ggml_backend_sched_graph_compute(s.0.as_ptr(), g.graph.as_ptr()) },
            // SAFETY: a fully allocated graph of live tensors on this backend.
            GraphAlloc::Cpu { .. } => unsafe { sys::ggml_backend_graph_compute(cpu.as_ptr(), g.graph.as_ptr()) },
        };
        if status != 0 {
            return Err(Error::Ggml(format!("graph compute failed with status {status}")));
        }
        // SAFETY: the output is a live, allocated f32 tensor (every op of the op set yields f32).
        let bytes = unsafe { sys::ggml_nbytes(g.output.ptr()) };
        let mut out = vec![0f32; bytes / 4];
        // SAFETY: `out` has room for `bytes` bytes; the tensor holds exactly that many.
        unsafe { sys::ggml_backend_tensor_get(g.output.ptr(), out.as_mut_ptr().cast(), 0, bytes) };
        *last_run = Some(key.clone());
        Ok(out)
    }

    /// Rows of the tensor the last graph run kept (see [`Engine::read_kept`]).
    pub fn read_kept(&mut self, rows: &[usize]) -> Result<Vec<f32>> {
        let g = match (self.plans.last(), &self.last_run) {
            (Some((k, g)), Some(ran)) if k == ran => g,
            _ => return Err(Error::Invalid("no graph ran since the kept rows were asked for".into())),
        };
        let Some(kept) = g.kept else {
            return Err(Error::Invalid("the last graph kept no tensor".into()));
        };
        // SAFETY: a live tensor of the plan's context (TensorRef invariant).
        let (ty, [n, total, _, _], nb1) = unsafe { ((*kept.0.as_ptr()).type_, (*kept.0.as_ptr()).ne, (*kept.0.as_ptr()).nb[1]) };
        if ty != ggml_type(GgmlType::F32) || nb1 != n as usize * 4 {
            return Err(Error::Invalid("the kept tensor is not contiguous f32 rows".into()));
        }
        let n = n as usize;
        let mut out = vec![0f32; rows.len() * n];
        for (dst, &r) in out.chunks_exact_mut(n).zip(rows) {
            if r >= total as usize {
                return Err(Error::Invalid(format!("row {r} of a kept tensor of {total} rows")));
            }
            // SAFETY: `kept` is an output of the graph that ran last (its memory is not reused
            // by another node, and no other graph of this plan ran since), allocated with the
            // plan; row `r` lies inside it (checked) and `dst` holds exactly `n` f32.
            unsafe { sys::ggml_backend_tensor_get(kept.ptr(), dst.as_mut_ptr().cast(), r * nb1, nb1) };
        }
        Ok(out)
    }
}

/// Builds the graph of `key` in a context of its own and allocates it: on the CPU with an
/// allocator of its own, on a device through a scheduler of its own.
fn build_graph(key: &GraphKey, flash_attn: bool, gpu: Option<&Gpu>, cpu: NonNull<sys::ggml_backend>, build: impl FnOnce(&mut Builder<'_>) -> TensorRef) -> Result<CachedGraph> {
    let graph_size = key.max_nodes.max(64);
    let ctx = Context::metadata_only(graph_size, true)?;
    let mut b = Builder { ctx: &ctx, inputs: Vec::new(), flash_attn, kept: None };
    let output = build(&mut b);
    let (inputs, kept) = (b.inputs, b.kept);
    // SAFETY: live tensors of `ctx`. An output's memory is not reused by any other node, so a
    // kept tensor still holds its values after the graph ran.
    unsafe { sys::ggml_set_output(output.ptr()) };
    if let Some(k) = kept {
        // SAFETY: as above.
        unsafe { sys::ggml_set_output(k.ptr()) };
    }
    // SAFETY: `ctx` was sized for a custom graph of `graph_size` nodes.
    let graph = unsafe { sys::ggml_new_graph_custom(ctx.raw(), graph_size, false) };
    let graph = NonNull::new(graph).ok_or_else(|| Error::Ggml("ggml_new_graph_custom failed".into()))?;
    // SAFETY: graph and output belong to `ctx`.
    unsafe { sys::ggml_build_forward_expand(graph.as_ptr(), output.ptr()) };
    if let Some(k) = kept {
        // SAFETY: as above; a kept tensor the output does not depend on is computed (and so
        // allocated) too.
        unsafe { sys::ggml_build_forward_expand(graph.as_ptr(), k.ptr()) };
    }
    let alloc = match gpu {
        None => {
            // SAFETY: returns the static CPU buffer type.
            let buft = unsafe { sys::ggml_backend_cpu_buffer_type() };
            // SAFETY: a valid buffer type; checked for null.
            let galloc = Gallocr(NonNull::new(unsafe { sys::ggml_gallocr_new(buft) }).ok_or_else(|| Error::Ggml("ggml_gallocr_new failed".into()))?);
            // SAFETY: allocates every unallocated tensor of the graph (activations and inputs)
            // in this allocator's CPU buffer; weights and caches already have data.
            if !unsafe { sys::ggml_gallocr_alloc_graph(galloc.0.as_ptr(), graph.as_ptr()) } {
                return Err(Error::Ggml(format!("cannot allocate the graph {key:?} (out of memory?)")));
            }
            GraphAlloc::Cpu { _galloc: galloc }
        }
        Some(gpu) => GraphAlloc::Sched(gpu.alloc(graph, graph_size, cpu, key)?),
    };
    Ok(CachedGraph { graph, inputs, output, kept, alloc, _ctx: ctx })
}

/// Pins each row gather from a weight table in host memory (the token embeddings, which stay
/// on the host as in llama.cpp) to the CPU backend `cpu`: left to itself the scheduler may run
/// the gather on the device, copying the whole table there every step rather than n rows.
/// Scheduler assignments last until its next reset, so this runs before every allocation.
fn gathers_on_host(sched: *mut sys::ggml_backend_sched, graph: NonNull<sys::ggml_cgraph>, cpu: NonNull<sys::ggml_backend>) {
    // SAFETY: a live graph.
    let n = unsafe { sys::ggml_graph_n_nodes(graph.as_ptr()) };
    for i in 0..n {
        // SAFETY: `i` is below the node count; nodes and their sources are live tensors of the
        // graph's context or of the weights.
        unsafe {
            let t = sys::ggml_graph_node(graph.as_ptr(), i);
            let table = (*t).src[0];
            let host_weights = |b: sys::ggml_backend_buffer_t| {
                !b.is_null() && sys::ggml_backend_buffer_get_usage(b) == sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS && sys::ggml_backend_buffer_is_host(b)
            };
            if (*t).op == sys::GGML_OP_GET_ROWS && !table.is_null() && host_weights((*table).buffer) {
                sys::ggml_backend_sched_set_tensor_backend(sched, t, cpu.as_ptr());
            }
        }
    }
}

impl Engine for Executor {
    type T = TensorRef;
    type Builder<'a> = Builder<'a>;

    fn run(&mut self, key: &GraphKey, inputs: &[&[i32]], build: impl FnOnce(&mut Builder<'_>) -> TensorRef) -> Result<Vec<f32>> {
        Executor::run(self, key, inputs, build)
    }

    fn plans_built(&self) -> usize {
        self.plans.built()
    }
    fn read_kept(&mut self, rows: &[usize]) -> Result<Vec<f32>> {
        Executor::read_kept(self, rows)
    }

    fn kv_cache(&mut self, id: CacheId, layers: usize, head_dim: usize, n_head_kv: usize, total: usize) -> Result<Vec<LayerKv<TensorRef>>> {
        Executor::kv_cache(self, id, layers, head_dim, n_head_kv, total)
    }
    fn free_kv(&mut self, id: CacheId) {
        Executor::free_kv(self, id)
    }
}

/// The matmuls of a LLaMA-shaped forward pass alone (Q, K, V, output, gate, up, down per layer,
/// then the LM head, on the file's weights, all in device memory), on one ggml device: what
/// ggml's own matmul kernels allow there. A benchmark's bound (benches/gpu.rs); the weights and
/// their handles stay inside.
pub struct MatmulChain {
    // Drop order: graphs before the weights they read, the weights before the map.
    executor: Executor,
    weights: Weights,
    _gguf: Gguf,
    /// Rows of `output.weight` (the gathered rows must be among them) and layers of the file.
    n_vocab: usize,
    n_layer: usize,
}

impl MatmulChain {
    /// `gguf` must hold LLaMA tensors named as llama.cpp names them, with an untied `output.weight`.
    pub fn new(gguf: Gguf, dev: &super::GgmlDevice, threads: usize) -> Result<MatmulChain> {
        // The file must be a runnable LLaMA with its own LM head: every shape the chain's
        // matmuls chain through, and every type, as a model load checks them.
        let checked = crate::model::check(&gguf, &Default::default())?;
        let p = &checked.params;
        if p.arch != "llama" || p.tied_output || p.n_head_kv != p.n_head {
            return Err(Error::Invalid("the matmul chain needs a LLaMA file with output.weight and no grouped heads".into()));
        }
        for t in gguf.tensors().iter().filter(|t| t.shape.len() >= 2) {
            if !super::can_matmul_on_cpu(t.ggml_type) {
                return Err(gguf.tensor_error(&t.name, format!("type {} has no matrix multiply kernel in ggml", t.ggml_type)));
            }
        }
        let (n_vocab, n_layer) = (p.n_vocab, p.n_layer);
        let buft = [super::device_buffer_type(dev)];
        let all = |_: &TensorInfo| Some(0);
        let weights = Weights::map_offload(&gguf, |_| false, Some((&buft, &all)))?;
        Ok(MatmulChain { executor: Executor::on_devices(threads, true, std::slice::from_ref(dev))?, weights, _gguf: gguf, n_vocab, n_layer })
    }

    /// One pass of the chain over `layers` layers at `n` tokens.
    pub fn run(&mut self, layers: usize, n: usize) -> Result<()> {
        if n == 0 || n > self.n_vocab || layers > self.n_layer {
            return Err(Error::Invalid(format!("the matmul chain takes 1..={} tokens and at most {} layers", self.n_vocab, self.n_layer)));
        }
        let weights = &self.weights;
        let w = |name: &str| weights.get(name).ok_or_else(|| Error::Invalid(format!("the matmul chain needs tensor `{name}`")));
        let mut names = vec!["output.weight".to_string()];
        for i in 0..layers {
            names.extend(["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"].map(|s| format!("blk.{i}.{s}.weight")));
        }
        let handles = names.iter().map(|n| w(n)).collect::<Result<Vec<_>>>()?;
        let ids: Vec<i32> = (0..n as i32).collect();
        self.executor.run(&GraphKey::other(&[n, layers], 4096 + 16 * layers), &[&ids], |o| {
            let t = o.input_i32(n);
            let mut h = o.get_rows(handles[0], t); // [n_embd, n]: any f32 activation
            for l in handles[1..].chunks(7) {
                let (q, k, v) = (o.mul_mat(l[0], h), o.mul_mat(l[1], h), o.mul_mat(l[2], h));
                let a = o.mul_mat(l[3], q);
                let kv = o.add(k, v);
                let x = o.add(a, kv);
                let (gate, up) = (o.mul_mat(l[4], x), o.mul_mat(l[5], x));
                let f = o.add(gate, up);
                h = o.mul_mat(l[6], f);
            }
            o.mul_mat(handles[0], h)
        })?;
        Ok(())
    }
}
