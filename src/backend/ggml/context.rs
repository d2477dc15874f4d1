//! RAII ggml context, tensors and CPU graphs.
//!
//! A [`Context`] owns one ggml memory pool; [`Tensor`]s and [`Graph`]s borrow it, so none can
//! outlive the pool. Space is checked before each allocation because ggml aborts on overflow.

use std::marker::PhantomData;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::ggml_type;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;

/// Owns a `ggml_context` with its own memory pool.
pub struct Context {
    raw: NonNull<sys::ggml_context>,
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `ggml_init` and is freed exactly once, here; borrows of the
        // context (tensors, graphs) cannot outlive `self`.
        unsafe { sys::ggml_free(self.raw.as_ptr()) };
    }
}

/// A tensor living in a [`Context`].
#[derive(Clone, Copy)]
pub struct Tensor<'c> {
    raw: NonNull<sys::ggml_tensor>,
    _ctx: PhantomData<&'c Context>,
}

/// A forward graph ending at one output tensor.
pub struct Graph<'c> {
    raw: NonNull<sys::ggml_cgraph>,
    _ctx: PhantomData<&'c Context>,
}

impl Context {
    /// A context whose pool holds `mem_bytes` of tensor data and metadata.
    pub fn new(mem_bytes: usize) -> Result<Context> {
        Self::with_params(mem_bytes, false)
    }

    /// With `no_alloc`, the pool holds tensor headers only and data lives in backend buffers.
    pub(crate) fn with_params(mem_bytes: usize, no_alloc: bool) -> Result<Context> {
        // SAFETY: idempotent one-time initialisation of ggml's CPU tables.
        unsafe { sys::ggml_cpu_init() };
        let params = sys::ggml_init_params { mem_size: mem_bytes, mem_buffer: std::ptr::null_mut(), no_alloc };
        // SAFETY: a null `mem_buffer` asks ggml to allocate the pool itself; the result is
        // checked for null (allocation failure).
        let raw = unsafe { sys::ggml_init(params) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::Ggml(format!("ggml_init failed for {mem_bytes} bytes")))?;
        Ok(Context { raw })
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_context {
        self.raw.as_ptr()
    }

    fn free_bytes(&self) -> usize {
        // SAFETY: `raw` is a live context.
        let size = unsafe { sys::ggml_get_mem_size(self.raw.as_ptr()) };
        // SAFETY: as above.
        let used = unsafe { sys::ggml_used_mem(self.raw.as_ptr()) };
        size.saturating_sub(used)
    }

    fn reserve(&self, data_bytes: u64) -> Result<()> {
        // SAFETY: pure function returning a constant.
        let overhead = unsafe { sys::ggml_tensor_overhead() } as u64;
        let need = data_bytes.saturating_add(overhead).saturating_add(64);
        if need > self.free_bytes() as u64 {
            return Err(Error::Ggml(format!("context pool full: {need} bytes needed, {} free", self.free_bytes())));
        }
        Ok(())
    }

    /// A new tensor (ggml order: `shape[0]` is the row length); contents are uninitialised zeros
    /// as far as ggml is concerned: set them with [`Tensor::set_bytes`].
    pub fn new_tensor(&self, t: GgmlType, shape: &[u64]) -> Result<Tensor<'_>> {
        let bytes = t.tensor_bytes(shape).filter(|_| (1..=4).contains(&shape.len())).ok_or_else(|| {
            Error::Ggml(format!("shape {shape:?} is not valid for {t} (1 to 4 dims, rows of whole blocks)"))
        })?;
        self.reserve(bytes)?;
        let mut ne = [1i64; 4];
        for (n, &d) in ne.iter_mut().zip(shape) {
            *n = i64::try_from(d).map_err(|_| Error::Ggml(format!("dimension {d} too large")))?;
        }
        // SAFETY: the context is live and has room for the tensor (checked by `reserve`), the
        // type id is valid and the dimensions are positive-or-zero i64.
        let raw = unsafe { sys::ggml_new_tensor(self.raw.as_ptr(), ggml_type(t), shape.len() as i32, ne.as_ptr()) };
        self.wrap(raw)
    }

