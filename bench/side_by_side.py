#!/usr/bin/env python3
"""rfgen vs PyTorch, side by side: the OFFICIAL JanusFlow text-to-image loop and `rfgen-cli bench`
on the same weights, shapes and settings, in one run.

PyTorch side: no importable official Janus package exists here (and its uvit.py needs torchvision),
so this script carries a faithful re-implementation of the official code:
- the generation encoder/decoder classes (GlobalResponseNorm, ConvNextBlock, Unpatchify, UVitBlock,
  ShallowUViTEncoder, ShallowUViTDecoder) copied from deepseek-ai/Janus
  janus/janusflow/models/uvit.py (MIT licence, Copyright (c) 2023-2024 DeepSeek), unchanged but for
  the down/upsample paths that JanusFlow does not use;
- the LLM is transformers `LlamaModel` built from the checkpoint's language_config (eager attention
  by default), the aligners as in the official `MultiModalityCausalLM.__init__`;
- the loop is the official `generate()` of demo/app_janusflow.py: prompt rows doubled into
  cond/uncond (uncond = BOS + pads with attention mask 0), the LLM recomputing the whole sequence
  every step (the official KV-cache slicing iterates over an empty list), Euler with CFG
  `w * v_cond - (w - 1) * v_uncond`, then the diffusers AutoencoderKL decode of z / scaling_factor.
Before timing, a fixture model (a folder with io.safetensors) is re-run from its stored inputs and
must reproduce its stored z1 (and the VAE fixture's image) within 1e-4; and at the timed shape
PyTorch's final latent/image are compared with `rfgen-cli sample` on the same prompt and noise.

rfgen side: `rfgen-cli bench` (release build) on the same model directory and VAE, with its
per-component split (synchronised run) read from its JSON.

CPU (what results/cpu-janusflow-tiny.json holds):
    cargo build --release -p rfgen-cli
    python3 bench/side_by_side.py                       # janusflow_tiny + vae_tiny, 30 steps, CFG 2, 64 tokens
Both sides get --threads CPU threads (default 1: rfgen's ndarray backend is single-threaded). The
timing alternates PyTorch and rfgen in rounds and reports medians, because the machines this runs
on are shared.

GPU (same script; rfgen built with `--features cuda`; bf16 is what the official demo runs):
    cargo build --release -p rfgen-cli --features cuda
    python3 bench/side_by_side.py --device cuda --dtype f32
    python3 bench/side_by_side.py --device cuda --preset baseline-1.3b --dtype bf16 --runs 3
`--preset NAME` (a `baseline-*` preset: JanusFlow widths, random weights) writes the random model in
the released JanusFlow layout (and, unless --vae is given, a random SDXL-shaped VAE for the 1.3b
and smol sizes) to --work, so both sides load exactly the same weights.
"""

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("RFGEN_FIXTURES", REPO.parent / "shared" / "fixtures"))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="JanusFlow model directory (default: the janusflow_tiny fixture)")
    p.add_argument("--vae", type=Path, default=None, help="diffusers AutoencoderKL directory (default: the vae_tiny fixture)")
    p.add_argument("--preset", default=None, help="a baseline-* preset from core/presets with random weights (written to --work)")
    p.add_argument("--work", type=Path, default=None, help="where --preset writes its model (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random preset weights and of the noise")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"], help="compute precision of both sides")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens, BOS and BOG included")
    p.add_argument("--batch", type=int, default=1, help="images per generation")
    p.add_argument("--runs", type=int, default=3, help="timed generations per round after one warm-up (both sides)")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating PyTorch/rfgen rounds (default 3 on cpu, 1 on cuda)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of both sides (default 1: rfgen's ndarray backend is built without burn-ndarray's "
                        "multi-threads feature, so it computes on one thread)")
    p.add_argument("--attn", default="eager", choices=["eager", "sdpa"], help="transformers attention implementation")
    p.add_argument("--rfgen", type=Path, default=None, help="rfgen-cli binary (default: target/release/rfgen-cli)")
    p.add_argument("--rfgen-backend", default=None, help="rfgen backend (default: ndarray on cpu, cuda on cuda)")
    p.add_argument("--json", type=Path, default=None, help="result file (default: bench/results/<device>-<model>.json)")
    p.add_argument("--skip-verify", action="store_true", help="skip the output checks (timing only)")
    p.add_argument("--skip-no-cache", action="store_true",
                   help="skip the extra rfgen run with --no-prefix-cache (the official loop's full recompute)")
    return p.parse_args()


