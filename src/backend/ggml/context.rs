//! RAII ggml context: one ggml memory pool, freed on drop. The executor (exec.rs) keeps tensor
//! headers and graphs in no-alloc contexts, sized before anything is added (ggml aborts on
//! overflow).

use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::error::{Error, Result};

/// Owns a `ggml_context` with its own memory pool.
pub(crate) struct Context {
    raw: NonNull<sys::ggml_context>,
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `ggml_init` and is freed exactly once, here; the executor drops
        // every graph and handle made in it first (field order).
        unsafe { sys::ggml_free(self.raw.as_ptr()) };
    }
}

impl Context {
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
}
