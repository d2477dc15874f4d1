//! llama.cpp itself (the `llama_*` API of the same `llama-cpp-sys-2` build), driven the way
//! `llama-diffusion-cli` drives it: one non-causal `llama_decode` of the whole sequence per step,
//! logits for every position. It is the peer our benchmarks measure against and an independent
//! implementation our tests compare logits with; it is not used to generate.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Once;

use llama_cpp_sys_2 as sys;

use crate::error::{Error, Result};

/// A model and a context of llama.cpp on the CPU, with a fixed maximum sequence length.
pub struct LlamaCpp {
    // Drop order: the context before the model it was made from.
    ctx: NonNull<sys::llama_context>,
    model: NonNull<sys::llama_model>,
    n_vocab: usize,
    n_ctx: usize,
    path: PathBuf,
}

// SAFETY: the context and model are owned exclusively by this value and llama.cpp keeps no
// thread-affine state in them; moving them to another thread is sound (llama.cpp's own server
// does so). Not Sync: `forward` needs `&mut self`.
unsafe impl Send for LlamaCpp {}

impl Drop for LlamaCpp {
    fn drop(&mut self) {
        // SAFETY: created by llama_init_from_model, freed once, before its model.
        unsafe { sys::llama_free(self.ctx.as_ptr()) };
        // SAFETY: created by llama_model_load_from_file, freed once; no context uses it any more.
        unsafe { sys::llama_model_free(self.model.as_ptr()) };
    }
}

unsafe extern "C" fn quiet(_level: sys::ggml_log_level, _text: *const std::os::raw::c_char, _user: *mut std::ffi::c_void) {}

fn init_once() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: `quiet` is a valid callback for the whole program; llama_backend_init has no
        // preconditions and runs once.
        unsafe {
            if std::env::var_os("DLM_LLAMA_LOG").is_none() {
                sys::llama_log_set(Some(quiet), std::ptr::null_mut());
            }
            sys::llama_backend_init();
        }
    });
}

/// How to run llama.cpp. [`LlamaCppOptions::new`] gives its defaults, which is what
/// `llama-diffusion-cli` runs.
#[derive(Clone, Copy, Debug)]
pub struct LlamaCppOptions {
    pub threads: usize,
    /// Longest sequence; all of it goes in one micro-batch (non-causal attention requires it).
    pub n_ctx: usize,
    /// K/V cache in f16 (llama.cpp's default) rather than f32.
    pub f16_cache: bool,
    /// Flash attention when the backend supports it (llama.cpp's default: auto).
    pub flash_attn: bool,
    /// Repack weights for the CPU's interleaved kernels (llama.cpp's default).
    pub repack: bool,
}

impl LlamaCppOptions {
    pub fn new(threads: usize, n_ctx: usize) -> LlamaCppOptions {
        LlamaCppOptions { threads, n_ctx, f16_cache: true, flash_attn: true, repack: true }
    }

    /// The arithmetic of our graph with `flash_attn: false`: f32 cache, scores and soft-max
    /// attention; `repack` as ours.
    pub fn same_arithmetic(threads: usize, n_ctx: usize, repack: bool) -> LlamaCppOptions {
        LlamaCppOptions { threads, n_ctx, f16_cache: false, flash_attn: false, repack }
    }
}