args = parse_args()
THREADS = args.threads
# Both sides get the same number of threads (rayon for rfgen's CPU backend, OpenMP/intra-op for torch).
os.environ["RAYON_NUM_THREADS"] = str(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from diffusers.models.embeddings import Timesteps, TimestepEmbedding  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from transformers import LlamaConfig, LlamaModel  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm as RMSNorm  # noqa: E402

torch.set_num_threads(THREADS)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass

# ------------------------------------------------------------------------------------------------
# Official JanusFlow generation modules: deepseek-ai/Janus janus/janusflow/models/uvit.py
# Copyright (c) 2023-2024 DeepSeek. MIT licence (permission notice: LICENSE-CODE of that repository).
# ------------------------------------------------------------------------------------------------


class GlobalResponseNorm(nn.Module):
    # Taken from https://github.com/facebookresearch/ConvNeXt-V2/blob/3608f67cc1dae164790c5d0aead7bf2d73d9719b/models/utils.py#L105
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)

        return torch.addcmul(self.bias, (self.weight * nx + 1), x, value=1)


class ConvNextBlock(nn.Module):
    def __init__(self, channels, norm_eps, elementwise_affine, use_bias, hidden_dropout, hidden_size, res_ffn_factor: int = 4):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels, bias=use_bias)
        self.norm = RMSNorm(channels, norm_eps)
        self.channelwise_linear_1 = nn.Linear(channels, int(channels * res_ffn_factor), bias=use_bias)
        self.channelwise_act = nn.GELU()
        self.channelwise_norm = GlobalResponseNorm(int(channels * res_ffn_factor))
        self.channelwise_linear_2 = nn.Linear(int(channels * res_ffn_factor), channels, bias=use_bias)
        self.channelwise_dropout = nn.Dropout(hidden_dropout)
        self.cond_embeds_mapper = nn.Linear(hidden_size, channels * 2, use_bias)

    def forward(self, x, cond_embeds):
        x_res = x

        x = self.depthwise(x)

        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = self.channelwise_linear_1(x)
        x = self.channelwise_act(x)
        x = self.channelwise_norm(x)
        x = self.channelwise_linear_2(x)
        x = self.channelwise_dropout(x)
        x = x.permute(0, 3, 1, 2)

        x = x + x_res

        scale, shift = self.cond_embeds_mapper(F.silu(cond_embeds)).chunk(2, dim=1)
        # x = x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        x = torch.addcmul(shift[:, :, None, None], x, (1 + scale)[:, :, None, None], value=1)

        return x


class Unpatchify(nn.Module):
    def __init__(self, in_channels, out_channels, patch_size, bias, elementwise_affine, eps):
        super().__init__()
        self.norm = RMSNorm(in_channels, eps)
        self.unpatch_conv = nn.Conv2d(in_channels, out_channels * patch_size * patch_size, kernel_size=1, bias=bias)
        self.pixel_shuffle = nn.PixelShuffle(patch_size)
        self.patch_size = patch_size

    def forward(self, x):
        # [b, c, h, w]
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = x.permute(0, 3, 1, 2)
        x = self.unpatch_conv(x)
        x = self.pixel_shuffle(x)
        return x


class UVitBlock(nn.Module):
    def __init__(self, channels, out_channels, num_res_blocks, stride, hidden_size, hidden_dropout, elementwise_affine,
                 norm_eps, use_bias, downsample: bool, upsample: bool, res_ffn_factor: int = 4, seq_len=None,
                 concat_input=False, original_input_channels=None, use_zero=True, norm_type="RMS"):
        super().__init__()

        self.res_blocks = nn.ModuleList()
        for i in range(num_res_blocks):
            conv_block = ConvNextBlock(channels, norm_eps, elementwise_affine, use_bias, hidden_dropout, hidden_size,
                                       res_ffn_factor=res_ffn_factor)

            self.res_blocks.append(conv_block)

        # JanusFlow builds its mid blocks with downsample=False, upsample=False (Downsample2D /
        # Upsample2D are not part of the generation path).
        assert not downsample and not upsample
        self.downsample = None
        self.upsample = None

    def forward(self, x, emb, recompute=False):
        for res_block in self.res_blocks:
            x = res_block(x, emb)

        if self.downsample is not None:
            x = self.downsample(x)

        if self.upsample is not None:
            x = self.upsample(x)

        return x


