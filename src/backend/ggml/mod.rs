//! Safe wrapper over ggml (from the `llama-cpp-sys-2` crate): quantization, dequantization,
//! and CPU graphs built in a [`Context`].
//!
//! ggml aborts the process on a failed assertion, so every wrapper validates its arguments
//! (types, block multiples, buffer lengths) before calling in. One FFI call per `unsafe` block.
#![allow(unsafe_code)]

mod context;
pub(crate) mod device;
mod exec;
mod llamacpp;
#[cfg(feature = "rpc")]
pub mod rpc;

pub(crate) use context::Context;
pub use device::{gpu_devices, GgmlDevice};
pub use device::buffer_type as device_buffer_type;
pub(crate) use exec::{Executor, TensorRef, Weights};
pub use exec::MatmulChain;
pub use llamacpp::{llama_quantize, LlamaCpp, LlamaCppOptions};

use llama_cpp_sys_2 as sys;

use crate::error::{Error, Result};
use crate::gguf::GgmlType;

/// The devices of the RPC servers `endpoints` (`HOST:PORT`), each checked before ggml connects
/// (see [`rpc`]); none for none. An error in a build without the `rpc` feature.
pub fn rpc_devices(endpoints: &[String], timeout: std::time::Duration) -> Result<Vec<GgmlDevice>> {
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    #[cfg(feature = "rpc")]
    return rpc::connect(endpoints, timeout);
    #[cfg(not(feature = "rpc"))]
    {
        let _ = timeout;
        Err(Error::Invalid("--rpc: this build has no RPC backend (rebuild with the `rpc` feature, on by default)".into()))
    }
}

fn ggml_type(t: GgmlType) -> sys::ggml_type {
    t.id() as sys::ggml_type
}

/// The linked ggml's version and commit, as `ggml_version()` and `ggml_commit()` report them.
pub fn version() -> String {
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            return "unknown".to_string();
        }
        // SAFETY: non-null pointers from ggml_version/ggml_commit are static NUL-terminated
        // strings compiled into the library.
        unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    // SAFETY: both functions take no arguments and return pointers to static strings.
    let (v, c) = unsafe { (sys::ggml_version(), sys::ggml_commit()) };
    format!("{} (commit {})", text(v), text(c))
}

/// ggml's own bytes-per-block and elements-per-block for `t` (used to cross-check our table).
pub fn type_layout(t: GgmlType) -> (u64, u64) {
    // SAFETY: `ggml_blck_size` reads a static table indexed by a valid type id (GgmlType only
    // holds ids that exist in this ggml).
    let blck = unsafe { sys::ggml_blck_size(ggml_type(t)) };
    // SAFETY: as above.
    let size = unsafe { sys::ggml_type_size(ggml_type(t)) };
    (blck as u64, size as u64)
}

/// Whether ggml can turn f32 rows into `t` without an importance matrix.
pub fn can_quantize(t: GgmlType) -> bool {
    use GgmlType::*;
    if matches!(t, Q8_1 | Q8_K | I8 | I16 | I32 | I64 | F64) {
        return false; // no quantize_chunk entry: these are activation or integer types
    }
    // SAFETY: reads a static property of a valid type id.
    !unsafe { sys::ggml_quantize_requires_imatrix(ggml_type(t)) }
}

/// Quantizes whole rows of `src` (row length `n_per_row`) into `dst` with ggml's quantizer.
/// `dst` must be exactly the quantized size. Runs on the calling thread: callers parallelize
/// over row ranges.
pub fn quantize(t: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) -> Result<()> {
    if !can_quantize(t) {
        return Err(Error::Ggml(format!("cannot quantize to {t} (unsupported or needs an importance matrix)")));
    }
    if n_per_row == 0 || src.len() % n_per_row != 0 {
        return Err(Error::Ggml(format!("{} values are not whole rows of {n_per_row}", src.len())));
    }
    let rows = src.len() / n_per_row;
    let row_bytes = t
        .row_bytes(n_per_row as u64)
        .ok_or_else(|| Error::Ggml(format!("row length {n_per_row} is not a multiple of the {t} block size {}", t.block_size())))?;
    if dst.len() as u64 != row_bytes * rows as u64 {
        return Err(Error::Ggml(format!("destination holds {} bytes, {rows} rows of {t} need {}", dst.len(), row_bytes * rows as u64)));
    }
    if rows == 0 {
        return Ok(());
    }
    // SAFETY: `src` holds `rows * n_per_row` f32 and `dst` exactly `rows` quantized rows (both
    // checked above); start 0 keeps ggml inside them; the type needs no importance matrix, so
    // a null imatrix is allowed.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ggml_type(t),
            src.as_ptr(),
            dst.as_mut_ptr().cast(),
            0,
            rows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    if written != dst.len() {
        return Err(Error::Ggml(format!("ggml_quantize_chunk wrote {written} bytes, expected {}", dst.len())));
    }
    Ok(())
}

