"""Peer check of a checkpoint mixq trained: does timm load it and compute the same thing?

Builds the timm model a mixq model card describes (ViT/DeiT family: timm's VisionTransformer;
Swin: timm's SwinTransformer), loads the shipped safetensors file with strict=True, evaluates
the data set's 10,000 test images in PyTorch (read from the IDX files by this script, normalised
(v / 255 - mean) / std as the card says) and compares with mixq:

  * top-1 of timm and of mixq (`cargo xtask eval --logits FILE`) within 0.05 points;
  * max |logit difference| over every test image <= 1e-4.

Usage (tools/timm_peer_check.sh makes the venv and runs mixq's side):
  python tools/timm_peer_check.py models/fmnist-deit.toml mixq_logits.safetensors IDX_DIR
Exit code 0 when both checks pass, 1 otherwise.
"""
import gzip
import os
import struct
import sys
import tomllib

import numpy as np
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch


def read_idx(path):
    if not os.path.exists(path):
        path += ".gz"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 8, f"{path}: not an IDX file of bytes"
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


def build(card):
    import timm.models.swin_transformer as swin
    import timm.models.vision_transformer as vit

    a = card["arch"]
    if a["family"] == "vit":
        return vit.VisionTransformer(
            img_size=a["img_size"],
            patch_size=a["patch_size"],
            in_chans=a["in_chans"],
            num_classes=a["num_classes"],
            embed_dim=a["embed_dim"],
            depth=a["depth"],
            num_heads=a["num_heads"],
            mlp_ratio=a["mlp_ratio"],
        )
    if a["family"] == "swin":
        return swin.SwinTransformer(
            img_size=a["img_size"],
            patch_size=a["patch_size"],
            in_chans=a["in_chans"],
            num_classes=a["num_classes"],
            embed_dim=a["embed_dim"],
            depths=tuple(a["depths"]),
            num_heads=tuple(a["num_heads"]),
            window_size=a["window_size"],
            mlp_ratio=a["mlp_ratio"],
        )
    raise SystemExit(f"family {a['family']!r}: not a classification model")


def main():
    card_path, mixq_logits, idx_dir = sys.argv[1:4]
    with open(card_path, "rb") as f:
        card = tomllib.load(f)
    weights = os.path.join(os.path.dirname(card_path), card["shipped"])
    model = build(card).eval()
    model.load_state_dict(load_torch(weights), strict=True)

    images = read_idx(os.path.join(idx_dir, "t10k-images-idx3-ubyte")).astype(np.float32)
    labels = read_idx(os.path.join(idx_dir, "t10k-labels-idx1-ubyte")).astype(np.int64)
    mean, std = card["preprocess"]["mean"][0], card["preprocess"]["std"][0]
    x = torch.from_numpy((images / 255.0 - mean) / std).float().unsqueeze(1)
    with torch.no_grad():
        timm_logits = torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)]).numpy()

    ours = load_file(mixq_logits)
    assert (ours["labels"] == labels).all(), "mixq evaluated other images or another order"
    top1_timm = 100.0 * (timm_logits.argmax(1) == labels).mean()
    top1_mixq = 100.0 * (ours["logits"].argmax(1) == labels).mean()
    max_diff = float(np.abs(timm_logits - ours["logits"]).max())
    ok = abs(top1_timm - top1_mixq) <= 0.05 and max_diff <= 1e-4
    print("| model | images | timm top-1 % | mixq top-1 % | max abs logit diff | pass |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {card['name']} | {len(labels)} | {top1_timm:.2f} | {top1_mixq:.2f} | "
        f"{max_diff:.2e} | {'yes' if ok else 'NO'} |"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
