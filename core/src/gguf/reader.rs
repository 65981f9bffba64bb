//! Parsing a GGUF file (v2 / v3, little-endian) held in memory.
//!
//! Layout (ggml/docs/gguf.md): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata key/value pairs, the tensor infos (name, u32 n_dims, u64 ne[n_dims] innermost
//! first, u32 ggml type, u64 offset into the data section), padding to `general.alignment`
//! (default 32), then the tensor data.

use std::collections::HashMap;

use super::types::GgmlType;
use crate::error::{Error, Result};

/// Default alignment of the data section and of every tensor's offset.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The largest number of dimensions ggml tensors have.
pub const MAX_DIMS: usize = 4;
/// Nesting limit for arrays of arrays (a corrupt file must not recurse without bound).
const MAX_ARRAY_DEPTH: usize = 8;

fn err(msg: impl Into<String>) -> Error {
    Error::Gguf(msg.into())
}

/// The type tag of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type takes in a file.
    fn min_size(self) -> usize {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type and elements (all of that type).
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any float or integer value.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, items) => Some(items),
            _ => None,
        }
    }

    /// A short description for error messages and listings (arrays by type and length).
    pub fn describe(&self) -> String {
        match self {
            Value::String(s) if s.chars().count() > 60 => format!("{:?}...", s.chars().take(60).collect::<String>()),
            Value::String(s) => format!("{s:?}"),
            Value::Array(t, items) => format!("[{t:?}; {}]", items.len()),
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
        }
    }
}

/// One tensor of the file: where its data is and how to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's `ne`: innermost (contiguous) dimension first. The PyTorch shape is the reverse.
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: usize,
    pub n_elements: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    /// The shape in PyTorch (row-major, outermost first) order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file borrowing its bytes. Every offset and size was checked while parsing, so