class ShallowUViTEncoder(nn.Module):
    def __init__(self, input_channels=3, stride=4, kernel_size=7, padding=None, block_out_channels=(768,),
                 layers_in_middle=2, hidden_size=2048, elementwise_affine=True, use_bias=True, norm_eps=1e-6,
                 dropout=0.0, use_mid_block=True, **kwargs):
        super().__init__()

        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(block_out_channels[0], hidden_size, sample_proj_bias=use_bias)

        if padding is None:
            padding = math.ceil(kernel_size - stride)
        self.in_conv = nn.Conv2d(in_channels=input_channels, out_channels=block_out_channels[0], kernel_size=kernel_size,
                                 stride=stride, padding=padding)
        if use_mid_block:
            self.mid_block = UVitBlock(block_out_channels[-1], block_out_channels[-1], num_res_blocks=layers_in_middle,
                                       hidden_size=hidden_size, hidden_dropout=dropout,
                                       elementwise_affine=elementwise_affine, norm_eps=norm_eps, use_bias=use_bias,
                                       downsample=False, upsample=False, stride=1, res_ffn_factor=4)
        else:
            self.mid_block = None

    def get_num_extra_tensors(self):
        return 2

    def forward(self, x, timesteps):

        bs = x.shape[0]
        dtype = x.dtype

        t_emb = self.time_proj(timesteps.flatten()).view(bs, -1).to(dtype)
        t_emb = self.time_embed(t_emb)
        x_emb = self.in_conv(x)

        if self.mid_block is not None:
            x_emb = self.mid_block(x_emb, t_emb)

        hs = [x_emb]
        return x_emb, t_emb, hs


class ShallowUViTDecoder(nn.Module):
    def __init__(self, in_channels=768, out_channels=3, block_out_channels=(768,), upsamples=2, layers_in_middle=2,
                 hidden_size=2048, elementwise_affine=True, norm_eps=1e-6, use_bias=True, dropout=0.0,
                 use_mid_block=True, **kwargs):
        super().__init__()
        if use_mid_block:
            self.mid_block = UVitBlock(in_channels + block_out_channels[-1], block_out_channels[-1],
                                       num_res_blocks=layers_in_middle, hidden_size=hidden_size, hidden_dropout=dropout,
                                       elementwise_affine=elementwise_affine, norm_eps=norm_eps, use_bias=use_bias,
                                       downsample=False, upsample=False, stride=1, res_ffn_factor=4)
        else:
            self.mid_block = None
        self.out_convs = nn.ModuleList()
        for rank in range(upsamples):
            if rank == upsamples - 1:
                curr_out_channels = out_channels
            else:
                curr_out_channels = block_out_channels[-1]
            if rank == 0:
                curr_in_channels = block_out_channels[-1] + in_channels
            else:
                curr_in_channels = block_out_channels[-1]
            self.out_convs.append(Unpatchify(curr_in_channels, curr_out_channels, patch_size=2, bias=use_bias,
                                             elementwise_affine=elementwise_affine, eps=norm_eps))
        self.input_norm = RMSNorm(in_channels, norm_eps)

    def forward(self, x, hs, t_emb):

        x = x.permute(0, 2, 3, 1)
        x = self.input_norm(x)
        x = x.permute(0, 3, 1, 2)

        x = torch.cat([x, hs.pop()], dim=1)
        if self.mid_block is not None:
            x = self.mid_block(x, t_emb)
        for out_conv in self.out_convs:
            x = out_conv(x)
        assert len(hs) == 0
        return x


# ------------------------------------------------------------------------------------------------
# The generation half of the official MultiModalityCausalLM (modeling_vlm.py), widths from the config.
# ------------------------------------------------------------------------------------------------


class LanguageModel(nn.Module):
    """Holds `model` so that the official key names `language_model.model.*` load as they are."""

    def __init__(self, config):
        super().__init__()
        self.model = LlamaModel(config)


class JanusFlowGeneration(nn.Module):
    def __init__(self, cfg, attn):
        super().__init__()
        lc = {k: v for k, v in cfg["language_config"].items() if k not in ("model_type", "torch_dtype")}
        lconf = LlamaConfig(**lc)
        lconf._attn_implementation = attn
        enc = cfg["vision_gen_enc_config"]["params"]
        dec = cfg["vision_gen_dec_config"]["params"]
        h = lconf.hidden_size
        self.vision_gen_enc_model = ShallowUViTEncoder(**enc)
        self.vision_gen_enc_aligner = nn.Linear(enc["block_out_channels"][-1], h, bias=True)
        self.vision_gen_dec_model = ShallowUViTDecoder(**dec)
        self.language_model = LanguageModel(lconf)
        self.vision_gen_dec_aligner_norm = RMSNorm(h, eps=lconf.rms_norm_eps)
        self.vision_gen_dec_aligner = nn.Linear(h, dec["in_channels"], bias=True)
        self.hidden = h
        self.dec_channels = dec["in_channels"]


