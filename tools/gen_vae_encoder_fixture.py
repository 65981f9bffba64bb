#!/usr/bin/env python3
"""Writes tests/fixtures/vae_encoder_tiny/: a tiny random diffusers AutoencoderKL (encoder +
decoder) and its reference outputs, for the encoder parity test in tests/vae_train.rs.

    python3 tools/gen_vae_encoder_fixture.py [OUT_DIR]

Files:
  config.json          the diffusers config (AutoencoderKL, block_out_channels [16, 32], ...)
  weights.safetensors  every tensor of the VAE (encoder.*, quant_conv.*, post_quant_conv.*, decoder.*)
  io.safetensors       image [2,3,32,32] in [-1,1]; moments [2,8,8,8] (quant_conv output);
                       mean, logvar [2,4,8,8] (logvar clamped to [-30, 20]);
                       flow_latent = (mean - shift_factor) * scaling_factor;
                       recon = vae.decode(mean).sample [2,3,32,32]
"""
import json
import os
import sys

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "fixtures", "vae_encoder_tiny")


def main():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.7,
        shift_factor=0.1,
    ).eval()
    # Non-trivial norms, biases and attention (diffusers initialises norms to 1/0): perturb every
    # tensor so that a wrong key, transposition or order shows.
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
            else:
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
    os.makedirs(OUT, exist_ok=True)
    vae.save_config(OUT)
    weights = {k: v.detach().contiguous().float() for k, v in vae.state_dict().items()}
    save_file(weights, os.path.join(OUT, "weights.safetensors"))

    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        h = vae.encoder(image)
        moments = vae.quant_conv(h)
        dist = vae.encode(image).latent_dist
        mean, logvar = dist.mean, dist.logvar
        flow = (mean - vae.config.shift_factor) * vae.config.scaling_factor
        recon = vae.decode(mean).sample
    io = {
        "image": image,
        "moments": moments,
        "mean": mean,
        "logvar": logvar,
        "flow_latent": flow,
        "recon": recon,
    }
    save_file({k: v.contiguous().float() for k, v in io.items()}, os.path.join(OUT, "io.safetensors"))
    n = sum(p.numel() for p in vae.parameters())
    print(f"wrote {OUT}: {n} parameters; mean |mean| {mean.abs().mean():.4f}, logvar range "
          f"[{logvar.min():.3f}, {logvar.max():.3f}], recon range [{recon.min():.3f}, {recon.max():.3f}]")


if __name__ == "__main__":
    main()
