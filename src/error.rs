//! One error type for the library. Every variant names what was wrong and where:
//! the file, the metadata key, the tensor, or the byte offset.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// The GGUF container itself is malformed: bad magic, counts, offsets, strings.
    #[error("{path}: invalid GGUF at byte offset {offset}: {what}")]
    Format { path: PathBuf, offset: u64, what: String },
    /// A metadata key is missing or holds the wrong type or value.
    #[error("{path}: metadata key `{key}`: {what}")]
    Metadata { path: PathBuf, key: String, what: String },
    /// A tensor is missing, mis-shaped or of a type that cannot be used.
    #[error("{path}: tensor `{name}`: {what}")]
    Tensor { path: PathBuf, name: String, what: String },
    /// Tokenizer construction or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A ggml call was refused (unsupported type, bad shape) before reaching ggml.
    #[error("ggml: {0}")]
    Ggml(String),
    /// The GPU backend (wgpu) failed: no adapter, an unsupported shape, a device error.
    #[error("gpu: {0}")]
    Gpu(String),
    /// An argument given by the caller is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), err: source }
    }
}
