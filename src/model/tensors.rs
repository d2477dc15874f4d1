//! Taking a network's weights from a file: every tensor the graph reads checked for presence,
//! shape and type against what the hyper-parameters imply, and the rest listed as unused.

use std::cell::RefCell;
use std::collections::HashSet;

use crate::error::Result;
use crate::gguf::{GgmlType, Gguf};
use crate::keys;
use super::{layer_of, Hparams};

/// Hands out the handles of checked tensors, remembering which were read.
pub struct Tensors<'a, T> {
    g: &'a Gguf,
    p: &'a Hparams,
    get: &'a dyn Fn(&str) -> Option<T>,
    used: RefCell<HashSet<String>>,
}

impl<'a, T> Tensors<'a, T> {
    pub fn new(g: &'a Gguf, p: &'a Hparams, get: &'a dyn Fn(&str) -> Option<T>) -> Self {
        Tensors { g, p, get, used: RefCell::new(HashSet::new()) }
    }

    /// A weight matrix (any type with rows: float or quantized).
    pub fn matrix(&self, name: &str, shape: &[u64]) -> Result<T> {
        self.take(name, shape, false)?.ok_or_else(|| self.missing(name))
    }

    /// A norm weight or bias: f32, as llama.cpp's converters write every 1-D tensor.
    pub fn vector(&self, name: &str, len: u64) -> Result<T> {
        self.take(name, &[len], true)?.ok_or_else(|| self.missing(name))
    }

    /// A bias the architecture may or may not have.
    pub fn optional_vector(&self, name: &str, len: u64) -> Result<Option<T>> {
        self.take(name, &[len], true)
    }

    /// The file's tensors that no call above took.
    pub fn unused(self) -> Vec<String> {
        let used = self.used.into_inner();
        self.g.tensors().iter().map(|t| t.name.clone()).filter(|n| !used.contains(n)).collect()
    }

    fn take(&self, name: &str, shape: &[u64], vector: bool) -> Result<Option<T>> {
        let Some(info) = self.g.tensor(name) else { return Ok(None) };
        self.used.borrow_mut().insert(name.to_owned());
        if info.shape != shape {
            return Err(self.g.tensor_error(name, format!("shape {:?}, expected {shape:?} from the metadata", info.shape)));
        }
        if vector && info.ggml_type != GgmlType::F32 {
            return Err(self.g.tensor_error(name, format!("norm weights and biases must be f32, found {}", info.ggml_type)));
        }
        // Norm weights and biases are small: their values are always checked (a NaN there
        // would otherwise reach the logits only on some backends and paths).
        if vector {
            self.g.check_values(info)?;
        }
        if !vector && matches!(info.ggml_type, GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64) {
            return Err(self.g.tensor_error(name, format!("type {} cannot be a weight matrix", info.ggml_type)));
        }
        (self.get)(name).map(Some).ok_or_else(|| self.g.tensor_error(name, "not loaded by the backend"))
    }

    fn missing(&self, name: &str) -> crate::Error {
        match layer_of(name) {
            Some(_) => self.g.tensor_error(name, format!("missing ({} says {} layers)", keys::arch(&self.p.arch, "block_count"), self.p.n_layer)),
            None => self.g.tensor_error(name, "missing"),
        }
    }
}
