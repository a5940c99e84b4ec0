"""Train a tiny segmentation network on generated shapes with Lovász-Softmax and watch the loss fall.

The shapes are fully synthetic (lovasz.experiments.data.synthetic_shapes); `lovasz demo` is the real-data version.

python examples/train_tiny.py
"""

from __future__ import annotations

import torch
from torch import nn

import lovasz
from lovasz.experiments.data import synthetic_shapes


def main(steps: int = 60) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = lovasz.LovaszSoftmaxLoss()
    for step in range(steps + 1):
        image, target = synthetic_shapes(g, 8, noise=0.6)
        loss = criterion(model(image), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            print(f"step {step:3d}  lovasz-softmax loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