/// Whether ggml has a dequantizer (`to_float`) for `t`: what a row lookup (`get_rows`) and an
/// upload converted for wgpu need.
pub fn can_dequantize(t: GgmlType) -> bool {
    if matches!(t, GgmlType::F32) {
        return true;
    }
    // SAFETY: returns a pointer to ggml's static traits table entry for a valid type id.
    let traits = unsafe { sys::ggml_get_type_traits(ggml_type(t)) };
    // SAFETY: non-null pointers into that table are valid for the process lifetime.
    unsafe { traits.as_ref() }.is_some_and(|tr| tr.to_float.is_some())
}

/// Whether ggml's CPU backend can use `t` as the weight of a matrix multiply (it has a dot
/// product kernel for it; `Q8_K`, for one, is an activation type without one, and a matmul on
/// it would call a null function).
pub fn can_matmul_on_cpu(t: GgmlType) -> bool {
    if matches!(t, GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64) {
        return false;
    }
    // SAFETY: idempotent one-time initialisation of the CPU tables the traits below live in.
    unsafe { sys::ggml_cpu_init() };
    // SAFETY: returns a pointer to ggml-cpu's static traits table entry for a valid type id.
    let traits = unsafe { sys::ggml_get_type_traits_cpu(ggml_type(t)) };
    // SAFETY: non-null pointers into that table are valid for the process lifetime.
    unsafe { traits.as_ref() }.is_some_and(|tr| tr.vec_dot.is_some())
}

/// Converts `src` (whole blocks of type `t`) to f32 with ggml's own `to_float`.
pub fn dequantize(t: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let n = dst.len() as u64;
    let need = t
        .row_bytes(n)
        .ok_or_else(|| Error::Ggml(format!("{n} values are not whole {t} blocks of {}", t.block_size())))?;
    if src.len() as u64 != need {
        return Err(Error::Ggml(format!("{} bytes given, {n} values of {t} need {need}", src.len())));
    }
    if t == GgmlType::F32 {
        for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        }
        return Ok(());
    }
    // SAFETY: returns a pointer to ggml's static traits table entry for a valid type id.
    let traits = unsafe { sys::ggml_get_type_traits(ggml_type(t)) };
    // SAFETY: the pointer is non-null and points to static, immutable data for the process lifetime.
    let to_float = unsafe { traits.as_ref() }
        .and_then(|tr| tr.to_float)
        .ok_or_else(|| Error::Ggml(format!("ggml has no dequantizer for {t}")))?;
    // SAFETY: `src` holds exactly `n` values of type `t` and `dst` has room for `n` f32 (checked above).
    unsafe { to_float(src.as_ptr().cast(), dst.as_mut_ptr(), n as i64) };
    Ok(())
}

/// ggml's own check of a tensor's bytes (`ggml_validate_row_data`, what llama.cpp's
/// `--check-tensors` runs): false for a non-finite float or block scale, for a length that is
/// not whole blocks, and for a type ggml does not validate (Q8_1). It prints what it found to
/// stderr itself. dlm checks with [`crate::gguf::first_non_finite`]; this is its reference.
pub fn validate_row_data(t: GgmlType, data: &[u8]) -> bool {
    // SAFETY: ggml reads `data.len()` bytes from the pointer (after checking that they are whole
    // blocks of `t`, a type id from our table that ggml knows), and keeps no reference.
    unsafe { sys::ggml_validate_row_data(ggml_type(t), data.as_ptr().cast(), data.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_type_table_matches_ggml() {
        for t in GgmlType::all() {
            assert_eq!(type_layout(t), (t.block_size(), t.type_size()), "{t}");
        }
    }

    #[test]
    fn quantize_round_trip_error_is_per_type_bounded() {
        let n = 512;
        let src: Vec<f32> = (0..2 * n).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.3).collect();
        // Relative RMS error bounds; a little above what each format gives on uniform data.
        for (t, bound) in [(GgmlType::F16, 1e-3), (GgmlType::Q8_0, 0.01), (GgmlType::Q6_K, 0.03), (GgmlType::Q4_K, 0.08), (GgmlType::Q4_0, 0.12)] {
            let mut q = vec![0u8; t.row_bytes(n as u64).unwrap() as usize * 2];
            quantize(t, &src, n, &mut q).unwrap();
            let mut back = vec![0f32; 2 * n];
            dequantize(t, &q, &mut back).unwrap();
            let err: f32 = src.iter().zip(&back).map(|(a, b)| (a - b).powi(2)).sum::<f32>().sqrt();
            let norm: f32 = src.iter().map(|a| a * a).sum::<f32>().sqrt();
            assert!(err / norm < bound, "{t}: relative error {}", err / norm);
            assert!(err / norm > 0.0 || t == GgmlType::F16, "{t}: suspiciously exact");
        }
    }

    #[test]
    fn quantize_rejects_bad_shapes_instead_of_aborting() {
        let src = vec![0f32; 100];
        assert!(quantize(GgmlType::Q4_0, &src, 100, &mut vec![0u8; 100]).is_err()); // 100 % 32 != 0
        assert!(quantize(GgmlType::Q4_0, &src[..96], 32, &mut vec![0u8; 10]).is_err()); // wrong dst size
        assert!(quantize(GgmlType::IQ2_XXS, &src, 100, &mut []).is_err()); // needs an imatrix
    }
}

/// Routes ggml's log: warnings and errors to stderr, chatter (debug, info: one line per repacked
/// tensor, buffer sizes) dropped unless `DLM_GGML_LOG` is set; and turns ggml's aborts into one
/// line and an exit code ([`on_abort`]). Installed once, before the first model loads.
pub(crate) fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("DLM_GGML_LOG").is_none() {
            // SAFETY: `log` is a valid callback for the whole program and ignores its user data.
            unsafe { sys::ggml_log_set(Some(log), std::ptr::null_mut()) };
        }
        // SAFETY: `on_abort` is a valid callback for the whole program.
        unsafe { sys::ggml_set_abort_callback(Some(on_abort)) };
    });
}

