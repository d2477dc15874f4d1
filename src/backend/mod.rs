//! Compute backends. `ggml` is the only FFI user in the crate.

pub mod ggml;
