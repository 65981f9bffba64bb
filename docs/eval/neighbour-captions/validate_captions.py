"""Chooses which training captions `index-captions` indexes, on the training split alone (offline;
numpy + safetensors).

Ten folds (as `../neighbour-metric/validate_remove_top.py`): each holds out 10% of the training
bases as unseen prompts. Each prompt (its base's first caption) copies the training image that owns
its nearest indexed caption among the other 90% of the bases: their first captions only
(`--captions first`), or every caption of theirs (`--captions all`). The mean and top D principal
directions of the indexed rows are removed before the cosine. The shipped proxy judge scores the
copy among 100 captions of the same fold. No held-out image or caption is read.

usage: validate_captions.py INDEX_ALL.safetensors DATA_DIR SCORER_DIR [out.json]
  INDEX_ALL: `index-captions --captions all` output (8 LLM layers), f16 or 8-bit; only its raw
  features are read.
"""
import json
import math
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

DS = [0, 10, 30, 50, 100]


def main(index_path, data_dir, scorer_dir, out=None):
    with safe_open(index_path, "np") as f:
        captions = json.loads(f.metadata()["captions"])
    t = load_file(index_path)
    if "features" in t:
        feats = t["features"].astype(np.float64)
    else:  # 8-bit rows around the mean (TextFeatures::to_safetensors_q8_with)
        feats = t["features_center"].astype(np.float64) + t["features_scale"][:, None] * t["features_q8"].astype(np.float64)
    row_of = {c: r for r, c in enumerate(captions)}
    data = json.load(open(f"{data_dir}/captions.json"))
    images = load_file(f"{data_dir}/images.safetensors")["images"]
    judge = load_file(f"{scorer_dir}/model.safetensors")
    train = [k for k, it in enumerate(data["items"]) if it["split"] == "train"]
    base_of = {k: data["items"][k]["base"] for k in train}
    first_item = {}
    for k in train:
        first_item.setdefault(base_of[k], k)

    erf = np.vectorize(math.erf)
    gelu = lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2)))
    lin = lambda x, n: x @ judge[n + ".weight"].T.astype(np.float64) + judge[n + ".bias"]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    text_of = lambda f: unit(lin(gelu(lin((f - judge["text_norm.mean"]) / judge["text_norm.std"], "text_proj.0")), "text_proj.1"))

    def image_of(items):
        pix = images[items].astype(np.float64).reshape(len(items), 32, 2, 32, 2, 3).mean((2, 4)).reshape(len(items), -1) / 127.5 - 1
        return unit(lin(gelu(lin(gelu(lin(pix, "image_proj.0")), "image_proj.1")), "image_proj.2"))

    bases = np.array(sorted(first_item))
    perm = np.random.default_rng(0).permutation(len(bases))
    hits = {(m, d): [] for m in ("first", "all") for d in DS}
    real = []
    for fold in range(10):
        held = set(bases[perm[fold::10]])
        queries = [first_item[b] for b in bases if b in held]
        q_feats = feats[[row_of[data["items"][k]["captions"][0]] for k in queries]]
        q_text = text_of(q_feats)
        rng = np.random.default_rng(fold)
        cands = [[i] + list(rng.choice([j for j in range(len(queries)) if j != i], size=99, replace=False)) for i in range(len(queries))]
        real_img = image_of(queries)
        real += [int(np.argmax(q_text[c] @ real_img[c[0]]) == 0) for c in cands]
        for mode in ("first", "all"):
            owner = {}
            for k in train:
                if base_of[k] in held:
                    continue
                caps = data["items"][k]["captions"]
                for c in caps[:1] if mode == "first" else caps:
                    owner.setdefault(c, k)
            rows = [row_of[c] for c in owner]
            owners = list(owner.values())
            x = feats[rows]
            mean = x.mean(0)
            _, vecs = np.linalg.eigh(np.cov((x - mean).T, bias=True))
            top = vecs[:, ::-1]
            for d in DS:
                post = (lambda a: unit(a)) if d == 0 else (lambda a: unit((a - mean) - ((a - mean) @ top[:, :d]) @ top[:, :d].T))
                nearest = [owners[j] for j in (post(q_feats) @ post(x).T).argmax(1)]
                copy_img = image_of(nearest)
                hits[(mode, d)] += [int(np.argmax(q_text[c] @ copy_img[c[0]]) == 0) for c in cands]
        print(fold, {f"{m}/{d}": round(float(np.mean(h)), 3) for (m, d), h in hits.items()}, flush=True)
    result = {f"{m}/remove_top={d}": {"copy_top1": float(np.mean(h)), "n": len(h)} for (m, d), h in hits.items()}
    report = {"folds": 10, "candidates": 100, "real_top1": float(np.mean(real)), "copy": result}
    print(json.dumps(report, indent=1))
    if out:
        json.dump(report, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
