use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Element type of a stored tensor. Everything is widened to f32 when a module is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    BF16,
    Other(&'static str),
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
enum Bytes {
    /// A whole safetensors file and the offset of its data section.
    File { source: String, bytes: Vec<u8>, data_start: usize },
    /// Tensors created in memory (random init, conversion).
    Owned { values: Vec<f32> },
}

/// Named tensors from one or more safetensors files (shards), kept as stored bytes until a
/// module asks for them.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    files: Vec<Bytes>,
    index: BTreeMap<String, Entry>,
}

fn dtype_of(d: Dtype) -> StoredDtype {
    match d {
        Dtype::F32 => StoredDtype::F32,
        Dtype::F16 => StoredDtype::F16,
        Dtype::BF16 => StoredDtype::BF16,
        Dtype::F64 => StoredDtype::Other("F64"),
        Dtype::I64 => StoredDtype::Other("I64"),
        Dtype::I32 => StoredDtype::Other("I32"),
        Dtype::I16 => StoredDtype::Other("I16"),
        Dtype::I8 => StoredDtype::Other("I8"),
        Dtype::U8 => StoredDtype::Other("U8"),
        Dtype::BOOL => StoredDtype::Other("BOOL"),
        _ => StoredDtype::Other("unknown"),
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
            self.index.insert(
                name,
                Entry { file, dtype: dtype_of(info.dtype), shape: info.shape.clone(), start, end },
            );
        }
        self.files.push(Bytes::File { source: source.to_string(), bytes, data_start: 8 + header_len });
        Ok(())
    }

    /// Adds (or replaces) an f32 tensor held in memory.
    pub fn insert_f32(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "insert_f32 {name}: shape/len mismatch");
        let file = self.files.len();
        let end = values.len() * 4;
        self.files.push(Bytes::Owned { values });
        self.index.insert(name.to_string(), Entry { file, dtype: StoredDtype::F32, shape, start: 0, end });
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

    /// The tensor widened to f32 (row-major), or `None` if absent. Errors on non-float dtypes.
    pub fn read_f32(&self, name: &str) -> Option<std::result::Result<Vec<f32>, String>> {
        let e = self.index.get(name)?;
        Some(match &self.files[e.file] {
            Bytes::Owned { values } => Ok(values.clone()),
            Bytes::File { bytes, data_start, .. } => {
                let raw = &bytes[data_start + e.start..data_start + e.end];
                match e.dtype {
                    StoredDtype::F32 => {
                        Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                    }
                    StoredDtype::F16 => Ok(raw
                        .chunks_exact(2)
                        .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                        .collect()),
                    StoredDtype::BF16 => Ok(raw
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                        .collect()),
                    StoredDtype::Other(d) => Err(d.to_string()),
                }
            }
        })
    }

    /// All tensors as one f32 safetensors file.
    pub fn to_safetensors_f32(&self) -> Result<Vec<u8>> {
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(self.index.len());
        for (name, e) in &self.index {
            let values = match self.read_f32(name).expect("indexed") {
                Ok(v) => v,
                Err(d) => return Err(Error::checkpoint(name.as_str(), format!("cannot write dtype {d} as f32"))),
            };
            data.push((name.clone(), e.shape.clone(), values.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
        let views = data.iter().map(|(n, shape, bytes)| {
            (n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).expect("consistent view"))
        });
        safetensors::serialize(views, None).map_err(|e| Error::checkpoint("output", format!("{e:?}")))
    }

    /// Where a tensor came from (file name), for messages.
    pub fn source_of(&self, name: &str) -> Option<&str> {
        let e = self.index.get(name)?;
        match &self.files[e.file] {
            Bytes::File { source, .. } => Some(source),
            Bytes::Owned { .. } => Some("memory"),
        }
    }
}
