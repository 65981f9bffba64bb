//! A small GGUF v3 writer: enough to build test files (and to export tensors as GGUF).

use super::reader::{Value, ValueType, DEFAULT_ALIGNMENT};
use super::types::GgmlType;

/// A tensor to write: `dims` in ggml order (innermost first), `data` already in `ggml_type`.
#[derive(Debug, Clone)]
pub struct WriteTensor {
    pub name: String,
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    pub data: Vec<u8>,
}

impl WriteTensor {
    /// An F32 tensor of PyTorch `shape` (outermost first).
    pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> Self {
        Self {
            name: name.into(),
            dims: shape.iter().rev().copied().collect(),
            ggml_type: GgmlType::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Raw blocks of `ggml_type` for PyTorch `shape`.
    pub fn raw(name: &str, shape: &[usize], ggml_type: GgmlType, data: Vec<u8>) -> Self {
        Self { name: name.into(), dims: shape.iter().rev().copied().collect(), ggml_type, data }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(t, items) => {
            out.extend(t.id().to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// An array value of strings.
pub fn str_array<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(ValueType::String, items.iter().map(|s| Value::String(s.as_ref().to_string())).collect())
}

/// Serializes a GGUF v3 file. Tensor data is laid out in order, each padded to the alignment
/// (`general.alignment` when given as an integer, else 32).
pub fn write_gguf(metadata: &[(String, Value)], tensors: &[WriteTensor]) -> Vec<u8> {
    let alignment = metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .filter(|a| *a > 0)
        .unwrap_or(DEFAULT_ALIGNMENT as u64) as usize;
    let pad = |n: usize| n.div_ceil(alignment) * alignment;
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key);
        out.extend(value.value_type().id().to_le_bytes());
        put_value(&mut out, value);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(t.ggml_type.id().to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offset = pad(offset + t.data.len());
    }
    out.resize(pad(out.len()), 0);
    for t in tensors {
        out.extend(&t.data);
        out.resize(pad(out.len()), 0);
    }
    out
}
