"""Writes mixq's parity fixtures from timm, the peer that defines the models.

Run through tools/make_fixtures.sh (it makes its own venv). Output: tests/fixtures/*.safetensors
and *.json, committed, so CI never runs Python.

Weights are drawn with a wide spread (not timm's init, whose near-constant outputs hide bugs):
linear/conv weights normal(0, 0.15), biases normal(0, 0.1), LayerNorm gammas 1 +- 0.3, betas
normal(0, 0.1), tokens and position embeddings normal(0, 0.5), relative-position bias tables
normal(0, 1), heads normal(0, 0.6).
"""
import json
import os
import sys

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from timm.models.deit import VisionTransformerDistilled
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)


def spread_init(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
            if isinstance(module, torch.nn.LayerNorm):
                if leaf == "weight":
                    p.copy_(1.0 + 0.3 * (2 * torch.rand(p.shape, generator=g) - 1))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "relative_position_bias_table" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif leaf in ("cls_token", "dist_token", "pos_embed"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.startswith("head"):
                # Heads get a wider spread so logits are O(1-10) after the final norm and pooling.
                p.copy_((0.6 if leaf == "weight" else 0.3) * torch.randn(p.shape, generator=g))
            elif leaf == "bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return model.eval()


def write_model(name, model, block0, img, seed):
    spread_init(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn((2, 3, img, img), generator=g)
    captured = {}
    block0.register_forward_hook(lambda m, i, o: captured.__setitem__("block0", o.detach().clone()))
    with torch.no_grad():
        logits = model(x)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(OUT, f"{name}.safetensors"))
    save_file(
        {"input": x.contiguous(), "logits": logits.contiguous(), "block0": captured["block0"].contiguous()},
        os.path.join(OUT, f"{name}_io.safetensors"),
    )
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params, logits std {logits.std():.3f}")


vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
write_model("vit_tiny", vit, vit.blocks[0], 32, 1)
# The same weights as a PyTorch pickle nested under "model", as the original DeiT releases are.
torch.save({"model": vit.state_dict()}, os.path.join(OUT, "vit_tiny_nested.pth"))
deit = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
write_model("deit_tiny_distilled", deit, deit.blocks[0], 32, 2)
swin = SwinTransformer(
    img_size=64, patch_size=4, window_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4), num_classes=10
)
write_model("swin_tiny", swin, swin.layers[0].blocks[0], 64, 3)
# Layer-scale (ls1/ls2, as DeiT-III and DINOv2) and patch 14; the spread init draws the gammas too.
vit_ls = VisionTransformer(
    img_size=42, patch_size=14, embed_dim=48, depth=2, num_heads=3, num_classes=10, init_values=1e-5
)
write_model("vit_ls_p14", vit_ls, vit_ls.blocks[0], 42, 4)

# Parameter counts of the full-size architectures, as timm builds them.
counts = {}
for arch in [
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_small_distilled_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "swin_base_patch4_window7_224",
]:
    m = timm.create_model(arch, pretrained=False)
    counts[arch] = sum(p.numel() for p in m.parameters())
    print(arch, counts[arch])
with open(os.path.join(OUT, "timm_param_counts.json"), "w") as f:
    json.dump(counts, f, indent=1, sort_keys=True)

# timm's eval transform of a real photo (scikit-learn's china.jpg, committed beside it).
import sklearn

photo = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "china.jpg")
img = Image.open(photo).convert("RGB")
with open(photo, "rb") as src, open(os.path.join(OUT, "china.jpg"), "wb") as dst:
    dst.write(src.read())
out = {}
for key, arch, size in [("deit_160", "deit_small_patch16_224", 160), ("vit_96", "vit_small_patch16_224", 96)]:
    m = timm.create_model(arch, pretrained=False, img_size=size)
    cfg = resolve_data_config({}, model=m)
    cfg["input_size"] = (3, size, size)
    t = create_transform(**cfg)
    print(key, cfg, t)
    out[key] = t(img).contiguous()
save_file(out, os.path.join(OUT, "china_eval.safetensors"))

# timm's position-embedding resampling (resample_abs_pos_embed: prefix tokens kept, the grid
# resized bicubic, with and without antialias), down 7x7 -> 5x5 and up 7x7 -> 9x9.
from timm.layers import resample_abs_pos_embed

g = torch.Generator().manual_seed(7)
pos = torch.randn((1, 1 + 7 * 7, 6), generator=g)
resampled = {"pos_embed": pos.contiguous()}
for side in (5, 9):
    for aa in (False, True):
        out_pe = resample_abs_pos_embed(pos, new_size=[side, side], num_prefix_tokens=1, interpolation="bicubic", antialias=aa)
        resampled[f"to{side}_aa{int(aa)}"] = out_pe.contiguous()
save_file(resampled, os.path.join(OUT, "pos_embed_resample.safetensors"))
print("fixtures written to", os.path.abspath(OUT))