    fn wrap(&self, raw: *mut sys::ggml_tensor) -> Result<Tensor<'_>> {
        let raw = NonNull::new(raw).ok_or_else(|| Error::Ggml("ggml returned a null tensor (pool full?)".into()))?;
        Ok(Tensor { raw, _ctx: PhantomData })
    }

    /// `a^T · b` in ggml's convention: `a` is [k, m], `b` is [k, n], the result [m, n] f32.
    pub fn mul_mat<'c>(&'c self, a: &Tensor<'c>, b: &Tensor<'c>) -> Result<Tensor<'c>> {
        let (sa, sb) = (a.ne(), b.ne());
        if sa[0] != sb[0] || sb[2] % sa[2] != 0 || sb[3] % sa[3] != 0 {
            return Err(Error::Ggml(format!("mul_mat: shapes {sa:?} and {sb:?} do not chain")));
        }
        if b.ggml_type() != Some(GgmlType::F32) {
            return Err(Error::Ggml("mul_mat: the right operand must be f32".into()));
        }
        self.reserve((sa[1] * sb[1] * sb[2] * sb[3]) as u64 * 4)?;
        // SAFETY: both tensors belong to this live context, their shapes satisfy
        // `ggml_can_mul_mat` (checked above) and the pool has room for the result.
        let raw = unsafe { sys::ggml_mul_mat(self.raw.as_ptr(), a.raw.as_ptr(), b.raw.as_ptr()) };
        self.wrap(raw)
    }

    /// The forward graph computing `out`.
    pub fn graph<'c>(&'c self, out: &Tensor<'c>) -> Result<Graph<'c>> {
        // SAFETY: pure function returning a constant.
        self.reserve(unsafe { sys::ggml_graph_overhead() } as u64)?;
        // SAFETY: the context is live and has room for a default-size graph.
        let raw = unsafe { sys::ggml_new_graph(self.raw.as_ptr()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::Ggml("ggml_new_graph returned null".into()))?;
        // SAFETY: graph and tensor belong to this context.
        unsafe { sys::ggml_build_forward_expand(raw.as_ptr(), out.raw.as_ptr()) };
        Ok(Graph { raw, _ctx: PhantomData })
    }
}

impl<'c> Tensor<'c> {
    fn header(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives in a context that outlives `'c`, and ggml does not move it.
        unsafe { self.raw.as_ref() }
    }

    /// ggml's four dimensions.
    pub fn ne(&self) -> [i64; 4] {
        self.header().ne
    }

    pub fn ggml_type(&self) -> Option<GgmlType> {
        GgmlType::from_id(self.header().type_)
    }

    fn nbytes(&self) -> usize {
        // SAFETY: a live tensor.
        unsafe { sys::ggml_nbytes(self.raw.as_ptr()) }
    }

    /// Copies `bytes` (exactly the tensor's size) into the tensor's data.
    pub fn set_bytes(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() != self.nbytes() {
            return Err(Error::Ggml(format!("set_bytes: {} bytes given, tensor holds {}", bytes.len(), self.nbytes())));
        }
        let data = self.header().data.cast::<u8>();
        if data.is_null() {
            return Err(Error::Ggml("tensor has no data (no_alloc context)".into()));
        }
        // SAFETY: `data` points to `nbytes` bytes owned by the context; no Rust reference into
        // them exists (we only hand out copies), and the lengths match.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) };
        Ok(())
    }

