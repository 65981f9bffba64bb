use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use super::pooled_text::{mean_pooled, prompt_body, PooledTextEmbed};
use super::{DecoderConfig, EncoderConfig, GeneratorConfig, MmditEncoder, SingleStreamDecoder};
use crate::checkpoint::{VarBuilder, Weights};
use crate::error::Result;
use crate::janusflow::{ShallowUViTDecoder, ShallowUViTEncoder};
use crate::layers::{Linear, RmsNorm};
use crate::llama::{attention_mask, KvCache, Llama};
use crate::sampler::{PromptBatch, VelocityModel};

/// Checkpoint tensors of the released JanusFlow that text-to-image does not use.
pub const UNUSED_PREFIXES: [&str; 4] =
    ["language_model.lm_head.", "vision_und_enc_model.", "vision_und_enc_aligner.", "beg_of_und_embed"];

/// JanusFlow's encoder: `vision_gen_enc_model.*` + `vision_gen_enc_aligner`.
#[derive(Module, Debug)]
pub struct UvitEncoderArm<B: Backend> {
    pub vision_gen_enc_model: ShallowUViTEncoder<B>,
    pub vision_gen_enc_aligner: Linear<B>,
}

/// JanusFlow's decoder: `vision_gen_dec_aligner_norm`, `vision_gen_dec_aligner`, `vision_gen_dec_model.*`.
#[derive(Module, Debug)]
pub struct UvitDecoderArm<B: Backend> {
    pub vision_gen_dec_aligner_norm: RmsNorm<B>,
    pub vision_gen_dec_aligner: Linear<B>,
    pub vision_gen_dec_model: ShallowUViTDecoder<B>,
}

#[derive(Module, Debug)]
pub enum GenEncoder<B: Backend> {
    Uvit(UvitEncoderArm<B>),
    Mmdit(MmditEncoder<B>),
}

#[derive(Module, Debug)]
pub enum GenDecoder<B: Backend> {
    Uvit(UvitDecoderArm<B>),
    SingleStream(SingleStreamDecoder<B>),
}

/// The generator's parts, for parameter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Llm,
    Encoder,
    Decoder,
}

impl Component {
    /// The part a checkpoint key belongs to.
    pub fn of(key: &str) -> Component {
        if key.starts_with("language_model.") || key.starts_with("pooled_text_model.") {
            Component::Llm
        } else if key.starts_with("vision_gen_enc") || key.starts_with("gen_enc.") || key.starts_with("pooled_text_embed.") {
            Component::Encoder
        } else {
            Component::Decoder
        }
    }
}

/// LLM + generation encoder + decoder: JanusFlow (both UViT) or any arm of the structured model.
#[derive(Module, Debug)]
pub struct FlowGenerator<B: Backend> {
    pub language_model: Llama<B>,
    pub encoder: GenEncoder<B>,
    pub decoder: GenDecoder<B>,
    /// Pooled text conditioning (`config.pooled_text`): the frozen pooler and its projection.
    pub pooled_text_model: Option<Llama<B>>,
    pub pooled_text_embed: Option<PooledTextEmbed<B>>,
    #[module(skip)]
    pub config: GeneratorConfig,
}

/// Intermediates of one velocity evaluation (parity tests, debugging).
#[derive(Debug, Clone)]
pub struct StepTrace<B: Backend> {
    pub t_emb: Tensor<B, 2>,
    /// UViT encoder: its feature map (also the skip).
    pub enc_z_emb: Option<Tensor<B, 4>>,
    /// Image tokens entering the LLM (after the aligner).
    pub enc_tokens: Tensor<B, 3>,
    pub llm_inputs_embeds: Tensor<B, 3>,
    pub llm_last_hidden: Tensor<B, 3>,
    /// UViT decoder: its input map after the aligners.
    pub dec_input: Option<Tensor<B, 4>>,
}

