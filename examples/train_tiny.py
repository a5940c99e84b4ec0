"""Train a tiny segmentation network on generated shapes with Lovász-Softmax and watch the loss fall.

python examples/train_tiny.py
"""

from __future__ import annotations

import torch
from torch import nn

import lovasz


def make_batch(g: torch.Generator, b: int = 8, size: int = 32, num_classes: int = 3):
    """Images with a random disc (class 1) and a random square (class 2) on background (class 0)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    target = torch.zeros(b, size, size, dtype=torch.long)
    for i in range(b):
        cy, cx = torch.randint(6, size - 6, (2,), generator=g).tolist()
        r = int(torch.randint(3, 7, (1,), generator=g))
        target[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        sy, sx = torch.randint(0, size - 8, (2,), generator=g).tolist()
        target[i, sy : sy + 8, sx : sx + 8] = 2
    image = torch.stack([(target == k).float() for k in range(1, num_classes)], 1)
    image = image + 0.6 * torch.randn(image.shape, generator=g)
    return image, target


def main(steps: int = 60) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = lovasz.LovaszSoftmaxLoss()
    for step in range(steps + 1):
        image, target = make_batch(g)
        loss = criterion(model(image), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            print(f"step {step:3d}  lovasz-softmax loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
