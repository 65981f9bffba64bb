"""Chooses `index-captions --remove-top D` on the training split alone (offline; numpy + safetensors).

Ten folds: each holds out 10% of the training bases as unseen prompts. Each prompt (its first
caption) copies the training image of its nearest caption among the other 90% of the bases, with
the mean and the top D principal directions of those 90% removed before the cosine. The copy is
scored by the shipped proxy judge among 100 candidate captions of the same fold (the prompt's and
99 others), as `eval proxy-clip --nearest-caption` scores held-out prompts. No held-out image or
caption is read.

usage: validate_remove_top.py INDEX.safetensors DATA_DIR SCORER_DIR [out.json]
  INDEX: a `neighbours.safetensors` of the training captions with 8 LLM layers (the judge's); only
  its raw features are read. `real_top1` scores each prompt's own image (the ceiling; it checks
  this numpy copy of the judge).
"""
import json
import math
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

DS = [0, 2, 5, 7, 10, 15, 20, 30, 50]


def main(index_path, data_dir, scorer_dir, out=None):
    with safe_open(index_path, "np") as f:
        captions = json.loads(f.metadata()["captions"])
    feats = load_file(index_path)["features"].astype(np.float64)
    data = json.load(open(f"{data_dir}/captions.json"))
    images = load_file(f"{data_dir}/images.safetensors")["images"]
    judge = load_file(f"{scorer_dir}/model.safetensors")
    owner = {}
    for k, it in enumerate(data["items"]):
        if it["split"] == "train":
            owner.setdefault(it["captions"][0], k)
    item = np.array([owner[c] for c in captions])
    base = np.array([data["items"][k]["base"] for k in item])

    erf = np.vectorize(math.erf)
    gelu = lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2)))
    lin = lambda x, n: x @ judge[n + ".weight"].T.astype(np.float64) + judge[n + ".bias"]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    text = unit(lin(gelu(lin((feats - judge["text_norm.mean"]) / judge["text_norm.std"], "text_proj.0")), "text_proj.1"))
    pix = images[item].astype(np.float64).reshape(len(item), 32, 2, 32, 2, 3).mean((2, 4)).reshape(len(item), -1) / 127.5 - 1
    image = unit(lin(gelu(lin(gelu(lin(pix, "image_proj.0")), "image_proj.1")), "image_proj.2"))

    bases = np.unique(base)
    perm = np.random.default_rng(0).permutation(len(bases))
    hits = {d: [] for d in DS}
    real = []
    for fold in range(10):
        held = set(bases[perm[fold::10]])
        is_q = np.array([b in held for b in base])
        queries = [i for i in np.where(is_q)[0] if i == np.where(base == base[i])[0][0]]
        rows = np.where(~is_q)[0]
        x = feats[rows]
        mean = x.mean(0)
        _, vecs = np.linalg.eigh(np.cov((x - mean).T, bias=True))
        top = vecs[:, ::-1]
        rng = np.random.default_rng(fold)
        cands = [[q] + list(rng.choice([c for c in queries if c != q], size=99, replace=False)) for q in queries]
        real += [int(np.argmax(text[c] @ image[c[0]]) == 0) for c in cands]
        for d in DS:
            post = (lambda a: unit(a)) if d == 0 else (lambda a: unit((a - mean) - ((a - mean) @ top[:, :d]) @ top[:, :d].T))
            nearest = rows[(post(feats[queries]) @ post(x).T).argmax(1)]
            hits[d] += [int(np.argmax(text[c] @ image[n]) == 0) for c, n in zip(cands, nearest)]
    result = {str(d): {"copy_top1": float(np.mean(h)), "n": len(h)} for d, h in hits.items()}
    best = max(DS, key=lambda d: np.mean(hits[d]))
    report = {"folds": 10, "candidates": 100, "real_top1": float(np.mean(real)), "per_remove_top": result, "best": best}
    print(json.dumps(report, indent=1))
    if out:
        json.dump(report, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
