//! GGUF writer. The header (metadata and tensor infos with their offsets) is fixed before any
//! tensor data is written, so tensors can then be streamed one at a time, in order, without
//! holding the model in memory. Output goes to a hidden temporary file beside the target and is
//! renamed over it only when every tensor has been written and flushed: a failed or interrupted
//! run never leaves a truncated `.gguf` behind.

use std::path::Path;

use super::{GgmlType, Value, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_TENSOR_NAME};
use crate::atomic::AtomicFile;
use crate::error::{Error, Result};

/// A tensor to be written: name, ggml-order shape and type.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    /// Bytes of this tensor's data (validated when added to a writer).
    pub fn size(&self) -> u64 {
        self.ggml_type.tensor_bytes(&self.shape).unwrap_or(0)
    }
}

/// Collects the header of a GGUF v3 file.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorSpec>,
    /// The tensors' names, for the duplicate check (a model may declare hundreds of thousands).
    names: std::collections::HashSet<String>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a metadata key. `general.alignment` must be a power-of-two u32.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> Result<()> {
        let value = value.into();
        if key == "general.alignment" && !matches!(value, Value::U32(a) if a.is_power_of_two()) {
            return Err(Error::Invalid(format!("general.alignment must be a power-of-two u32, got {value:?}")));
        }
        check_value(key, &value)?;
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_owned(), value)),
        }
        Ok(())
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// Declares the next tensor. Data must later be written in declaration order.
    pub fn add_tensor(&mut self, name: &str, shape: &[u64], ggml_type: GgmlType) -> Result<()> {
        let bad = |what: String| Error::Invalid(format!("tensor `{name}`: {what}"));
        if name.len() >= MAX_TENSOR_NAME {
            return Err(bad(format!("name is {} bytes; ggml allows at most {}", name.len(), MAX_TENSOR_NAME - 1)));
        }
        if shape.is_empty() || shape.len() > MAX_DIMS {
            return Err(bad(format!("{} dimensions; expected 1..={MAX_DIMS}", shape.len())));
        }
        if ggml_type.tensor_bytes(shape).is_none() {
            return Err(bad(format!(
                "shape {shape:?} does not fit type {ggml_type} (row length must be a multiple of {})",
                ggml_type.block_size()
            )));
        }
        if !self.names.insert(name.to_owned()) {
            return Err(bad("declared twice".into()));
        }
        self.tensors.push(TensorSpec { name: name.to_owned(), shape: shape.to_vec(), ggml_type });
        Ok(())
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    fn alignment(&self) -> u64 {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) => u64::from(*a),
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Serializes the header (everything before the data section, padding included).
    pub fn header_bytes(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += t.size().div_ceil(align) * align;
        }
        out.resize((out.len() as u64).div_ceil(align) as usize * align as usize, 0);
        out
    }

    /// Total file size once all tensors are written.
    pub fn file_size(&self) -> u64 {
        let align = self.alignment();
        self.header_bytes().len() as u64 + self.tensors.iter().map(|t| t.size().div_ceil(align) * align).sum::<u64>()
    }

    /// Starts writing to `path` (through a temporary file). Feed every tensor's bytes in order
    /// with [`TensorStream::write_tensor`], then call [`TensorStream::finish`].
    pub fn create(&self, path: impl AsRef<Path>) -> Result<TensorStream> {
        let mut stream = TensorStream { alignment: self.alignment(), tensors: self.tensors.clone(), next: 0, file: AtomicFile::create(path)? };
        let header = self.header_bytes();
        stream.write_raw(&header)?;
        Ok(stream)
    }
}

/// Open output of [`GgufWriter::create`]. Dropping it without `finish` deletes the temporary file
/// ([`AtomicFile`]).
pub struct TensorStream {
    alignment: u64,
    tensors: Vec<TensorSpec>,
    next: usize,
    file: AtomicFile,
}

impl TensorStream {
    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes)
    }

    /// The tensor whose data is expected next, if any.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.next)
    }

    /// Writes the data of the next declared tensor; its length must match the declared type and shape.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        let spec = self
            .tensors
            .get(self.next)
            .ok_or_else(|| Error::Invalid(format!("{}: more tensor data than declared tensors", self.file.path().display())))?;
        let size = spec.size();
        if data.len() as u64 != size {
            return Err(Error::Invalid(format!(
                "tensor `{}`: {} bytes given, {size} expected for {} {:?}",
                spec.name,
                data.len(),
                spec.ggml_type,
                spec.shape
            )));
        }
        let pad = (size.div_ceil(self.alignment) * self.alignment - size) as usize;
        self.write_raw(data)?;
        self.write_raw(&vec![0u8; pad])?;
        self.next += 1;
        Ok(())
    }

    /// Flushes, syncs and renames the temporary file over the target.
    pub fn finish(self) -> Result<()> {
        if self.next != self.tensors.len() {
            return Err(Error::Invalid(format!(
                "{}: only {} of {} tensors were written",
                self.file.path().display(),
                self.next,
                self.tensors.len()
            )));
        }
        self.file.finish()
    }
}

fn check_value(key: &str, value: &Value) -> Result<()> {
    if let Value::Array(elem, items) = value {
        if let Some(bad) = items.iter().find(|v| v.value_type() != *elem) {
            return Err(Error::Invalid(format!(
                "metadata `{key}`: array declared as {elem:?} holds a {:?}",
                bad.value_type()
            )));
        }
        items.iter().try_for_each(|v| check_value(key, v))?;
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(elem, items) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