/// Prepared once per generation: prompt embeddings `[2B, P, H]`, visibility, cached masks.
pub struct GeneratorCond<B: Backend> {
    pub prefix: Tensor<B, 3>,
    /// `[2B, H]`: the projected pooled text features, added to the time embedding.
    pub pooled: Option<Tensor<B, 2>>,
    pub key_visible: Vec<Vec<bool>>,
    masks: Option<Masks<B>>,
    /// Keys/values and outputs of the prompt prefix, computed once (UViT encoder only: its
    /// prefix is the prompt embeddings, which no Euler step changes).
    prefix_cache: Option<(KvCache<B>, Tensor<B, 3>)>,
    /// Reuse the prompt prefix across steps (exact under the causal mask); on by default.
    pub use_prefix_cache: bool,
    /// Called when each part of a velocity evaluation has been enqueued (profiling: the caller
    /// synchronises the device and reads its clock).
    pub on_stage: Option<Box<dyn FnMut(Component)>>,
}

#[derive(Debug, Clone)]
struct Masks<B: Backend> {
    n_img: usize,
    llm: Tensor<B, 4, Bool>,
    /// `[2B, 1, 1, n + P]`: keys of [image, text] hidden in the MM-DiT encoder.
    image_text: Tensor<B, 4, Bool>,
    /// `[2B, 1, 1, P + n]`: keys of [text, image] hidden in the single-stream decoder.
    text_image: Tensor<B, 4, Bool>,
    /// `[2B, 1, P, P]` and `[2B, 1, 1 + n, P + 1 + n]`: the LLM mask split at the prefix.
    llm_prefix: Tensor<B, 4, Bool>,
    llm_suffix: Tensor<B, 4, Bool>,
}

impl<B: Backend> GeneratorCond<B> {
    fn stage(&mut self, c: Component) {
        if let Some(f) = self.on_stage.as_mut() {
            f(c);
        }
    }

    fn masks(&mut self, n_img: usize, device: &B::Device) -> Masks<B> {
        if let Some(m) = self.masks.as_ref().filter(|m| m.n_img == n_img) {
            return m.clone();
        }
        let rows = self.key_visible.len();
        let p = self.key_visible[0].len();
        let seq = p + 1 + n_img;
        let visible: Vec<Vec<bool>> =
            self.key_visible.iter().map(|r| r.iter().copied().chain(std::iter::repeat(true)).take(seq).collect()).collect();
        let keys = |order: &dyn Fn(&[bool]) -> Vec<bool>| {
            let flat: Vec<bool> = self.key_visible.iter().flat_map(|r| order(r)).map(|v| !v).collect();
            Tensor::<B, 4, Bool>::from_data(TensorData::new(flat, [rows, 1, 1, p + n_img]), device)
        };
        let m = Masks {
            n_img,
            llm: attention_mask::<B>(Some(&visible), rows, 0, seq, device),
            llm_prefix: attention_mask::<B>(Some(&self.key_visible), rows, 0, p, device),
            llm_suffix: attention_mask::<B>(Some(&visible), rows, p, 1 + n_img, device),
            image_text: keys(&|r| std::iter::repeat(true).take(n_img).chain(r.iter().copied()).collect()),
            text_image: keys(&|r| r.iter().copied().chain(std::iter::repeat(true).take(n_img)).collect()),
        };
        self.masks = Some(m.clone());
        m
    }
}

impl<B: Backend> FlowGenerator<B> {
    /// Builds the generator from a checkpoint; every missing, misshapen, non-finite or unexpected
    /// tensor is reported by name.
    pub fn load(weights: &Weights, config: &GeneratorConfig, device: &B::Device) -> Result<Self> {
        let vb = VarBuilder::<B>::new(weights, device);
        let model = Self::build(&vb, config);
        vb.finish(&UNUSED_PREFIXES)?;
        Ok(model)
    }

