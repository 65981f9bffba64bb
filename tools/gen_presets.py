#!/usr/bin/env python3
"""Writes core/presets/<arm>-<size>.json: the four ablation arms of the structured model at each size.

baseline = JanusFlow encoder + decoder, encoder = MM-DiT encoder + JanusFlow decoder,
decoder = JanusFlow encoder + single-stream decoder, both = MM-DiT + single-stream.
"""
import json, os

LLMS = {
    "tiny": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, rms_norm_eps=1e-6, rope_theta=10000.0,
                 tie_word_embeddings=False, max_position_embeddings=4096),
    # SmolLM2-135M(-Instruct): the default model's prior.
    "smol": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0,
                 tie_word_embeddings=True, max_position_embeddings=8192),
    # DeepSeek-LLM 1.3B as in JanusFlow-1.3B.
    "1.3b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=102400, rms_norm_eps=1e-6, rope_theta=10000.0,
                 tie_word_embeddings=False, max_position_embeddings=16384),
}
# (UViT channels, DiT width, DiT heads, head_dim, rope axes, latent side)
WIDTHS = {
    "tiny": (32, 64, 4, 16, [4, 6, 6], 16),
    "smol": (256, 384, 6, 64, [16, 24, 24], 16),
    "1.3b": (768, 768, 12, 64, [16, 24, 24], 48),
}
ARMS = {"baseline": ("uvit", "uvit"), "encoder": ("mmdit", "uvit"), "decoder": ("uvit", "single_stream"),
        "both": ("mmdit", "single_stream")}


def preset(size, arm):
    h = LLMS[size]["hidden_size"]
    c, d, heads, hd, axes, side = WIDTHS[size]
    enc_kind, dec_kind = ARMS[arm]
    if enc_kind == "uvit":
        encoder = dict(type="uvit", input_channels=4, stride=2, kernel_size=2, padding=0, block_out_channels=[c],
                       layers_in_middle=2, hidden_size=h, use_bias=True, norm_eps=1e-6, use_mid_block=True)
        skip = c
    else:
        encoder = dict(type="mmdit", dim=d, num_layers=2, num_attention_heads=heads, attention_head_dim=hd,
                       time_embed_dim=256 if size != "tiny" else 64)
        skip = d
    if dec_kind == "uvit":
        decoder = dict(type="uvit", in_channels=c, out_channels=4, block_out_channels=[skip], upsamples=1,
                       layers_in_middle=2, hidden_size=h, norm_eps=1e-6, use_bias=True, use_mid_block=True)
    else:
        decoder = dict(type="single_stream", dim=d, num_layers=2, num_attention_heads=heads, attention_head_dim=hd,
                       mlp_ratio=4.0, rope=dict(theta=10000.0, axes_dim=axes), long_skip=True)
    llm = dict(model_type="llama", hidden_act="silu", **LLMS[size])
    return dict(model_type="rfgen_flow", arm=arm, language_config=llm, latent_channels=4, patch_size=2,
                encoder=encoder, decoder=decoder,
                generation=dict(bos_token_id=1, pad_token_id=0, image_gen_token_id=2, tokenizer="bytes",
                                latent_shape=[4, side, side], cfg_weight=2.0, num_inference_steps=30))


out = os.path.join(os.path.dirname(__file__), "..", "core", "presets")
for size in LLMS:
    for arm in ARMS:
        with open(os.path.join(out, f"{arm}-{size}.json"), "w") as f:
            json.dump(preset(size, arm), f, indent=2)
            f.write("\n")
