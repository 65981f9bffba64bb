use burn::module::Module;
use burn::tensor::{activation::silu, backend::Backend, Bool, Int, Tensor};

use super::{attention_mask, Attention, KvCache, LlamaConfig, Rope};
use crate::checkpoint::{VarBuilder, Weights};
use crate::error::Result;
use crate::layers::{Embedding, Linear, RmsNorm};

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn load(vb: &VarBuilder<B>, c: &LlamaConfig) -> Self {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Self {
            gate_proj: Linear::load(&vb.pp("gate_proj"), h, i, c.mlp_bias),
            up_proj: Linear::load(&vb.pp("up_proj"), h, i, c.mlp_bias),
            down_proj: Linear::load(&vb.pp("down_proj"), i, h, c.mlp_bias),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj.forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    pub fn load(vb: &VarBuilder<B>, c: &LlamaConfig) -> Self {
        Self {
            input_layernorm: RmsNorm::load(&vb.pp("input_layernorm"), c.hidden_size, c.rms_norm_eps),
            self_attn: Attention::load(&vb.pp("self_attn"), c),
            post_attention_layernorm: RmsNorm::load(&vb.pp("post_attention_layernorm"), c.hidden_size, c.rms_norm_eps),
            mlp: Mlp::load(&vb.pp("mlp"), c),
        }
    }

    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: (&Tensor<B, 4>, &Tensor<B, 4>),
        mask: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), rope, mask, cache);
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

/// Output of a forward pass.
#[derive(Debug, Clone)]
pub struct LlamaOutput<B: Backend> {
    /// After the final RMSNorm, `[b, t, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// When requested: the input embeddings followed by every decoder layer's output (before the
    /// final norm), `num_hidden_layers + 1` entries.
    pub layer_outputs: Vec<Tensor<B, 3>>,
}

/// The Llama decoder (`model.*` keys) with an optional LM head.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `None` when the head is tied to `embed_tokens` (or not loaded).
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub config: LlamaConfig,
}

impl<B: Backend> Llama<B> {
    /// Loads `model.*` from `vb` and, unless tied or `with_head` is false, `lm_head.weight`.
    pub fn load(vb: &VarBuilder<B>, c: &LlamaConfig, with_head: bool) -> Self {
        let m = vb.pp("model");
        let layers = (0..c.num_hidden_layers).map(|i| DecoderLayer::load(&m.pp("layers").pp(i), c)).collect();
        let lm_head = (with_head && !c.tie_word_embeddings)
            .then(|| Linear::load(&vb.pp("lm_head"), c.hidden_size, c.vocab_size, false));
        Self {
            embed_tokens: Embedding::load(&m.pp("embed_tokens"), c.vocab_size, c.hidden_size),
            layers,
            norm: RmsNorm::load(&m.pp("norm"), c.hidden_size, c.rms_norm_eps),
            lm_head,
            config: c.clone(),
        }
    }

    /// A standalone HF Llama checkpoint (`model.*`, `lm_head.weight` unless tied).
    pub fn from_weights(weights: &Weights, c: &LlamaConfig, device: &B::Device) -> Result<Self> {
        let vb = VarBuilder::<B>::new(weights, device);
        let model = Self::load(&vb, c, true);
        vb.finish(&[])?;
        Ok(model)
    }

    pub fn rope(&self) -> Rope {
        Rope::new(self.config.head_dim(), self.config.rope_theta)
    }

    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed_tokens.forward(ids)
    }

    /// Runs the decoder on `embeds: [b, t, hidden]` at positions `cache.len()..` (0.. without a
    /// cache). `mask` is `[b, 1, t, past + t]` with true = blocked (see [`attention_mask`]);
    /// `None` means causal only. With `collect`, every layer's output is returned too.
    pub fn forward_embeds(
        &self,
        embeds: Tensor<B, 3>,
        mask: Option<Tensor<B, 4, Bool>>,
        mut cache: Option<&mut KvCache<B>>,
        collect: bool,
    ) -> LlamaOutput<B> {
        let [b, t, _] = embeds.dims();
        let device = embeds.device();
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let mask = mask.unwrap_or_else(|| attention_mask(None, b, past, t, &device));
        let (cos, sin) = self.rope().tables::<B>(past, t, &device);
        let mut layer_outputs = Vec::new();
        let mut x = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            if collect {
                layer_outputs.push(x.clone());
            }
            x = layer.forward(x, (&cos, &sin), &mask, cache.as_deref_mut().map(|c| (c, i)));
        }
        if collect {
            layer_outputs.push(x.clone());
        }
        LlamaOutput { last_hidden_state: self.norm.forward(x), layer_outputs }
    }

    /// Logits `[b, t, vocab]` from final hidden states (tied head uses the embedding table).
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(self.embed_tokens.table().transpose().unsqueeze()),
        }
    }
}
