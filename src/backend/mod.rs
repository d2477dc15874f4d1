//! Compute backends. `ggml` is the only FFI user in the crate.

#[cfg(feature = "ggml")]
pub mod ggml;

#[cfg(feature = "wgpu")]
pub mod wgpu;
