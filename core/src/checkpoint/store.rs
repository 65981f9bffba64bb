use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Element type of a stored tensor. Floats are widened to f32 when a module is built; I8/U8 hold
/// quantized weight codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
    I8,
    U8,
    Other(&'static str),
}

impl StoredDtype {
    pub fn name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "F32",
            StoredDtype::F16 => "F16",
            StoredDtype::BF16 => "BF16",
            StoredDtype::I8 => "I8",
            StoredDtype::U8 => "U8",
            StoredDtype::Other(d) => d,
        }
    }

    pub fn size(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::BF16 => 2,
            StoredDtype::I8 | StoredDtype::U8 => 1,
            StoredDtype::Other(_) => 0,
        }
    }

    pub fn safetensors(self) -> Option<Dtype> {
        Some(match self {
            StoredDtype::F32 => Dtype::F32,
            StoredDtype::F16 => Dtype::F16,
            StoredDtype::BF16 => Dtype::BF16,
            StoredDtype::I8 => Dtype::I8,
            StoredDtype::U8 => Dtype::U8,
            StoredDtype::Other(_) => return None,
        })
    }
}

#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: StoredDtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone)]
struct Blob {
    bytes: Vec<u8>,
    data_start: usize,
}

/// Named tensors from one or more safetensors files (shards), kept as stored bytes until a
/// module asks for them.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    files: Vec<Blob>,
    index: BTreeMap<String, Entry>,
}

fn dtype_of(d: Dtype) -> StoredDtype {
    match d {
        Dtype::F32 => StoredDtype::F32,
        Dtype::F16 => StoredDtype::F16,
        Dtype::BF16 => StoredDtype::BF16,
        Dtype::I8 => StoredDtype::I8,
        Dtype::U8 => StoredDtype::U8,
        Dtype::F64 => StoredDtype::Other("F64"),
        Dtype::I64 => StoredDtype::Other("I64"),
        Dtype::I32 => StoredDtype::Other("I32"),
        Dtype::I16 => StoredDtype::Other("I16"),
        Dtype::BOOL => StoredDtype::Other("BOOL"),
        _ => StoredDtype::Other("unknown"),
    }
}

/// Widens stored float bytes to f32.
pub fn decode_f32(raw: &[u8], dtype: StoredDtype) -> std::result::Result<Vec<f32>, String> {
    match dtype {
        StoredDtype::F32 => Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        StoredDtype::F16 => {
            Ok(raw.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect())
        }
        StoredDtype::BF16 => {
            Ok(raw.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect())
        }
        other => Err(other.name().to_string()),
    }
}

