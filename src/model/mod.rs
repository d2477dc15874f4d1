//! Models: `general.architecture` → the model, weights as backend tensors, `forward(tokens) -> logits`.
//!
//! [`check`] is the whole validation of a file (architecture, hyper-parameters, every tensor's
//! presence and shape) without mapping weights into a backend or computing anything: what
//! [`Model::from_gguf`] runs first, and what the load-path fuzz target drives.

pub mod llama;
#[cfg(feature = "ggml")]
mod runtime;

use crate::error::Result;
use crate::gguf::Gguf;
pub use crate::generate::Pass;
pub use llama::{Kv, Llama, LlamaParams};
#[cfg(feature = "ggml")]
pub use runtime::{Backend, LoadOptions, Model};

/// What [`check`] found in a file that passed it.
#[derive(Clone, Debug)]
pub struct Checked {
    pub params: LlamaParams,
    /// Tensors of the file that the graph never reads.
    pub unused: Vec<String>,
    /// What a user should know (one line each) that did not stop the file from loading.
    pub warnings: Vec<String>,
}

/// Validates `gguf` as a model this runtime can run: a supported architecture, hyper-parameters
/// in range, and every tensor the graph reads present with the shape the metadata implies.
/// `causal` overrides the file's attention mask as [`LlamaParams::from_gguf`] does.
pub fn check(gguf: &Gguf, causal: Option<bool>) -> Result<Checked> {
    check_architecture(gguf)?;
    let params = LlamaParams::from_gguf(gguf, causal)?;
    let unused = Llama::load(gguf, params.clone(), |_| Some(()))?.unused;
    let warnings = unused_warning(&unused).into_iter().collect();
    Ok(Checked { params, unused, warnings })
}

/// Refuses a file of an architecture this runtime has no graph for, naming those it has.
pub fn check_architecture(gguf: &Gguf) -> Result<()> {
    let arch = gguf.get_str(crate::keys::ARCHITECTURE)?;
    if arch != "llama" {
        let arch = crate::gguf::shown_name(arch);
        return Err(gguf.metadata_error(crate::keys::ARCHITECTURE, format!("architecture `{arch}` is not supported (supported: llama)")));
    }
    Ok(())
}

/// The warning for tensors the graph does not read (at most 5 named).
fn unused_warning(unused: &[String]) -> Option<String> {
    if unused.is_empty() {
        return None;
    }
    let mut names: Vec<String> = unused.iter().take(5).map(|n| format!("`{}`", crate::gguf::shown_name(n))).collect();
    if unused.len() > 5 {
        names.push(format!("and {} more", unused.len() - 5));
    }
    Some(format!("{} tensor(s) of the file are not part of the llama graph and are ignored: {} (a variant of the architecture this runtime does not implement would run wrongly)", unused.len(), names.join(", ")))
}

