"""Lovász-Softmax per scan for point-cloud segmentation, with a torch_geometric-style batch vector.

Sparse and point networks (MinkowskiEngine, spconv, torchsparse, torch_geometric) output one row of class
scores per point, ``[N, C]``, for all the scans of a batch together, and say which scan each point comes
from with a ``[N]`` vector of scan ids (``batch`` in torch_geometric, the first coordinate column in
MinkowskiEngine and spconv).  Scans have different numbers of points.  ``batch=`` gives the Lovász loss of
each scan without padding or a loop over the scans.  Plain tensors here: a per-point MLP on random
"scans" whose label is a function of the point's position, trained with cross-entropy + Lovász-Softmax.

python examples/pointcloud.py
"""

from __future__ import annotations

import torch
from torch import nn

import lovasz

CLASSES = 5
IGNORE = 0  # SemanticKITTI's "unlabeled"


def random_scans(g: torch.Generator, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points ``[N, 3]``, labels ``[N]`` and the scan id of each point ``[N]`` (torch_geometric's ``batch``)."""
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    xyz = torch.rand(batch.numel(), 3, generator=g) * 2 - 1
    # Class by height band: labels 1..C-1; the points far from the sensor are unlabeled.
    labels = 1 + ((xyz[:, 2] + 1) / 2 * (CLASSES - 1)).long().clamp(max=CLASSES - 2)
    labels[xyz.norm(dim=1) > 1.5] = IGNORE
    return xyz, labels, batch


def main(steps: int = 60) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # per_image=True: the loss of each scan, averaged over the scans (the batch vector says which is which).
    criterion = lovasz.CrossEntropyLovaszLoss(per_image=True, ignore_index=IGNORE)
    for step in range(steps + 1):
        sizes = torch.randint(2000, 4000, (4,), generator=g).tolist()  # 4 scans of different sizes
        xyz, labels, batch = random_scans(g, sizes)
        scores = model(xyz)  # [N, C]: one row per point of every scan
        loss = criterion(scores, labels, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            per_scan = lovasz.lovasz_softmax(
                scores.detach(), labels, batch=batch, per_image=True, ignore_index=IGNORE, reduction="none"
            )
            shown = " ".join(f"{v:.3f}" for v in per_scan.tolist())
            print(f"step {step:3d}  CE + Lovász {loss.item():.4f}  Lovász per scan [{shown}]")


if __name__ == "__main__":
    main()