/// Narrows f32 values to a stored float type.
pub fn encode_f32(values: &[f32], dtype: StoredDtype) -> Vec<u8> {
    match dtype {
        StoredDtype::F16 => values.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        StoredDtype::BF16 => values.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

impl Weights {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one safetensors file (or shard); `source` names it in errors.
    pub fn from_safetensors(source: &str, bytes: Vec<u8>) -> Result<Self> {
        let mut w = Self::new();
        w.add_safetensors(source, bytes)?;
        Ok(w)
    }

    /// Adds the tensors of one safetensors file. A tensor name present twice is an error.
    pub fn add_safetensors(&mut self, source: &str, bytes: Vec<u8>) -> Result<()> {
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            let why = match e {
                safetensors::SafeTensorError::MetadataIncompleteBuffer
                | safetensors::SafeTensorError::HeaderTooSmall
                | safetensors::SafeTensorError::InvalidHeaderLength => {
                    format!("truncated or corrupt safetensors file ({} bytes): {e:?}", bytes.len())
                }
                other => format!("not a valid safetensors file: {other:?}"),
            };
            Error::checkpoint(source, why)
        })?;
        let file = self.files.len();
        for (name, info) in metadata.tensors() {
            if self.index.contains_key(&name) {
                return Err(Error::checkpoint(source, format!("tensor {name} is stored twice")));
            }
            let (start, end) = info.data_offsets;
            self.index.insert(name, Entry { file, dtype: dtype_of(info.dtype), shape: info.shape.clone(), start, end });
        }
        self.files.push(Blob { bytes, data_start: 8 + header_len });
        Ok(())
    }

    /// Adds (or replaces) a tensor held in memory as raw little-endian bytes.
    pub fn insert_raw(&mut self, name: &str, dtype: StoredDtype, shape: Vec<usize>, bytes: Vec<u8>) {
        assert_eq!(shape.iter().product::<usize>() * dtype.size(), bytes.len(), "insert_raw {name}: shape/len mismatch");
        let file = self.files.len();
        let end = bytes.len();
        self.files.push(Blob { bytes, data_start: 0 });
        self.index.insert(name.to_string(), Entry { file, dtype, shape, start: 0, end });
    }

    /// Adds (or replaces) an f32 tensor held in memory.
    pub fn insert_f32(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        self.insert_raw(name, StoredDtype::F32, shape, encode_f32(&values, StoredDtype::F32));
    }

    pub fn remove(&mut self, name: &str) {
        self.index.remove(name);
    }

    /// Joins tensors stored in row blocks (`parts`, split along dim 0) into `name`.
    pub fn join_parts(&mut self, name: &str, parts: &[String]) -> Result<()> {
        let mut bytes = Vec::new();
        let mut shape: Option<Vec<usize>> = None;
        let mut dtype = None;
        for p in parts {
            let e = self.index.get(p).ok_or_else(|| Error::checkpoint(name, format!("part {p} is missing")))?;
            match (&mut shape, dtype) {
                (None, _) => {
                    shape = Some(e.shape.clone());
                    dtype = Some(e.dtype);
                }
                (Some(s), Some(d)) if d == e.dtype && s[1..] == e.shape[1..] => s[0] += e.shape[0],
                _ => return Err(Error::checkpoint(name, format!("part {p} does not match the others"))),
            }
            bytes.extend_from_slice(self.raw(p).expect("indexed"));
        }
        let (Some(shape), Some(dtype)) = (shape, dtype) else {
            return Err(Error::checkpoint(name, "split tensor without parts"));
        };
        for p in parts {
            self.index.remove(p);
        }
        self.insert_raw(name, dtype, shape, bytes);
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|e| e.shape.as_slice())
    }

    pub fn dtype(&self, name: &str) -> Option<StoredDtype> {
        self.index.get(name).map(|e| e.dtype)
    }

    /// The stored bytes of a tensor.
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        let e = self.index.get(name)?;
        let f = &self.files[e.file];
        Some(&f.bytes[f.data_start + e.start..f.data_start + e.end])
    }

    /// The tensor widened to f32 (row-major), or `None` if absent. Errors on non-float dtypes.
    pub fn read_f32(&self, name: &str) -> Option<std::result::Result<Vec<f32>, String>> {
        let e = self.index.get(name)?;
        Some(decode_f32(self.raw(name)?, e.dtype))
    }

    /// Serializes the named tensors as stored (or all, when `names` is None).
    pub fn to_safetensors(&self, names: Option<&[String]>) -> Result<Vec<u8>> {
        let all: Vec<String> = match names {
            Some(n) => n.to_vec(),
            None => self.index.keys().cloned().collect(),
        };
        let mut views = Vec::with_capacity(all.len());
        for n in &all {
            let e = self.index.get(n).ok_or_else(|| Error::checkpoint(n.as_str(), "no such tensor"))?;
            let dtype = e.dtype.safetensors().ok_or_else(|| Error::checkpoint(n.as_str(), "cannot write this dtype"))?;
            let view = safetensors::tensor::TensorView::new(dtype, e.shape.clone(), self.raw(n).expect("indexed"))
                .map_err(|err| Error::checkpoint(n.as_str(), format!("{err:?}")))?;
            views.push((n.clone(), view));
        }
        safetensors::serialize(views, None).map_err(|e| Error::checkpoint("output", format!("{e:?}")))
    }

    /// All tensors as one f32 safetensors file.
    pub fn to_safetensors_f32(&self) -> Result<Vec<u8>> {
        let mut f32s = Weights::new();
        for name in self.index.keys() {
            match self.read_f32(name).expect("indexed") {
                Ok(v) => f32s.insert_f32(name, self.index[name].shape.clone(), v),
                Err(d) => return Err(Error::checkpoint(name.as_str(), format!("cannot write dtype {d} as f32"))),
            }
        }
        f32s.to_safetensors(None)
    }
}