    pub fn build(vb: &VarBuilder<B>, c: &GeneratorConfig) -> Self {
        let h = c.hidden();
        let encoder = match &c.encoder {
            EncoderConfig::Uvit(p) => GenEncoder::Uvit(UvitEncoderArm {
                vision_gen_enc_model: ShallowUViTEncoder::load(&vb.pp("vision_gen_enc_model"), p),
                vision_gen_enc_aligner: Linear::load(&vb.pp("vision_gen_enc_aligner"), p.channels(), h, true),
            }),
            EncoderConfig::Mmdit(m) => {
                GenEncoder::Mmdit(MmditEncoder::load(&vb.pp("gen_enc"), m, c.latent_channels, c.patch_size, h))
            }
        };
        let eps = c.language_config.rms_norm_eps;
        let decoder = match &c.decoder {
            DecoderConfig::Uvit(p) => GenDecoder::Uvit(UvitDecoderArm {
                vision_gen_dec_aligner_norm: RmsNorm::load(&vb.pp("vision_gen_dec_aligner_norm"), h, eps),
                vision_gen_dec_aligner: Linear::load(&vb.pp("vision_gen_dec_aligner"), h, p.in_channels, true),
                vision_gen_dec_model: ShallowUViTDecoder::load(&vb.pp("vision_gen_dec_model"), p),
            }),
            DecoderConfig::SingleStream(s) => GenDecoder::SingleStream(SingleStreamDecoder::load(
                &vb.pp("gen_dec"),
                s,
                h,
                eps,
                c.skip_width(),
                c.latent_channels,
                c.patch_size,
            )),
        };
        let pooler = c.pooler_config();
        Self {
            language_model: Llama::load(&vb.pp("language_model"), &c.language_config, false),
            encoder,
            decoder,
            pooled_text_model: pooler.as_ref().map(|p| Llama::load(&vb.pp("pooled_text_model"), p, false)),
            pooled_text_embed: pooler.as_ref().map(|p| PooledTextEmbed::load(&vb.pp("pooled_text_embed"), p.hidden_size, h)),
            config: c.clone(),
        }
    }

    /// Time embedding `[rows, H]` for `t` on the 0..1000 scale.
    pub fn time_embedding(&self, t: &[f32], device: &B::Device) -> Tensor<B, 2> {
        match &self.encoder {
            GenEncoder::Uvit(e) => e.vision_gen_enc_model.time_embedding(t, device),
            GenEncoder::Mmdit(e) => e.time_embedding(t, device),
        }
    }

    /// One velocity evaluation on the doubled batch `z: [2B, c, h, w]` at times `t` (0..1000).
    pub fn velocity_traced(
        &self,
        z: Tensor<B, 4>,
        t: &[f32],
        cond: &mut GeneratorCond<B>,
        trace: Option<&mut Option<StepTrace<B>>>,
    ) -> Tensor<B, 4> {
        let device = z.device();
        let t_emb = match &cond.pooled {
            Some(pooled) => self.time_embedding(t, &device) + pooled.clone(),
            None => self.time_embedding(t, &device),
        };
        let p = cond.prefix.dims()[1];
        let [_, _, zh, zw] = z.dims();
        let n_img = (zh / self.config.patch_size) * (zw / self.config.patch_size);
        let masks = cond.masks(n_img, &device);

        // Encoder → (text tokens for the LLM, image tokens for the LLM, skip tokens, grid).
        let mut enc_z_emb = None;
        let (text, tokens, skip, grid) = match &self.encoder {
            GenEncoder::Uvit(e) => {
                let z_emb = e.vision_gen_enc_model.forward(z, t_emb.clone());
                let [b, c, gh, gw] = z_emb.dims();
                let skip = z_emb.clone().reshape([b, c, gh * gw]).swap_dims(1, 2);
                enc_z_emb = Some(z_emb);
                (cond.prefix.clone(), e.vision_gen_enc_aligner.forward(skip.clone()), skip, [gh, gw])
            }
            GenEncoder::Mmdit(e) => {
                let (x, c, grid) = e.forward(z, cond.prefix.clone(), t_emb.clone(), Some(&masks.image_text));
                (e.text_aligner.forward(c), e.noise_aligner.forward(x.clone()), x, grid)
            }
        };

        cond.stage(Component::Encoder);
        // LLM over [text (P), time token, image tokens (n)]; under the causal mask the text part
        // does not depend on the step, so with a UViT encoder its keys/values are computed once.
        let suffix = Tensor::cat(vec![t_emb.clone().unsqueeze_dim(1), tokens.clone()], 1);
        let [b, _, h] = suffix.dims();
        let cacheable = cond.use_prefix_cache && matches!(self.encoder, GenEncoder::Uvit(_)) && trace.is_none();
        let llm = &self.language_model;
        let (text_out, img, full) = if cacheable {
            let (cache, prefix_out) = cond.prefix_cache.get_or_insert_with(|| {
                let mut cache = KvCache::new(llm.config.num_hidden_layers);
                let out = llm.forward_embeds(text, Some(masks.llm_prefix.clone()), Some(&mut cache), false);
                (cache, out.last_hidden_state)
            });
            let mut step_cache = cache.clone();
            let out = llm.forward_embeds(suffix, Some(masks.llm_suffix.clone()), Some(&mut step_cache), false);
            (prefix_out.clone(), out.last_hidden_state.slice([0..b, 1..1 + n_img, 0..h]), None)
        } else {
            let inputs = Tensor::cat(vec![text, suffix], 1);
            let hidden = llm.forward_embeds(inputs.clone(), Some(masks.llm.clone()), None, false).last_hidden_state;
            let seq = p + 1 + n_img;
            let parts = (hidden.clone().slice([0..b, 0..p, 0..h]), hidden.clone().slice([0..b, p + 1..seq, 0..h]));
            (parts.0, parts.1, Some((inputs, hidden)))
        };
        cond.stage(Component::Llm);

        let mut dec_input = None;
        let v = match &self.decoder {
            GenDecoder::Uvit(d) => {
                let img = d.vision_gen_dec_aligner.forward(d.vision_gen_dec_aligner_norm.forward(img));
                let c = img.dims()[2];
                let x = img.swap_dims(1, 2).reshape([b, c, grid[0], grid[1]]);
                let cs = skip.dims()[2];
                let skip_map = skip.swap_dims(1, 2).reshape([b, cs, grid[0], grid[1]]);
                dec_input = Some(x.clone());
                d.vision_gen_dec_model.forward(x, skip_map, t_emb.clone())
            }
            GenDecoder::SingleStream(d) => d.forward(text_out, img, skip, t_emb.clone(), grid, Some(&masks.text_image)),
        };
        cond.stage(Component::Decoder);
        if let (Some(slot), Some((inputs, hidden))) = (trace, full) {
            *slot = Some(StepTrace {
                t_emb,
                enc_z_emb,
                enc_tokens: tokens,
                llm_inputs_embeds: inputs,
                llm_last_hidden: hidden,
                dec_input,
            });
        }
        v
    }
}

