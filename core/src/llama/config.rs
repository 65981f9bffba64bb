use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The fields of a Hugging Face Llama `config.json` that the forward pass needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    fn base(hidden: usize, inter: usize, layers: usize, heads: usize, kv: usize, vocab: usize) -> Self {
        Self {
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv),
            vocab_size: vocab,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            head_dim: None,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: "silu".into(),
            max_position_embeddings: Some(4096),
            bos_token_id: Some(1),
            eos_token_id: None,
            pad_token_id: None,
        }
    }

    /// DeepSeek-LLM 1.3B, the language model of JanusFlow-1.3B.
    pub fn deepseek_llm_1_3b() -> Self {
        Self { bos_token_id: Some(100000), ..Self::base(2048, 5632, 24, 16, 16, 102400) }
    }

    /// TinyLlama-1.1B.
    pub fn tinyllama_1_1b() -> Self {
        Self { rms_norm_eps: 1e-5, ..Self::base(2048, 5632, 22, 32, 4, 32000) }
    }

    /// SmolLM2-135M(-Instruct).
    pub fn smollm2_135m() -> Self {
        Self {
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            tie_word_embeddings: true,
            max_position_embeddings: Some(8192),
            ..Self::base(576, 1536, 30, 9, 3, 49152)
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn validate(&self, path: &str) -> Result<()> {
        let bad = |m: String| Err(Error::config(path, m));
        if self.hidden_size == 0 || self.num_hidden_layers == 0 || self.num_attention_heads == 0 {
            return bad("hidden_size, num_hidden_layers and num_attention_heads must be positive".into());
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.kv_heads() == 0 || self.num_attention_heads % self.kv_heads() != 0 {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim()));
        }
        if self.hidden_act != "silu" {
            return bad(format!("hidden_act {:?} is not supported (only silu)", self.hidden_act));
        }
        Ok(())
    }
}