impl LlamaCpp {
    /// Loads `path` on the CPU, attention made bidirectional.
    pub fn load(path: &Path, o: &LlamaCppOptions) -> Result<LlamaCpp> {
        let (threads, n_ctx) = (o.threads, o.n_ctx);
        init_once();
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Invalid(format!("{}: path contains a NUL byte", path.display())))?;
        // SAFETY: returns a plain struct of defaults.
        let mut mp = unsafe { sys::llama_model_default_params() };
        mp.n_gpu_layers = 0;
        mp.use_extra_bufts = o.repack;
        // SAFETY: a NUL-terminated path and valid parameters; null is checked.
        let model = NonNull::new(unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), mp) })
            .ok_or_else(|| Error::Ggml(format!("{}: llama.cpp could not load the model (set DLM_LLAMA_LOG=1 to see why)", path.display())))?;
        // SAFETY: returns a plain struct of defaults.
        let mut cp = unsafe { sys::llama_context_default_params() };
        let n = u32::try_from(n_ctx.max(1)).map_err(|_| Error::Invalid(format!("context of {n_ctx} tokens is too large")))?;
        (cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max) = (n, n, n, 1);
        cp.n_threads = threads.clamp(1, 512) as i32;
        cp.n_threads_batch = cp.n_threads;
        cp.no_perf = true;
        if !o.flash_attn {
            cp.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
        }
        if !o.f16_cache {
            (cp.type_k, cp.type_v) = (sys::GGML_TYPE_F32, sys::GGML_TYPE_F32);
        }
        // SAFETY: a live model and valid parameters; null is checked.
        let ctx = NonNull::new(unsafe { sys::llama_init_from_model(model.as_ptr(), cp) });
        let Some(ctx) = ctx else {
            // SAFETY: the model was loaded above and nothing else refers to it.
            unsafe { sys::llama_model_free(model.as_ptr()) };
            return Err(Error::Ggml(format!("{}: llama.cpp could not create a context of {n} tokens", path.display())));
        };
        // SAFETY: a live context.
        unsafe { sys::llama_set_causal_attn(ctx.as_ptr(), false) };
        // SAFETY: a live model; the vocabulary belongs to it.
        let n_vocab = unsafe { sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(model.as_ptr())) } as usize;
        Ok(LlamaCpp { ctx, model, n_vocab, n_ctx: n as usize, path: path.to_owned() })
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Logits of every position (`n × n_vocab`), the sequence decoded from an empty cache.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 || n > self.n_ctx {
            return Err(Error::Invalid(format!("llama.cpp peer takes 1..={} tokens, got {n}", self.n_ctx)));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.n_vocab) {
            return Err(Error::Invalid(format!("token id {bad} is outside the {}-token vocabulary", self.n_vocab)));
        }
        // SAFETY: a live context; clearing its cache (data too) starts every call from position 0.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ctx.as_ptr()), true) };
        // SAFETY: allocates arrays for `n` tokens and one sequence id each; freed below.
        let batch = unsafe { sys::llama_batch_init(n as i32, 0, 1) };
        let mut b = batch;
        b.n_tokens = n as i32;
        for (i, &t) in tokens.iter().enumerate() {
            // SAFETY: every array was allocated with room for `n` entries (seq_id[i] for one id).
            unsafe {
                *b.token.add(i) = t as i32;
                *b.pos.add(i) = i as i32;
                *b.n_seq_id.add(i) = 1;
                **b.seq_id.add(i) = 0;
                *b.logits.add(i) = 1;
            }
        }
        // SAFETY: a live context and a filled batch of `n` ≤ n_ubatch tokens (checked above, so
        // llama.cpp's non-causal assertion holds).
        let status = unsafe { sys::llama_decode(self.ctx.as_ptr(), b) };
        let out = if status == 0 {
            // SAFETY: after a successful decode with every position marked for output, the
            // logits array holds n × n_vocab floats.
            let p = unsafe { sys::llama_get_logits(self.ctx.as_ptr()) };
            // SAFETY: as above; copied before any further call into the context.
            Ok(unsafe { std::slice::from_raw_parts(p, n * self.n_vocab) }.to_vec())
        } else {
            Err(Error::Ggml(format!("{}: llama_decode failed with status {status}", self.path.display())))
        };
        // SAFETY: the batch from llama_batch_init, freed once.
        unsafe { sys::llama_batch_free(batch) };
        out
    }
}

impl crate::generate::Forward for LlamaCpp {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        LlamaCpp::forward(self, tokens)
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
}

/// llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize` runs) from `input`
/// to `output` with `general.file_type` `ftype` and llama.cpp's defaults otherwise: the
/// reference the converter's type mixes are tested against.
pub fn llama_quantize(input: &Path, output: &Path, ftype: u32, threads: usize) -> Result<()> {
    init_once();
    let c = |p: &Path| CString::new(p.to_string_lossy().as_bytes()).map_err(|_| Error::Invalid(format!("{}: a NUL in the path", p.display())));
    let (inp, out) = (c(input)?, c(output)?);
    // SAFETY: returns a plain struct of defaults.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.ftype = ftype as sys::llama_ftype;
    params.nthread = threads as i32;
    // SAFETY: both paths are NUL-terminated strings that outlive the call; `params` is a valid
    // struct whose pointers are the defaults' (null).
    let rc = unsafe { sys::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params) };
    if rc != 0 {
        return Err(Error::Invalid(format!("llama_model_quantize({}) failed with {rc}", input.display())));
    }
    Ok(())
}