/// What ggml calls before `abort()`: every input dlm hands ggml is validated first, so what
/// reaches it is the network (ggml-rpc aborts when a server goes away mid-pass or answers
/// nonsense: exit code 2) or a bug (101). Either way one line, from whichever thread (ggml-rpc's
/// dispatcher thread, a compute thread), without unwinding through C.
unsafe extern "C" fn on_abort(message: *const std::os::raw::c_char) {
    // Two threads aborting at once print one line.
    static ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if ONCE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    let text = if message.is_null() {
        String::new()
    } else {
        // SAFETY: ggml passes its NUL-terminated message buffer, alive for the call.
        unsafe { std::ffi::CStr::from_ptr(message) }.to_string_lossy().trim().to_string()
    };
    // Anything ggml-rpc aborts on comes from the network (a server gone, or never there).
    let rpc = text.contains("ggml-rpc") || text.contains("RPC");
    // With RPC servers in use ggml trusts what they answer (sizes, addresses): a failed check
    // elsewhere is then most likely theirs.
    #[cfg(feature = "rpc")]
    let (served, serving) = (rpc::IN_USE.load(std::sync::atomic::Ordering::SeqCst), rpc::SERVING.load(std::sync::atomic::Ordering::SeqCst));
    #[cfg(not(feature = "rpc"))]
    let (served, serving) = (false, false);
    #[cfg(not(feature = "rpc"))]
    mod rpc {
        pub const EXIT_BAD_REQUEST: i32 = 2;
    }
    // ggml's message starts with the full path of its source file: the file name says enough.
    let text = match text.split_once(": ") {
        Some((at, rest)) if at.contains('/') => format!("{}: {rest}", at.rsplit('/').next().unwrap_or(at)),
        _ => text,
    };
    let (line, code) = if serving {
        (format!("error: dlm-rpc-server: ggml stopped on a failed check while serving a client (a malformed or hostile request) (ggml: {text})"), rpc::EXIT_BAD_REQUEST)
    } else if rpc {
        let detail = LAST_TRANSPORT_ERROR.lock().ok().and_then(|m| m.clone()).map_or(String::new(), |d| format!("; {d}"));
        (format!("error: lost an RPC server (--rpc): it stopped, its machine became unreachable, or it answered something malformed (ggml: {text}{detail})"), crate::cli::EXIT_ERROR as i32)
    } else if served {
        (format!("error: ggml stopped on a failed check while RPC servers (--rpc) are in use; a server may have answered something malformed (ggml: {text})"), crate::cli::EXIT_ERROR as i32)
    } else {
        (format!("error: internal error: ggml stopped on a failed check (ggml: {text}); this is a bug in dlm, please report it with the command line"), 101)
    };
    crate::cli::error_line(&line);
    crate::cli::remove_temp_files();
    crate::cli::exit_now(code);
}

/// ggml-rpc's last "send failed"/"recv failed": held rather than printed, because on a client
/// an abort follows it at once (its line says it), and on a server it only means a client left.
static LAST_TRANSPORT_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

unsafe extern "C" fn log(level: sys::ggml_log_level, text: *const std::os::raw::c_char, _user: *mut std::ffi::c_void) {
    if (level == sys::GGML_LOG_LEVEL_WARN || level == sys::GGML_LOG_LEVEL_ERROR) && !text.is_null() {
        // SAFETY: ggml passes a NUL-terminated message that lives for the call.
        let text = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
        if text.starts_with("send failed") || text.starts_with("recv failed") {
            if let Ok(mut last) = LAST_TRANSPORT_ERROR.lock() {
                *last = Some(text.trim().to_string());
            }
            return;
        }
        crate::errp!("ggml: {text}");
    }
}
