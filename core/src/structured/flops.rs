//! Analytic FLOP counts of one image (multiply-add = 2 FLOP), for benchmarks.

use super::{EncoderConfig, GeneratorConfig};
use crate::vae::VaeConfig;

/// FLOP of one image, per component.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Flops {
    pub llm: f64,
    pub encoder: f64,
    pub decoder: f64,
    pub vae: f64,
}

impl Flops {
    pub fn total(&self) -> f64 {
        self.llm + self.encoder + self.decoder + self.vae
    }
}

/// LLM FLOP of `q` query tokens attending to `s` keys, one sequence.
fn llm_forward(c: &GeneratorConfig, q: f64, s: f64) -> f64 {
    let l = &c.language_config;
    let (h, i, nh, kv, hd) =
        (l.hidden_size as f64, l.intermediate_size as f64, l.num_attention_heads as f64, l.kv_heads() as f64, l.head_dim() as f64);
    let linear = h * nh * hd * 2.0 + 2.0 * h * kv * hd + 3.0 * h * i;
    l.num_hidden_layers as f64 * (2.0 * q * linear + 4.0 * q * s * nh * hd)
}

/// One image with a `prompt_len`-token prompt (BOS..BOG), a latent of `hw`, `steps` Euler steps
/// with CFG (two rows per step); `enc_params`/`dec_params` from [`super::param_counts`].
pub fn image_flops(
    c: &GeneratorConfig,
    prompt_len: usize,
    hw: [usize; 2],
    steps: usize,
    prefix_cache: bool,
    enc_params: usize,
    dec_params: usize,
    vae: Option<&VaeConfig>,
) -> Flops {
    let p = prompt_len.saturating_sub(1) as f64;
    let n = ((hw[0] / c.patch_size) * (hw[1] / c.patch_size)) as f64;
    let s = p + 1.0 + n;
    let rows = 2.0 * steps as f64;
    let cached = prefix_cache && matches!(c.encoder, EncoderConfig::Uvit(_));
    let llm = if cached {
        2.0 * llm_forward(c, p, p) + rows * llm_forward(c, 1.0 + n, s)
    } else {
        rows * llm_forward(c, s, s)
    };
    // Every generator weight is applied once per token of its stream (convolutions included).
    let tokens = if matches!(c.encoder, EncoderConfig::Mmdit(_)) { n + p } else { n };
    Flops {
        llm,
        encoder: rows * 2.0 * enc_params as f64 * tokens,
        decoder: rows * 2.0 * dec_params as f64 * n,
        vae: vae.map(|v| vae_decode_flops(v, hw)).unwrap_or(0.0),
    }
}

/// Convolutions (and the mid-block attention) of one VAE decode.
pub fn vae_decode_flops(v: &VaeConfig, hw: [usize; 2]) -> f64 {
    let conv = |cin: usize, cout: usize, k: usize, px: f64| 2.0 * (cin * cout * k * k) as f64 * px;
    let resnet = |cin: usize, cout: usize, px: f64| {
        conv(cin, cout, 3, px) + conv(cout, cout, 3, px) + if cin != cout { conv(cin, cout, 1, px) } else { 0.0 }
    };
    let rev: Vec<usize> = v.block_out_channels.iter().rev().copied().collect();
    let mut px = (hw[0] * hw[1]) as f64;
    let top = rev[0];
    let mut f = conv(v.latent_channels, v.latent_channels, 1, px) + conv(v.latent_channels, top, 3, px);
    f += 2.0 * resnet(top, top, px);
    if v.mid_block_add_attention {
        f += 4.0 * 2.0 * (top * top) as f64 * px + 4.0 * px * px * top as f64;
    }
    let mut prev = top;
    for (i, &out) in rev.iter().enumerate() {
        for j in 0..=v.layers_per_block {
            f += resnet(if j == 0 { prev } else { out }, out, px);
        }
        if i + 1 < rev.len() {
            px *= 4.0;
            f += conv(out, out, 3, px);
        }
        prev = out;
    }
    f + conv(v.block_out_channels[0], v.out_channels, 3, px)
}
