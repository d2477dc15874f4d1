//! Validating, zero-copy GGUF reader over a memory map.
//!
//! Nothing read from the file is trusted before it is checked: every count is bounded by the
//! bytes left, every string is UTF-8 and inside the file, every shape product is computed with
//! overflow checks, every tensor lies inside the data section at an aligned offset without
//! overlapping another. Any violation is an [`Error::Format`] naming the byte offset.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{GgmlType, Value, ValueType, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_TENSOR_NAME};
use crate::error::{Error, Result};

/// Arrays nested deeper than this are rejected (each level costs only 12 bytes on disk, so an
/// unbounded depth would let a small file exhaust the stack).
const MAX_ARRAY_DEPTH: u32 = 8;

/// Where a tensor's bytes are and how to read them.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `shape[0]` is the number of elements in a row (contiguous).
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section, as written in the file.
    pub offset: u64,
    /// Size in bytes, derived from type and shape.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the map until asked for.
pub struct Gguf {
    path: PathBuf,
    storage: Storage,
    version: u32,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-maps and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        // Before opening: opening a FIFO would block until someone writes to it.
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::Invalid(format!("{}: is a directory, expected a GGUF file", path.display())));
        }
        if !meta.is_file() {
            return Err(Error::Invalid(format!("{}: not a regular file (a GGUF model is memory-mapped from a file on disk)", path.display())));
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            #[allow(unsafe_code)]
            // SAFETY: the map is read-only and lives as long as `Gguf`. Mapping is only undefined
            // if another process truncates or rewrites the file while it is mapped; like every
            // mmap-based model loader we accept that, and all reads below are bounds-checked
            // against the length seen here.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            Storage::Mapped(map)
        };
        Self::parse(path.to_path_buf(), storage)
    }

    /// Parses an in-memory file; `name` is used in error messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Gguf> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Gguf> {
        let header = Parser { buf: storage.bytes(), pos: 0, path: &path }.header()?;
        let key_index = header.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Gguf {
            path,
            storage,
            version: header.version,
            metadata: header.metadata,
            key_index,
            tensors: header.tensors,
            tensor_index,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The whole file, borrowed from the map.
    pub fn file_bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// The whole data section (every tensor's bytes at its offset), borrowed from the map.
    pub fn data_section(&self) -> &[u8] {
        let bytes = self.storage.bytes();
        &bytes[(self.data_offset as usize).min(bytes.len())..]
    }

    /// The bytes of `info`, borrowed from the map (validated at open time).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.storage.bytes()[start..start + info.size as usize]
    }

    /// Refuses `info` if it holds a non-finite float or block scale (see
    /// [`super::first_non_finite`]), naming the tensor and the first bad block or element.
    pub fn check_values(&self, info: &TensorInfo) -> Result<()> {
        match super::first_non_finite(info.ggml_type, self.tensor_data(info)) {
            None => Ok(()),
            Some(bad) => Err(self.tensor_error(&info.name, format!("{bad}; the file is corrupt"))),
        }
    }

    /// Error for a metadata key, naming this file.
    pub fn metadata_error(&self, key: &str, what: impl Into<String>) -> Error {
        Error::Metadata { path: self.path.clone(), key: super::shown_name(key), what: what.into() }
    }

    /// Error for a tensor, naming this file.
    pub fn tensor_error(&self, name: &str, what: impl Into<String>) -> Error {
        Error::Tensor { path: self.path.clone(), name: super::shown_name(name), what: what.into() }
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.metadata_error(key, "missing"))
    }

    /// A required unsigned integer (any integer type, checked to fit).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.required(key)?;
        v.as_u64()
            .ok_or_else(|| self.metadata_error(key, format!("expected a non-negative integer, found {v:?}")))
    }

    /// A required u32-range integer.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.get_u64(key)?;
        u32::try_from(v).map_err(|_| self.metadata_error(key, format!("{v} does not fit in 32 bits")))
    }

    /// A required finite float (f32 or f64): NaN and infinities are refused.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.required(key)?;
        let x = v.as_f64().ok_or_else(|| self.metadata_error(key, format!("expected a float, found {:?}", v.value_type())))?;
        if !x.is_finite() {
            return Err(self.metadata_error(key, format!("{x} is not a finite number")));
        }
        Ok(x)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.required(key)?;
        v.as_bool().ok_or_else(|| self.metadata_error(key, format!("expected a bool, found {:?}", v.value_type())))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.required(key)?;
        v.as_str().ok_or_else(|| self.metadata_error(key, format!("expected a string, found {:?}", v.value_type())))
    }

    /// A required array whose elements are all of `elem` type.
    pub fn get_array(&self, key: &str, elem: ValueType) -> Result<&[Value]> {
        let v = self.required(key)?;
        match v.as_array() {
            Some((t, items)) if t == elem => Ok(items),
            Some((t, _)) => Err(self.metadata_error(key, format!("expected an array of {elem:?}, found an array of {t:?}"))),
            None => Err(self.metadata_error(key, format!("expected an array, found {:?}", v.value_type()))),
        }
    }
}

struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// Adds the metadata key a value error happened under.
fn with_key(e: Error, key: &str) -> Error {
    match e {
        Error::Format { path, offset, what } => Error::Format { path, offset, what: format!("key `{}`: {what}", super::shown_name(key)) },
        other => other,
    }
}

/// Bounds-checked cursor. Every read either succeeds inside `buf` or returns an error naming
/// the offset where it would have started.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Parser<'a> {
    fn err_at(&self, offset: usize, what: impl Into<String>) -> Error {
        Error::Format { path: self.path.to_path_buf(), offset: offset as u64, what: what.into() }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err_at(
                self.pos,
                format!("{what} needs {n} bytes but only {} remain (truncated file?)", self.remaining()),
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.err_at(at, format!("{what} is not valid UTF-8 ({e})")))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what is left.
    fn check_count(&self, at: usize, count: u64, min_size: u64, what: &str) -> Result<usize> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(count as usize),
            _ => Err(self.err_at(
                at,
                format!("{what} count {count} cannot fit in the {} bytes left in the file", self.remaining()),
            )),
        }
    }

    fn header(mut self) -> Result<Header> {
        let magic = self.array::<4>("magic")?;
        if magic != MAGIC {
            return Err(self.err_at(0, format!("bad magic {magic:02x?}: expected \"GGUF\"; not a GGUF file")));
        }
        let version = self.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err(self.err_at(4, "GGUF version 1 is obsolete (32-bit counts); re-convert the model")),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(self.err_at(4, "big-endian GGUF is not supported; use a little-endian file"))
            }
            v => return Err(self.err_at(4, format!("unsupported version {v}: expected 2 or 3"))),
        }
        let at = self.pos;
        let n_tensors = self.u64("tensor count")?;
        let at_kv = self.pos;
        let n_kv = self.u64("metadata count")?;
        // A tensor info takes at least 8 (name) + 4 (n_dims) + 4 (type) + 8 (offset) bytes,
        // a key/value at least 8 (key) + 4 (type) + 1 bytes.
        let n_kv = self.check_count(at_kv, n_kv, 13, "metadata")?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut seen = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key_at = self.pos;
            let key = self.string("metadata key")?;
            let ty = self.value_type(&key)?;
            let value = self.value(ty, 0).map_err(|e| with_key(e, &key))?;
            if seen.insert(key.clone(), ()).is_some() {
                return Err(self.err_at(key_at, format!("duplicate metadata key `{}`", super::shown_name(&key))));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(Error::Metadata {
                    path: self.path.to_path_buf(),
                    key: "general.alignment".into(),
                    what: format!("expected a u32 power of two, found {v:?}"),
                })
            }
        };

        let n_tensors = self.check_count(at, n_tensors, 24, "tensor")?;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = HashMap::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let t = self.tensor_info(alignment)?;
            if names.insert(t.name.clone(), ()).is_some() {
                return Err(self.err_at(self.pos, format!("duplicate tensor name `{}`", super::shown_name(&t.name))));
            }
            tensors.push(t);
        }

        let data_offset = (self.pos as u64).div_ceil(alignment) * alignment;
        let file_len = self.buf.len() as u64;
        if !tensors.is_empty() && data_offset > file_len {
            return Err(self.err_at(self.pos, format!("data section would start at {data_offset}, past the end of the file")));
        }
        let data_len = file_len.saturating_sub(data_offset);
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        let mut end = 0u64;
        for t in by_offset {
            if t.offset < end {
                return Err(self.tensor_err(t, format!("data at offset {} overlaps the previous tensor (ending at {end})", t.offset)));
            }
            end = t.offset + t.size; // no overflow: both are at most data_len, checked below
            if t.offset > data_len || t.size > data_len - t.offset {
                return Err(self.tensor_err(
                    t,
                    format!(
                        "data [{}, {}) lies outside the {data_len}-byte data section (truncated file?)",
                        t.offset,
                        t.offset as u128 + t.size as u128
                    ),
                ));
            }
        }
        // Writers pad each tensor to the alignment and stop: more bytes than that after the last
        // tensor mean the header describes less than the file holds (a tensor_count too small
        // drops tensors silently, and shifts where every other one starts).
        if !tensors.is_empty() && data_len - end >= alignment {
            return Err(self.err_at(
                file_len as usize - (data_len - end) as usize,
                format!(
                    "{} bytes after the last tensor's data, more than the alignment padding: the header's tensor_count ({}) is too small, or the file was damaged",
                    data_len - end,
                    tensors.len()
                ),
            ));
        }
        Ok(Header { version, metadata, tensors, alignment, data_offset })
    }

    fn tensor_err(&self, t: &TensorInfo, what: String) -> Error {
        Error::Tensor { path: self.path.to_path_buf(), name: super::shown_name(&t.name), what }
    }

    fn value_type(&mut self, key: &str) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32("value type")?;
        ValueType::from_id(id).ok_or_else(|| self.err_at(at, format!("key `{}`: unknown value type {id}", super::shown_name(key))))
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("u8")?[0]),
            ValueType::I8 => Value::I8(self.array::<1>("i8")?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            ValueType::U32 => Value::U32(self.u32("u32")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            ValueType::U64 => Value::U64(self.u64("u64")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>("bool")?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.err_at(at, format!("bool must be 0 or 1, found {b}"))),
                }
            }
            ValueType::String => Value::String(self.string("string value")?),
            ValueType::Array => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err_at(at, format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels")));
                }
                let id = self.u32("array element type")?;
                let elem =
                    ValueType::from_id(id).ok_or_else(|| self.err_at(at, format!("unknown array element type {id}")))?;
                let count_at = self.pos;
                let count = self.u64("array length")?;
                let count = self.check_count(count_at, count, elem.min_size(), "array element")?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn tensor_info(&mut self, alignment: u64) -> Result<TensorInfo> {
        let at = self.pos;
        let name = self.string("tensor name")?;
        if name.len() >= MAX_TENSOR_NAME {
            return Err(self.err_at(at, format!("tensor name `{}` is {} bytes; ggml allows at most {}", super::shown_name(&name), name.len(), MAX_TENSOR_NAME - 1)));
        }
        let shown = super::shown_name(&name);
        let dims_at = self.pos;
        let n_dims = self.u32("tensor n_dims")?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(self.err_at(dims_at, format!("tensor `{shown}`: n_dims {n_dims} is not in 1..={MAX_DIMS}")));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(self.u64("tensor dimension")?);
        }
        let type_at = self.pos;
        let type_id = self.u32("tensor type")?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| self.err_at(type_at, format!("tensor `{shown}`: unknown ggml type {type_id}")))?;
        let offset_at = self.pos;
        let offset = self.u64("tensor offset")?;
        if offset % alignment != 0 {
            return Err(self.err_at(offset_at, format!("tensor `{shown}`: offset {offset} is not a multiple of the alignment {alignment}")));
        }
        let blck = ggml_type.block_size();
        if shape[0] % blck != 0 {
            return Err(self.err_at(
                dims_at,
                format!("tensor `{shown}`: row length {} is not a multiple of the {ggml_type} block size {blck}", shape[0]),
            ));
        }
        let size = ggml_type
            .tensor_bytes(&shape)
            .filter(|&s| s <= i64::MAX as u64 && shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_some_and(|n| n <= i64::MAX as u64))
            .ok_or_else(|| self.err_at(dims_at, format!("tensor `{shown}`: shape {shape:?} overflows")))?;
        Ok(TensorInfo { name, shape, ggml_type, offset, size })
    }
}