impl<B: Backend> FlowGenerator<B> {
    /// The projected pooled text features `[rows, H]` of a batch: the batch's own when it carries
    /// them, else pooled from each row's visible tokens between BOS and the begin-of-generation
    /// tag (zeros for the unconditional row). `None` when the model has no pooled path.
    fn pooled_text(&self, batch: &PromptBatch, device: &B::Device) -> Option<Tensor<B, 2>> {
        let embed = self.pooled_text_embed.as_ref()?;
        let rows = batch.ids.len();
        let features = match &batch.pooled {
            Some(values) => {
                let d = values.len() / rows.max(1);
                Tensor::<B, 2>::from_data(TensorData::new(values.clone(), [rows, d]), device)
            }
            None => self.pool_prompts(batch, device)?,
        };
        Some(embed.forward(features))
    }

    /// The raw pooled text features `[rows, D]` of a batch's visible tokens between BOS and the
    /// begin-of-generation tag (zeros for unconditional rows); `None` without a pooled path.
    fn pool_prompts(&self, batch: &PromptBatch, device: &B::Device) -> Option<Tensor<B, 2>> {
        let llm = self.pooled_text_model.as_ref()?;
        let p = batch.prefix_len();
        let seqs: Vec<Vec<u32>> = (0..batch.ids.len())
            .map(|r| {
                let visible = (0..p).filter(|&j| batch.prefix_visible[r][j]).map(|j| batch.ids[r][j]);
                visible.chain(std::iter::once(batch.ids[r][p])).collect()
            })
            .collect();
        let bodies: Vec<&[u32]> = seqs.iter().map(|s| prompt_body(s)).collect();
        Some(mean_pooled(llm, &bodies, device))
    }
}

impl<B: Backend> VelocityModel<B> for FlowGenerator<B> {
    type Cond = GeneratorCond<B>;

    fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    fn patch_size(&self) -> usize {
        self.config.patch_size
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
        GeneratorCond {
            prefix: self.language_model.embed(ids),
            pooled: self.pooled_text(batch, device),
            key_visible: batch.prefix_visible.clone(),
            masks: None,
            prefix_cache: None,
            use_prefix_cache: true,
            on_stage: None,
        }
    }

    fn velocity(&self, z: Tensor<B, 4>, t: &[f32], cond: &mut Self::Cond) -> Tensor<B, 4> {
        self.velocity_traced(z, t, cond, None)
    }
}