/// tensor data can be sliced without further checks.
#[derive(Debug, Clone)]
pub struct GgufFile<'a> {
    bytes: &'a [u8],
    version: u32,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: usize,
    tensor_table_offset: usize,
    data_offset: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// `n` bytes, or an error saying which part of the file is truncated.
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(err(format!(
                "truncated file: {} needs {n} bytes at offset {} but the file ends at {} bytes",
                what(),
                self.pos,
                self.bytes.len()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    /// A count or length stored as u64 that must fit `min_size`-byte items in what is left.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = (self.remaining() / min_size.max(1)) as u64;
        if n > fits {
            return Err(err(format!(
                "{} is {n}, impossible: only {} bytes follow at offset {} (corrupt count or truncated file)",
                what(),
                self.remaining(),
                self.pos
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.count(1, &|| format!("length of {}", what()))?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| err(format!("{} is not valid UTF-8", what())))
    }

    fn value(&mut self, ty: ValueType, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8(what)?),
            ValueType::I8 => Value::I8(self.u8(what)? as i8),
            ValueType::U16 => Value::U16(self.u16(what)?),
            ValueType::I16 => Value::I16(self.u16(what)? as i16),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(self.u32(what)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(self.u64(what)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(what)?)),
            ValueType::Bool => match self.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(err(format!("{} is a bool stored as {b} (expected 0 or 1)", what()))),
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(err(format!("{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels", what())));
                }
                let id = self.u32(&|| format!("element type of {}", what()))?;
                let elem = ValueType::from_id(id)
                    .ok_or_else(|| err(format!("{} has an unknown element type {id}", what())))?;
                let n = self.count(elem.min_size(), &|| format!("element count of {}", what()))?;
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    items.push(self.value(elem, depth + 1, &|| format!("element {i} of {}", what()))?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

fn align_up(x: usize, alignment: usize) -> Option<usize> {
    x.checked_add(alignment - 1).map(|v| v / alignment * alignment)
}

impl<'a> GgufFile<'a> {
    /// Parses the header, metadata and tensor table of a GGUF file and checks that every tensor's
    /// data lies inside `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut c = Cursor { bytes, pos: 0 };
        let magic = c.take(4, &|| "the magic number".into())?;
        if magic != b"GGUF" {
            return Err(err(format!(
                "bad magic {:?} (expected \"GGUF\"): not a GGUF file",
                String::from_utf8_lossy(magic)
            )));
        }
        let version = c.u32(&|| "the header (version)".into())?;
        match version {
            2 | 3 => {}
            1 => return Err(err("unsupported GGUF version 1 (only versions 2 and 3 are read)")),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(err(format!("big-endian GGUF (version {}) is not supported", v.swap_bytes())))
            }
            v => return Err(err(format!("unsupported GGUF version {v} (only versions 2 and 3 are read)"))),
        }
        let n_tensors = c.u64(&|| "the header (tensor count)".into())?;
        let n_kv = c.u64(&|| "the header (metadata count)".into())?;
        // Every key/value takes at least 13 bytes and every tensor info 24.
        if n_kv > (c.remaining() / 13) as u64 {
            return Err(err(format!(
                "metadata count {n_kv} is impossible: the file has {} bytes after the header (corrupt header)",
                c.remaining()
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::new();
        for i in 0..n_kv as usize {
            let key = c.string(&|| format!("metadata key {i} of {n_kv}"))?;
            let id = c.u32(&|| format!("type of metadata {key:?}"))?;
            let ty = ValueType::from_id(id).ok_or_else(|| err(format!("metadata {key:?} has an unknown value type {id}")))?;
            let value = c.value(ty, 0, &|| format!("metadata {key:?}"))?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(err(format!("metadata key {key:?} appears twice")));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 30 => a as usize,
                _ => return Err(err(format!("general.alignment must be a power of two, got {}", v.describe()))),
            },
        };

        let tensor_table_offset = c.pos;
        if n_tensors > (c.remaining() / 24) as u64 {
            return Err(err(format!(
                "tensor count {n_tensors} is impossible: only {} bytes follow the metadata (corrupt header or truncated tensor table)",
                c.remaining()
            )));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::new();
        for i in 0..n_tensors as usize {
            let at = || format!("tensor table entry {i} of {n_tensors}");
            let name = c.string(&|| format!("name of {}", at()))?;
            let n_dims = c.u32(&|| format!("n_dims of tensor {name:?} ({})", at()))? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(format!("tensor {name:?} has {n_dims} dimensions (expected 1 to {MAX_DIMS})")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for d in 0..n_dims {
                let ne = c.u64(&|| format!("dimension {d} of tensor {name:?} ({})", at()))?;
                let ne = usize::try_from(ne)
                    .ok()
                    .filter(|&n| n <= i64::MAX as usize)
                    .ok_or_else(|| err(format!("tensor {name:?} dimension {d} is {ne}, too large")))?;
                dims.push(ne);
            }
            let type_id = c.u32(&|| format!("type of tensor {name:?} ({})", at()))?;
            let ggml_type = GgmlType::from_id(type_id)
                .ok_or_else(|| err(format!("tensor {name:?} has an unknown ggml type {type_id}")))?;
            let offset = c.u64(&|| format!("data offset of tensor {name:?} ({})", at()))?;

            let n_elements = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| err(format!("tensor {name:?} shape {dims:?} overflows the element count")))?;
            let (block, block_bytes) = ggml_type.block();
            if dims[0] % block != 0 {
                return Err(err(format!(
                    "tensor {name:?}: row length {} is not a multiple of the {ggml_type} block size {block}",
                    dims[0]
                )));
            }
            let n_bytes = (n_elements / block)
                .checked_mul(block_bytes)
                .ok_or_else(|| err(format!("tensor {name:?} shape {dims:?} overflows the byte size")))?;
            let offset = usize::try_from(offset)
                .map_err(|_| err(format!("tensor {name:?} data offset {offset} is out of range")))?;
            if offset % alignment != 0 {
                return Err(err(format!(
                    "tensor {name:?} data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(err(format!("tensor {name:?} appears twice in the tensor table")));
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset, n_elements, n_bytes });
        }

        let data_offset = align_up(c.pos, alignment).ok_or_else(|| err("data section offset overflows"))?;
        for t in &tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match end {
                Some(end) if end <= bytes.len() => {}
                _ => {
                    return Err(err(format!(
                        "tensor {:?} data out of bounds: offset {} + {} bytes in the data section starting at {} ends past the end of the file ({} bytes; truncated or corrupt)",
                        t.name,
                        t.offset,
                        t.n_bytes,
                        data_offset,
                        bytes.len()
                    )))
                }
            }
        }
        Ok(Self { bytes, version, metadata, meta_index, tensors, tensor_index, alignment, tensor_table_offset, data_offset })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Byte offset where the tensor table starts (right after the metadata).
    pub fn tensor_table_offset(&self) -> usize {
        self.tensor_table_offset
    }

    /// Byte offset of the data section (the tensor table's end padded to the alignment).
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Every metadata key/value pair, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A metadata string; `Ok(None)` when absent, an error when of another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// A non-negative integer of any width; `Ok(None)` when absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    /// A float (or integer); `Ok(None)` when absent.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", Value::as_bool)
    }

    /// An array of strings; `Ok(None)` when absent.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(items) = self.typed(key, "an array of strings", Value::as_array)? else { return Ok(None) };
        items
            .iter()
            .map(|v| v.as_str().ok_or_else(|| err(format!("metadata {key:?} must be an array of strings"))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of integers; `Ok(None)` when absent.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(items) = self.typed(key, "an array of integers", Value::as_array)? else { return Ok(None) };
        items
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| err(format!("metadata {key:?} must be an array of integers"))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn typed<'s, T>(&'s self, key: &str, what: &str, f: impl Fn(&'s Value) -> Option<T>) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| err(format!("metadata {key:?} must be {what}, found {}", v.describe()))),
        }
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of a tensor.
    pub fn tensor_data(&self, name: &str) -> Result<&'a [u8]> {
        let t = self.tensor(name).ok_or_else(|| err(format!("no tensor {name:?} in the file")))?;
        let start = self.data_offset + t.offset;
        Ok(&self.bytes[start..start + t.n_bytes])
    }

    /// The tensor dequantized to f32, row-major in [`TensorInfo::shape`] order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name).ok_or_else(|| err(format!("no tensor {name:?} in the file")))?;
        super::dequant::dequantize(t.ggml_type, self.tensor_data(name)?, t.n_elements)
            .map_err(|e| err(format!("tensor {name:?}: {e}")))
    }
}
