//! GGUF (llama.cpp / ggml) checkpoints: a reader over bytes in memory, dequantization to f32, and
//! the mapping of a Llama GGUF (e.g. SmolLM2) to rfgen's Llama weights, config and tokenizer.
//!
//! ```ignore
//! let bytes = std::fs::read("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let file = GgufFile::parse(&bytes)?;
//! let (config, weights) = llama_weights(&file, None)?;
//! let llm = Llama::<B>::from_weights(&weights, &config, &device)?;
//! let tok = tokenizer(&file)?;
//! ```

mod delta;
mod dequant;
mod llama;
mod reader;
mod tokenizer;
mod types;
mod writer;

pub use delta::{apply_llm_delta, has_delta, llm_delta, DELTA, DELTA_ROWS, DELTA_ROW_IDS};
pub use dequant::dequantize;
pub use llama::{hf_llama_name, llama_config, llama_weights, reverse_permute_rows};
pub use reader::{GgufFile, TensorInfo, Value, ValueType, DEFAULT_ALIGNMENT, MAX_DIMS};
pub use tokenizer::{tokenizer, tokenizer_json, GgufTokenizer};
pub use types::GgmlType;
pub use writer::{str_array, write_gguf, WriteTensor};

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(v, (0..32).map(|i| (i - 16) as f32 * 0.5).collect::<Vec<_>>());
    }

    #[test]
    fn q4_blocks() {
        let qs: Vec<u8> = (0..16).map(|j| (j as u8) | (((15 - j) as u8) << 4)).collect();
        let q = |i: usize| if i < 16 { i as f32 } else { (15 - (i - 16)) as f32 };
        let mut b = [h(0.25), h(-1.0)].concat();
        b.extend(&qs);
        let v = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(v, (0..32).map(|i| q(i) * 0.25 - 1.0).collect::<Vec<_>>());
        let mut b = h(0.25).to_vec();
        b.extend(&qs);
        let v = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(v, (0..32).map(|i| (q(i) - 8.0) * 0.25).collect::<Vec<_>>());
    }

    #[test]
    fn q5_blocks() {
        let qs: Vec<u8> = (0..16).map(|j| (j as u8) | (((15 - j) as u8) << 4)).collect();
        let qh: u32 = 0b1010_0000_1111_0000_0101_0101_0000_1111;
        let q = |i: usize| {
            let low = if i < 16 { i as u32 } else { 15 - (i as u32 - 16) };
            (low | (((qh >> i) & 1) << 4)) as f32
        };
        let mut b = h(0.5).to_vec();
        b.extend(qh.to_le_bytes());
        b.extend(&qs);
        let v = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!(v, (0..32).map(|i| (q(i) - 16.0) * 0.5).collect::<Vec<_>>());
        let mut b = [h(0.5), h(2.0)].concat();
        b.extend(qh.to_le_bytes());
        b.extend(&qs);
        let v = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        assert_eq!(v, (0..32).map(|i| q(i) * 0.5 + 2.0).collect::<Vec<_>>());
    }

    #[test]
    fn reverse_permute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)
        let (n_head, rows, cols) = (3, 12, 2);
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let half = rows / n_head / 2;
        let mut permuted = vec![0f32; hf.len()];
        for hd in 0..n_head {
            for s in 0..2 {
                for i in 0..half {
                    let src = (hd * 2 + s) * half + i;
                    let dst = (hd * half + i) * 2 + s;
                    permuted[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(reverse_permute_rows(&permuted, rows, n_head).unwrap(), hf);
    }

    #[test]
    fn round_trip_metadata_and_tensors() {
        let meta = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("a.u8".to_string(), Value::U8(7)),
            ("a.i64".to_string(), Value::I64(-5)),
            ("a.f64".to_string(), Value::F64(0.5)),
            ("a.bool".to_string(), Value::Bool(true)),
            ("a.strs".to_string(), str_array(&["x", "y z"])),
            ("a.nested".to_string(), Value::Array(ValueType::Array, vec![Value::Array(ValueType::I16, vec![Value::I16(-2)])])),
        ];
        let t = WriteTensor::f32("w", &[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let bytes = write_gguf(&meta, &[t, WriteTensor::f32("b", &[4], &[9.; 4])]);
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.metadata().len(), meta.len());
        for (k, v) in &meta {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert_eq!(f.get_str_array("a.strs").unwrap().unwrap(), vec!["x", "y z"]);
        assert_eq!(f.tensor("w").unwrap().dims, vec![3, 2]);
        assert_eq!(f.tensor("w").unwrap().shape(), vec![2, 3]);
        assert_eq!(f.tensor_f32("w").unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(f.tensor_f32("b").unwrap(), vec![9.; 4]);
        assert_eq!(f.data_offset() % 32, 0);
        assert!(f.get_u64("a.i64").is_err());
    }
}