def read_weights(model_dir: Path):
    index = sorted(model_dir.glob("*.safetensors.index.json"))
    if index:
        files = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        sd = {}
        for f in files:
            sd.update(load_file(str(model_dir / f)))
        return sd
    for name in ("model.safetensors", "weights.safetensors"):
        if (model_dir / name).exists():
            return load_file(str(model_dir / name))
    raise SystemExit(f"error: no model.safetensors / weights.safetensors / index in {model_dir}")


def load_janusflow(model_dir: Path, attn, device, dtype):
    cfg = json.loads((model_dir / "config.json").read_text())
    if "vision_gen_enc_config" not in cfg:
        raise SystemExit(f"error: {model_dir}/config.json is not a JanusFlow (released layout) config")
    model = JanusFlowGeneration(cfg, attn)
    sd = {k: v.float() for k, v in read_weights(model_dir).items()}
    unused = ("language_model.lm_head.", "vision_und_enc_model.", "vision_und_enc_aligner.", "beg_of_und_embed")
    sd = {k: v for k, v in sd.items() if not k.startswith(unused)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise SystemExit(f"error: weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    gen = json.loads((model_dir / "generation.json").read_text()) if (model_dir / "generation.json").exists() else {}
    return model.to(device=device, dtype=dtype).eval(), cfg, gen


def load_vae(vae_dir: Path, device, dtype):
    cfg = json.loads((vae_dir / "config.json").read_text())
    vae = AutoencoderKL.from_config(cfg)
    sd = read_weights(vae_dir)
    missing, unexpected = vae.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if not k.startswith(("encoder.", "quant_conv."))]
    if missing or unexpected:
        raise SystemExit(f"error: VAE weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    vae = vae.to(device)
    if dtype != torch.float32:
        vae = vae.to(dtype)
    return vae.eval()


# ------------------------------------------------------------------------------------------------
# Random models for --preset (the fixture's initialisation rule, so nothing is zero or one).
# ------------------------------------------------------------------------------------------------


def init_random_(module: nn.Module, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if "channelwise_norm" in name:
                std, mean = 0.2, 0.0
            elif p.ndim == 1 and "norm" in name:
                std, mean = 0.1, 1.0
            elif name.endswith("bias"):
                std, mean = 0.1, 0.0
            else:
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else p.shape[0]
                std, mean = min(max(fan_in ** -0.5, 0.02), 0.2), 0.0
            p.copy_(torch.randn(p.shape, generator=g) * std + mean)


def write_preset(name: str, work: Path, seed: int):
    src = REPO / "core" / "presets" / f"{name}.json"
    if not src.exists():
        raise SystemExit(f"error: no preset {name} in core/presets")
    pre = json.loads(src.read_text())
    if pre["encoder"].get("type") != "uvit" or pre["decoder"].get("type") != "uvit":
        raise SystemExit(f"error: {name} is not a JanusFlow arm (use a baseline-* preset)")
    enc = {k: v for k, v in pre["encoder"].items() if k != "type"}
    dec = {k: v for k, v in pre["decoder"].items() if k != "type"}
    enc.setdefault("elementwise_affine", True)
    enc.setdefault("dropout", 0.0)
    dec.setdefault("elementwise_affine", True)
    dec.setdefault("dropout", 0.0)
    cfg = {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "language_config": pre["language_config"],
        "vision_gen_enc_config": {"cls": "ShallowUViTEncoder", "model_type": "vision_gen_enc", "params": enc},
        "vision_gen_dec_config": {"cls": "ShallowUViTDecoder", "model_type": "vision_gen_dec", "params": dec},
    }
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / name
    marker = model_dir / "seed.txt"
    if marker.exists() and marker.read_text() == str(seed):
        return model_dir
    model_dir.mkdir(exist_ok=True)
    model = JanusFlowGeneration(cfg, "eager")
    init_random_(model, seed)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if "rotary_emb" not in k}
    save_file(sd, str(model_dir / "model.safetensors"))
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    (model_dir / "generation.json").write_text(json.dumps(pre["generation"], indent=2))
    marker.write_text(str(seed))
    return model_dir


def write_sdxl_vae(work: Path, seed: int):
    """A random AutoencoderKL with the SDXL-VAE shape (decode path only, diffusers key names)."""
    vae_dir = work / "sdxl-vae-random"
    if (vae_dir / "seed.txt").exists() and (vae_dir / "seed.txt").read_text() == str(seed):
        return vae_dir
    vae_dir.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
        scaling_factor=0.13025, sample_size=1024,
    )
    torch.manual_seed(seed)
    sd = {k: v.contiguous() for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
    save_file(sd, str(vae_dir / "model.safetensors"))
    vae.save_config(str(vae_dir))  # config.json with _class_name AutoencoderKL
    (vae_dir / "seed.txt").write_text(str(seed))
    return vae_dir


# ------------------------------------------------------------------------------------------------
# The official generation loop (demo/app_janusflow.py `generate`), with per-part timers.
# ------------------------------------------------------------------------------------------------

PARTS = ("encoder", "llm", "decoder", "euler", "vae")


class Timer:
    def __init__(self, device, enabled):
        self.enabled = enabled
        self.device = device
        self.parts = {k: 0.0 for k in PARTS}
        self.last = time.perf_counter()

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def start(self):
        if self.enabled:
            self.sync()
            self.last = time.perf_counter()

    def stage(self, name):
        if self.enabled:
            self.sync()
            now = time.perf_counter()
            self.parts[name] += now - self.last
            self.last = now


@torch.inference_mode()
def official_generate(model, vae, tokens, attention_mask, z, steps, cfg_weight, timer=None):
    """`tokens`: [2B, L] (rows B.. unconditional), `attention_mask`: [2B, P + 1 + n_img] int,
    `z`: [B, c, h, w]. Returns (z1, image or None)."""
    timer = timer or Timer(z.device.type, False)
    timer.start()
    inputs_embeds = model.language_model.model.get_input_embeddings()(tokens)
    # we remove the last <bog> token and replace it with t_emb later
    inputs_embeds = inputs_embeds[:, :-1, :]
    dt = 1.0 / steps
    dt = torch.zeros_like(z) + dt
    timer.stage("euler")
    for step in range(steps):
        # prepare inputs for the llm
        z_input = torch.cat([z, z], dim=0)  # for cfg
        t = step / steps * 1000.0
        t = torch.tensor([t] * z_input.shape[0]).to(dt)
        z_enc = model.vision_gen_enc_model(z_input, t)
        z_emb, t_emb, hs = z_enc[0], z_enc[1], z_enc[2]
        gh, gw = z_emb.shape[2], z_emb.shape[3]
        z_emb = z_emb.view(z_emb.shape[0], z_emb.shape[1], -1).permute(0, 2, 1)
        z_emb = model.vision_gen_enc_aligner(z_emb)
        llm_emb = torch.cat([inputs_embeds, t_emb.unsqueeze(1), z_emb], dim=1)
        timer.stage("encoder")
        # the official loop's KV-cache slicing is a no-op: every step recomputes the full sequence
        outputs = model.language_model.model(inputs_embeds=llm_emb, attention_mask=attention_mask, use_cache=False)
        hidden_states = outputs.last_hidden_state
        timer.stage("llm")
        # transform hidden_states back to v
        n_img = gh * gw
        hidden_states = model.vision_gen_dec_aligner(model.vision_gen_dec_aligner_norm(hidden_states[:, -n_img:, :]))
        hidden_states = hidden_states.reshape(z_emb.shape[0], gh, gw, model.dec_channels).permute(0, 3, 1, 2)
        v = model.vision_gen_dec_model(hidden_states, hs, t_emb)
        timer.stage("decoder")
        v_cond, v_uncond = torch.chunk(v, 2)
        v = cfg_weight * v_cond - (cfg_weight - 1.0) * v_uncond
        z = z + dt * v
        timer.stage("euler")
    image = None
    if vae is not None:
        image = vae.decode(z / vae.config.scaling_factor).sample
        timer.stage("vae")
    timer.sync()
    return z, image


def official_batch(prompt_ids, batch, pad_id, n_img, device):
    """The official single-prompt batch: `batch` copies cond, `batch` uncond (BOS then pads)."""
    ids = torch.tensor(prompt_ids, dtype=torch.long)
    tokens = torch.stack([ids] * (2 * batch)).to(device)
    tokens[batch:, 1:] = pad_id
    p = len(prompt_ids) - 1
    attention_mask = torch.ones((2 * batch, p + 1 + n_img), device=device)
    attention_mask[batch:, 1:p] = 0
    return tokens, attention_mask.int()


def bench_prompt(n, vocab, bos, bog):
    """The prompt `rfgen-cli bench --prompt-tokens n` builds (same ids on both sides)."""
    ids = [3 + (i * 7) % (vocab - 3) for i in range(n)]
    ids[0], ids[-1] = bos, bog
    return ids


def maxdiff(a, b):
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


def write_noise(path: Path, z0):
    save_file({"z0": z0.detach().float().cpu().contiguous()}, str(path))


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device")
    tdtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    rfgen = args.rfgen or Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "rfgen-cli"
    if not rfgen.exists():
        raise SystemExit(f"error: {rfgen} not found: cargo build --release -p rfgen-cli" + (" --features cuda" if device == "cuda" else ""))
    backend = args.rfgen_backend or ("cuda" if device == "cuda" else "ndarray")
    tmp = Path(tempfile.mkdtemp(prefix="rfgen-sbs-"))

    if args.preset:
        work = args.work or tmp
        print(f"writing preset {args.preset} (random weights, seed {args.seed}) to {work} ...", flush=True)
        model_dir = write_preset(args.preset, work, args.seed)
        if args.vae:
            vae_dir = args.vae
        elif args.preset.endswith("-tiny"):
            vae_dir = FIXTURES / "vae_tiny"
        else:
            vae_dir = write_sdxl_vae(work, args.seed)
        name = args.preset
    else:
        model_dir = args.model or FIXTURES / "janusflow_tiny"
        vae_dir = args.vae or FIXTURES / "vae_tiny"
        name = model_dir.name.replace("_", "-")

    model, cfg, gen = load_janusflow(model_dir, args.attn, device, tdtype)
    vae = load_vae(vae_dir, device, tdtype)
    lc = cfg["language_config"]
    bos = gen.get("bos_token_id", lc.get("bos_token_id", 1))
    bog = gen.get("image_gen_token_id", 2)
    pad = gen.get("pad_token_id", lc.get("pad_token_id", 0))
    c, lh, lw = gen.get("latent_shape", [4, 48, 48])
    patch = cfg["vision_gen_enc_config"]["params"]["stride"]
    n_img = (lh // patch) * (lw // patch)
    result = {
        "what": "rfgen vs the official JanusFlow generation loop in PyTorch, same weights and settings",
        "pytorch_note": "faithful re-implementation of the official loop: uvit.py classes copied from deepseek-ai/Janus, "
                        "transformers LlamaModel, demo/app_janusflow.py generate() semantics (doubled cond/uncond batch, "
                        f"full-sequence LLM every step, {args.attn} attention, Euler + CFG, diffusers AutoencoderKL decode)",
        "model": str(model_dir), "vae": str(vae_dir), "device": device, "dtype": args.dtype,
        "settings": {"steps": args.steps, "cfg": args.cfg, "prompt_tokens": args.prompt_tokens, "batch": args.batch,
                     "latent": [c, lh, lw], "image_tokens": n_img, "sequence": args.prompt_tokens - 1 + 1 + n_img,
                     "runs": args.runs, "threads": THREADS, "rfgen_backend": backend,
                     "threads_note": "torch.set_num_threads(threads), set_num_interop_threads(1); rfgen's ndarray backend "
                                     "is single-threaded (burn-ndarray without its multi-threads feature)"},
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name(),
                        "cores": os.cpu_count(),
                        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None},
        "verification": {},
    }
    if hasattr(os, "getloadavg"):
        result["environment"]["loadavg_1_5_15_at_start"] = list(os.getloadavg())
    import transformers, diffusers  # noqa: E401
    result["environment"].update({"transformers": transformers.__version__, "diffusers": diffusers.__version__})

    # 1. The fixture's own inputs must give the fixture's outputs (f32 only).
    io_path = model_dir / "io.safetensors"
    if not args.skip_verify and io_path.exists() and args.dtype == "f32":
        io = load_file(str(io_path))
        z1, image = official_generate(model, None, io["input_ids"].to(device), io["attention_mask"].to(device),
                                      io["z0"].to(device), int(gen["num_inference_steps"]), float(gen["cfg_weight"]))
        d_z1 = maxdiff(z1, io["z1"])
        ver = {"fixture_z1_max_abs": d_z1}
        vae_io = vae_dir / "io.safetensors"
        if vae_io.exists():
            vio = load_file(str(vae_io))
            with torch.inference_mode():
                img = vae.decode(vio["z1"].to(device) / vae.config.scaling_factor).sample
            ver["fixture_image_max_abs"] = maxdiff(img, vio["image"])
        ok = all(v <= 1e-4 for v in ver.values())
        ver["ok"] = ok
        result["verification"]["fixture"] = ver
        print(f"PyTorch re-implementation vs the fixture's stored outputs: " +
              ", ".join(f"{k} {v:.2e}" for k, v in ver.items() if k != "ok") + (" (<= 1e-4: ok)" if ok else " FAILED"))
        if not ok:
            raise SystemExit("error: the PyTorch loop does not reproduce the fixture; not timing it")

    # 2. The timed configuration: one prompt of --prompt-tokens, the official batch layout.
    prompt = bench_prompt(args.prompt_tokens, lc["vocab_size"], bos, bog)
    tokens, mask = official_batch(prompt, args.batch, pad, n_img, device)
    g = torch.Generator().manual_seed(args.seed)
    z0 = torch.randn((args.batch, c, lh, lw), generator=g).to(device=device, dtype=tdtype)

    if not args.skip_verify:
        # Same prompt and noise through `rfgen-cli sample`: the two sides compute the same thing.
        noise = tmp / "z0.safetensors"
        dump = tmp / "rfgen.safetensors"
        write_noise(noise, z0[:1])
        cmd = [str(rfgen), "sample", "--model", str(model_dir), "--vae", str(vae_dir), "--token-ids",
               ",".join(map(str, prompt)), "--noise", str(noise), "--steps", str(args.steps), "--cfg", str(args.cfg),
               "--backend", backend, "--dtype", args.dtype, "--dump", str(dump)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"error: rfgen-cli sample failed: {r.stderr.strip()}")
        got = load_file(str(dump))
        t1, i1 = official_generate(model, vae, tokens[[0, args.batch]], mask[[0, args.batch]], z0[:1], args.steps, args.cfg)
        ver = {"z1_max_abs": maxdiff(t1, got["z1"]), "image_max_abs": maxdiff(i1, got["image"])}
        result["verification"]["timed_shape_vs_rfgen_sample"] = ver
        print(f"PyTorch vs rfgen-cli sample at the timed shape ({args.steps} steps, {args.prompt_tokens}-token prompt): "
              f"z1 max |diff| {ver['z1_max_abs']:.2e}, image max |diff| {ver['image_max_abs']:.2e}")

    # 3. Timing. Each round: PyTorch (warm-up once, --runs timed runs, one profiled run synchronised
    #    after each part), then `rfgen-cli bench` (its own warm-up, --runs timed runs, profiled run),
    #    then rfgen with --no-prefix-cache (the official loop's full recompute, to separate the cache
    #    from the runtime). Rounds alternate the sides so a busy machine hits both alike; the
    #    headline is the median over all timed runs of each side, the split the median per part.
    def rfgen_bench(extra):
        rjson = tmp / "rfgen-bench.json"
        cmd = [str(rfgen), "bench", "--model", str(model_dir), "--vae", str(vae_dir), "--backend", backend,
               "--dtype", args.dtype, "--steps", str(args.steps), "--cfg", str(args.cfg), "--batch", str(args.batch),
               "--prompt-tokens", str(args.prompt_tokens), "--runs", str(args.runs), "--json", str(rjson)] + extra
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"error: rfgen-cli bench failed: {r.stderr.strip()}")
        out = json.loads(rjson.read_text())
        out["command"] = " ".join(["rfgen-cli"] + cmd[1:-2])
        return out

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    rounds = args.rounds or (3 if device == "cpu" else 1)
    official_generate(model, vae, tokens, mask, z0, min(args.steps, 2), args.cfg)
    pt_times, pt_splits, rf_runs, nc_runs = [], [], [], []
    for rnd in range(rounds):
        print(f"round {rnd + 1}/{rounds}: PyTorch {args.runs} runs, rfgen-cli bench --runs {args.runs}"
              + ("" if args.skip_no_cache else " (prefix cache on, then off)") + " ...", flush=True)
        for _ in range(args.runs):
            sync()
            t0 = time.perf_counter()
            official_generate(model, vae, tokens, mask, z0, args.steps, args.cfg)
            sync()
            pt_times.append(time.perf_counter() - t0)
        timer = Timer(device, True)
        official_generate(model, vae, tokens, mask, z0, args.steps, args.cfg, timer)
        pt_splits.append(timer.parts)
        rf_runs.append(rfgen_bench([]))
        if not args.skip_no_cache:
            nc_runs.append(rfgen_bench(["--no-prefix-cache"]))

    def median_parts(splits):
        return {k: float(np.median([sp.get(k, 0.0) for sp in splits])) for k in splits[0]}

    def rfgen_summary(runs):
        times = [t for r in runs for t in r.get("run_seconds", [r["s_per_image"] * args.batch])]
        return {"s_per_image": float(np.mean(times)) / args.batch, "s_per_image_median": float(np.median(times)) / args.batch,
                "run_seconds": times, "split_seconds": median_parts([r["split_seconds"] for r in runs]),
                "command": runs[0]["command"], "rounds": runs}

    pt_mean = float(np.mean(pt_times)) / args.batch
    pt_s = float(np.median(pt_times)) / args.batch
    pt_parts = median_parts(pt_splits)
    result["pytorch"] = {"s_per_image": pt_mean, "s_per_image_median": pt_s, "run_seconds": pt_times,
                         "split_seconds": pt_parts, "split_rounds": pt_splits}
    rf = rfgen_summary(rf_runs)
    result["rfgen"] = rf
    rf_s = rf["s_per_image_median"]
    result["statistic"] = f"median over {rounds} alternating rounds x {args.runs} runs, per image"
    result["speedup_pytorch_over_rfgen"] = pt_s / rf_s
    result["ratio_rfgen_over_pytorch"] = rf_s / pt_s
    result["speedup_by_means"] = pt_mean / rf["s_per_image"]
    rf_nc = None
    if nc_runs:
        rf_nc = rfgen_summary(nc_runs)
        result["rfgen_no_prefix_cache"] = rf_nc
        result["speedup_pytorch_over_rfgen_no_prefix_cache"] = pt_s / rf_nc["s_per_image_median"]
    timer = Timer(device, False)
    timer.parts = pt_parts
    med = lambda r: r["s_per_image_median"]  # noqa: E731

    # 5. Report.
    def split_line(parts):
        total = sum(parts.values()) or 1e-12
        return "  ".join(f"{k} {v:.3f}s ({100 * v / total:.0f}%)" for k, v in parts.items())

    print()
    print(f"model {name} ({model_dir}), VAE {vae_dir.name}; {device}, {args.dtype}, {THREADS} threads; latent "
          f"{c}x{lh}x{lw} ({n_img} image tokens), prompt {args.prompt_tokens} tokens, {args.steps} steps, CFG {args.cfg}, "
          f"batch {args.batch}")
    print("PyTorch = faithful re-implementation of the official JanusFlow loop (official uvit.py classes, "
          f"transformers LlamaModel {args.attn}, full-sequence LLM every step)")
    print(f"  s/image = median of {rounds} x {args.runs} timed runs per side (means in the JSON); split = median of the "
          "synchronised runs")
    print(f"  PyTorch  s/image {pt_s:.4f}   split: {split_line(timer.parts)}")
    order = ("encoder", "llm", "decoder", "vae")
    rparts = {k: rf["split_seconds"].get(k, 0.0) for k in order}
    print(f"  rfgen    s/image {rf_s:.4f}   split: {split_line(rparts)}   (backend {backend}, prefix KV cache on)")
    if rf_nc:
        nparts = {k: rf_nc["split_seconds"].get(k, 0.0) for k in order}
        print(f"  rfgen    s/image {med(rf_nc):.4f}   split: {split_line(nparts)}   (prefix KV cache off = the "
              f"official full recompute; speed-up {pt_s / med(rf_nc):.2f}x)")
    print(f"  ratio rfgen/PyTorch time {rf_s / pt_s:.3f}  ->  rfgen speed-up {pt_s / rf_s:.2f}x")
    for part in ("llm", "encoder", "decoder", "vae"):
        a, b = timer.parts.get(part, 0.0), rparts.get(part, 0.0)
        if b > 0:
            print(f"    {part:8s} PyTorch {a:.3f}s  rfgen {b:.3f}s  ({a / b:.2f}x)")
    print(f"    euler    PyTorch {timer.parts['euler']:.3f}s (CFG combine + update; rfgen counts it in its next encoder stage)")

    if hasattr(os, "getloadavg"):
        result["environment"]["loadavg_1_5_15_at_end"] = list(os.getloadavg())
    out = args.json or REPO / "bench" / "results" / f"{device}-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
