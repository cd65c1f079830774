"""PyTorch's training speed on the configuration `cargo xtask bench train` measures, for a
side-by-side ratio (tools/train_speed.sh runs both).

The model is timm's VisionTransformer layout written out (patch embedding, cls token, position
embedding, pre-norm blocks with fused qkv and scaled_dot_product_attention as timm uses, GELU
MLP, LayerNorm eps 1e-6), the step is the same as mixq's FpTrainer: random crop with padding +
horizontal flip, cross-entropy with label smoothing, AdamW. Random images, as in the bench.

    python tools/train_speed.py --dim 64 --depth 6 --heads 4 --mlp-ratio 2 --batch 128
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Vit(nn.Module):
    def __init__(self, img, patch, chans, classes, dim, depth, heads, mlp_ratio):
        super().__init__()
        self.patch = nn.Conv2d(chans, dim, patch, patch)
        tokens = (img // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def augment(x, pad, gen):
    """Random crop with `pad` pixels of padding (background -1) and horizontal flips."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--img", type=int, default=28)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Vit(args.img, args.patch, 1, 10, args.dim, args.depth, args.heads, args.mlp_ratio)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    images = torch.rand(args.images, 1, args.img, args.img, generator=gen) * 2 - 1
    labels = torch.randint(0, 10, (args.images,), generator=gen)

    def epoch():
        start = time.perf_counter()
        order = torch.randperm(args.images, generator=gen)
        for i in range(0, args.images, args.batch):
            idx = order[i : i + args.batch]
            x = augment(images[idx], 2, gen)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    epoch()  # warm-up
    secs = sorted(epoch() for _ in range(args.repeat))[args.repeat // 2]
    steps = -(-args.images // args.batch)
    params = sum(p.numel() for p in model.parameters())
    print(f"| pytorch {torch.__version__} | dim {args.dim} depth {args.depth} ({params / 1e6:.2f} M) "
          f"| {args.batch} | {args.images / secs:.0f} | {1e3 * secs / steps:.1f} |")


if __name__ == "__main__":
    main()
