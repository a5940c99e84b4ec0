#!/usr/bin/env bash
# Issue 9 experiment: 4 processes x 2 canvases (global batch 8), per-rank vs global Lovász batch loss,
# fine-tuned from each seed's own cross-entropy model (8 epochs from scratch on the digits canvases, 11 classes).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/dist
for s in 0 1 2; do
  [ -f runs/dist/pre$s/results.json ] || .venv/bin/lovasz train --data digits --loss ce --epochs 8 --lr 3e-3 \
    --batch-size 8 --train-size 1000 --seed $s --no-progress --overwrite --out runs/dist/pre$s > runs/dist-pre$s.log 2>&1
  for sync in local global; do
    .venv/bin/torchrun --standalone --nproc-per-node 4 --no-python .venv/bin/lovasz train --data digits --loss lovasz \
      --lovasz-sync $sync --init runs/dist/pre$s/model.pt --epochs 3 --lr 5e-4 --batch-size 8 \
      --train-size 1000 --seed $s --no-progress --out runs/dist/seed$s-$sync > runs/dist-seed$s-$sync.log 2>&1
  done
done
.venv/bin/python benchmarks/distributed_experiment.py runs/dist --out benchmarks/results/distributed_experiment.md
