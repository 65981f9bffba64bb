use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use super::{JanusFlowConfig, ShallowUViTDecoder, ShallowUViTEncoder};
use crate::checkpoint::{VarBuilder, Weights};
use crate::error::Result;
use crate::layers::{Linear, RmsNorm};
use crate::llama::{attention_mask, Llama};
use crate::sampler::{PromptBatch, VelocityModel};

/// Checkpoint tensors of the released model that text-to-image does not use.
pub const UNUSED_PREFIXES: [&str; 4] = [
    "language_model.lm_head.",
    "vision_und_enc_model.",
    "vision_und_enc_aligner.",
    "beg_of_und_embed",
];

#[derive(Module, Debug)]
pub struct JanusFlow<B: Backend> {
    pub language_model: Llama<B>,
    pub vision_gen_enc_model: ShallowUViTEncoder<B>,
    pub vision_gen_enc_aligner: Linear<B>,
    pub vision_gen_dec_aligner_norm: RmsNorm<B>,
    pub vision_gen_dec_aligner: Linear<B>,
    pub vision_gen_dec_model: ShallowUViTDecoder<B>,
    #[module(skip)]
    pub config: JanusFlowConfig,
}

/// Intermediates of one velocity evaluation, recorded for parity tests and debugging.
#[derive(Debug, Clone)]
pub struct StepTrace<B: Backend> {
    pub t_emb: Tensor<B, 2>,
    pub enc_z_emb: Tensor<B, 4>,
    pub enc_tokens: Tensor<B, 3>,
    pub llm_inputs_embeds: Tensor<B, 3>,
    pub llm_last_hidden: Tensor<B, 3>,
    pub dec_input: Tensor<B, 4>,
}

/// Per-prompt conditioning, prepared once per generation: prefix embeddings `[2B, P, H]` and the
/// key-visibility mask over the whole sequence.
#[derive(Debug, Clone)]
pub struct JanusFlowCond<B: Backend> {
    pub prefix: Tensor<B, 3>,
    pub key_visible: Vec<Vec<bool>>,
    mask: Option<(usize, Tensor<B, 4, Bool>)>,
}

impl<B: Backend> JanusFlow<B> {
    /// Builds the model from a checkpoint; every missing, misshapen, non-finite or unexpected
    /// tensor is reported by name.
    pub fn load(weights: &Weights, config: &JanusFlowConfig, device: &B::Device) -> Result<Self> {
        let vb = VarBuilder::<B>::new(weights, device);
        let model = Self::build(&vb, config);
        vb.finish(&UNUSED_PREFIXES)?;
        Ok(model)
    }

    pub fn build(vb: &VarBuilder<B>, c: &JanusFlowConfig) -> Self {
        let (h, enc, dec) = (c.language_config.hidden_size, c.encoder(), c.decoder());
        Self {
            language_model: Llama::load(&vb.pp("language_model"), &c.language_config, false),
            vision_gen_enc_model: ShallowUViTEncoder::load(&vb.pp("vision_gen_enc_model"), enc),
            vision_gen_enc_aligner: Linear::load(&vb.pp("vision_gen_enc_aligner"), enc.channels(), h, true),
            vision_gen_dec_aligner_norm: RmsNorm::load(
                &vb.pp("vision_gen_dec_aligner_norm"),
                h,
                c.language_config.rms_norm_eps,
            ),
            vision_gen_dec_aligner: Linear::load(&vb.pp("vision_gen_dec_aligner"), h, dec.in_channels, true),
            vision_gen_dec_model: ShallowUViTDecoder::load(&vb.pp("vision_gen_dec_model"), dec),
            config: c.clone(),
        }
    }

    /// One velocity evaluation on the doubled batch `z: [2B, c, h, w]` at times `t` (0..1000).
    pub fn velocity_traced(
        &self,
        z: Tensor<B, 4>,
        t: &[f32],
        cond: &mut JanusFlowCond<B>,
        trace: Option<&mut Option<StepTrace<B>>>,
    ) -> Tensor<B, 4> {
        let device = z.device();
        let t_emb = self.vision_gen_enc_model.time_embedding(t, &device);
        let z_emb = self.vision_gen_enc_model.forward(z, t_emb.clone());
        let [b, c, gh, gw] = z_emb.dims();
        let n_img = gh * gw;
        let tokens = z_emb.clone().reshape([b, c, n_img]).swap_dims(1, 2);
        let tokens = self.vision_gen_enc_aligner.forward(tokens);
        let inputs = Tensor::cat(vec![cond.prefix.clone(), t_emb.clone().unsqueeze_dim(1), tokens.clone()], 1);
        let seq = inputs.dims()[1];
        let mask = match &cond.mask {
            Some((len, m)) if *len == seq => m.clone(),
            _ => {
                let visible: Vec<Vec<bool>> = cond
                    .key_visible
                    .iter()
                    .map(|row| row.iter().copied().chain(std::iter::repeat(true)).take(seq).collect())
                    .collect();
                let m = attention_mask::<B>(Some(&visible), b, 0, seq, &device);
                cond.mask = Some((seq, m.clone()));
                m
            }
        };
        let hidden = self.language_model.forward_embeds(inputs.clone(), Some(mask), None, false).last_hidden_state;
        let h = hidden.dims()[2];
        let img = hidden.clone().slice([0..b, seq - n_img..seq, 0..h]);
        let img = self.vision_gen_dec_aligner.forward(self.vision_gen_dec_aligner_norm.forward(img));
        let dec_in = img.swap_dims(1, 2).reshape([b, c, gh, gw]);
        let v = self.vision_gen_dec_model.forward(dec_in.clone(), z_emb.clone(), t_emb.clone());
        if let Some(slot) = trace {
            *slot = Some(StepTrace {
                t_emb,
                enc_z_emb: z_emb,
                enc_tokens: tokens,
                llm_inputs_embeds: inputs,
                llm_last_hidden: hidden,
                dec_input: dec_in,
            });
        }
        v
    }
}

impl<B: Backend> VelocityModel<B> for JanusFlow<B> {
    type Cond = JanusFlowCond<B>;

    fn latent_channels(&self) -> usize {
        self.config.latent_channels()
    }

    fn patch_size(&self) -> usize {
        self.config.patch_size()
    }

    fn vocab_size(&self) -> usize {
        self.config.language_config.vocab_size
    }

    fn max_sequence(&self) -> Option<usize> {
        self.config.language_config.max_position_embeddings
    }

    fn prepare(&self, batch: &PromptBatch, device: &B::Device) -> Self::Cond {
        let (rows, p) = (batch.ids.len(), batch.prefix_len());
        let flat: Vec<i64> = batch.ids.iter().flat_map(|r| r[..p].iter().map(|&x| x as i64)).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [rows, p]), device);
        JanusFlowCond { prefix: self.language_model.embed(ids), key_visible: batch.prefix_visible.clone(), mask: None }
    }

    fn velocity(&self, z: Tensor<B, 4>, t: &[f32], cond: &mut Self::Cond) -> Tensor<B, 4> {
        self.velocity_traced(z, t, cond, None)
    }
}