    /// Copies an f32 tensor's data out.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        if self.ggml_type() != Some(GgmlType::F32) {
            return Err(Error::Ggml("to_f32_vec on a non-f32 tensor".into()));
        }
        let n = self.nbytes() / 4;
        let mut out = vec![0f32; n];
        let data = self.header().data.cast::<f32>();
        if data.is_null() {
            return Err(Error::Ggml("tensor has no data (no_alloc context)".into()));
        }
        // SAFETY: `data` holds `n` f32 owned by the context; `out` has room for `n`.
        unsafe { std::ptr::copy_nonoverlapping(data, out.as_mut_ptr(), n) };
        Ok(out)
    }
}

impl Graph<'_> {
    /// Runs the graph on the CPU with `n_threads` threads.
    pub fn compute(&mut self, n_threads: usize) -> Result<()> {
        let n_threads = n_threads.clamp(1, 512) as i32;
        // SAFETY: a live graph; a null threadpool lets ggml create its own.
        let mut plan = unsafe { sys::ggml_graph_plan(self.raw.as_ptr(), n_threads, std::ptr::null_mut()) };
        let mut work = vec![0u8; plan.work_size];
        plan.work_data = if work.is_empty() { std::ptr::null_mut() } else { work.as_mut_ptr() };
        // SAFETY: the plan was made for this graph and its work buffer is `work_size` bytes that
        // live until the call returns.
        let status = unsafe { sys::ggml_graph_compute(self.raw.as_ptr(), &mut plan) };
        if status != 0 {
            return Err(Error::Ggml(format!("graph compute failed with status {status}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ggml::{dequantize, quantize};

    #[test]
    fn quantized_mul_mat_matches_scalar_reference() {
        let (k, m, n) = (64usize, 5usize, 3usize);
        let w: Vec<f32> = (0..k * m).map(|i| (i * 7919 % 211) as f32 / 105.0 - 1.0).collect();
        let x: Vec<f32> = (0..k * n).map(|i| (i * 104729 % 97) as f32 / 48.0 - 1.0).collect();
        let mut wq = vec![0u8; GgmlType::Q8_0.row_bytes(k as u64).unwrap() as usize * m];
        quantize(GgmlType::Q8_0, &w, k, &mut wq).unwrap();
        let mut wd = vec![0f32; k * m];
        dequantize(GgmlType::Q8_0, &wq, &mut wd).unwrap();

        let ctx = Context::new(1 << 20).unwrap();
        let a = ctx.new_tensor(GgmlType::Q8_0, &[k as u64, m as u64]).unwrap(); // [k, m]
        a.set_bytes(&wq).unwrap();
        let b = ctx.new_tensor(GgmlType::F32, &[k as u64, n as u64]).unwrap(); // [k, n]
        b.set_bytes(&x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()).unwrap();
        let c = ctx.mul_mat(&a, &b).unwrap(); // [m, n]
        assert_eq!(c.ne(), [m as i64, n as i64, 1, 1]);
        ctx.graph(&c).unwrap().compute(2).unwrap();
        let got = c.to_f32_vec().unwrap();
        for j in 0..n {
            for i in 0..m {
                let want: f32 = (0..k).map(|t| wd[i * k + t] * x[j * k + t]).sum();
                // ggml quantizes the activations to Q8 for the dot product: allow that error.
                assert!((got[j * m + i] - want).abs() < 0.02 * (1.0 + want.abs()), "({i},{j}): {} vs {want}", got[j * m + i]);
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors_not_aborts() {
        let ctx = Context::new(1 << 16).unwrap();
        let a = ctx.new_tensor(GgmlType::F32, &[8, 2]).unwrap();
        let b = ctx.new_tensor(GgmlType::F32, &[7, 2]).unwrap();
        assert!(ctx.mul_mat(&a, &b).is_err());
        assert!(ctx.new_tensor(GgmlType::Q4_0, &[31, 1]).is_err());
        assert!(ctx.new_tensor(GgmlType::F32, &[1 << 20]).is_err()); // larger than the pool
        assert!(a.set_bytes(&[0u8; 3]).is_err());
    }
}
