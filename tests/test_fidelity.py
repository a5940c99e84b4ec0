"""Gradient fidelity of the binned engine where the exact weights concentrate on a few top-ranked
pixels: a one-pixel class, an absent class with near-equal scores, binary losses at initialisation-scale
logits, a missed small object next to confident false positives; and random, peaked and imbalanced
logits.  At the default ``bins``, every backend's gradient has cosine >= 0.999 with the exact engine's
and the loss is within the bound ``f(e)/P + 2^lo·U`` of the exact one (``U <= 1`` for bounded errors)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lovasz
from lovasz.engine import Binning, backends

BACKENDS = ["torch"] + (["numba"] if backends.numba_installed() else [])
BINNING = Binning.for_bins(lovasz.DEFAULT_BINS)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def one_pixel_class(g, scale):
    b, c, h, w = 3, 5, 32, 32
    t = torch.randint(0, 3, (b, h, w), generator=g)
    for i in range(b):
        t[i, int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))] = 3 + i % 2
    return "softmax", torch.randn(b, c, h, w, generator=g) * scale, t, dict(per_image=True)


def absent_class_near_equal(g, scale):
    b, c, h, w = 3, 5, 32, 32
    t = torch.randint(0, 4, (b, h, w), generator=g)  # class 4 absent everywhere
    return "softmax", torch.randn(b, c, h, w, generator=g) * 0.01 * scale, t, dict(classes="all")


def binary_init_scale(kind):
    def make(g, scale):
        t = (torch.rand(3, 1, 48, 48, generator=g) < 0.3).long()
        return kind, torch.randn(3, 1, 48, 48, generator=g) * 0.01 * scale, t, dict()

    return make


def missed_small_object(g, scale):
    b, h, w = 3, 32, 32
    t = torch.zeros(b, h, w, dtype=torch.long)
    t[:, 8:11, 8:11] = 1  # a small object, missed
    x = torch.randn(b, 3, h, w, generator=g)
    x[:, 0] += 8.0 * scale  # predicted background, confidently
    x[:, 1, 16:24, 16:24] += 14.0 * scale  # confident false positives next to it
    x[:, 2, 2:6, 20:30] += 14.0 * scale
    return "softmax", x, t, dict(per_image=True)


def random_logits(g, scale):
    t = torch.randint(0, 21, (2, 32, 32), generator=g)
    return "softmax", torch.randn(2, 21, 32, 32, generator=g) * 4 * scale, t, dict()


def peaked(g, scale):
    b, c, h, w = 2, 21, 32, 32
    t = torch.randint(0, c, (b, h, w), generator=g)
    x = torch.randn(b, c, h, w, generator=g)
    x.scatter_add_(1, t[:, None], torch.full((b, 1, h, w), 10.0 * scale))
    return "softmax", x, t, dict()


def imbalanced(g, scale):
    b, c, h, w = 2, 21, 32, 32
    t = torch.where(torch.rand(b, h, w, generator=g) < 0.9, 0, torch.randint(0, c, (b, h, w), generator=g))
    return "softmax", torch.randn(b, c, h, w, generator=g) * 4 * scale, t, dict(per_image=True)


REGIMES = {
    "one-pixel class, per image": one_pixel_class,
    "absent class, near-equal scores, all classes": absent_class_near_equal,
    "sigmoid at initialisation-scale logits": binary_init_scale("sigmoid"),
    "hinge at initialisation-scale logits": binary_init_scale("hinge"),
    "missed small object next to confident false positives": missed_small_object,
    "random logits": random_logits,
    "peaked logits": peaked,
    "imbalanced labels, per image": imbalanced,
}


def _check(regime, backend, seed, scale):
    kind, x, t, kwargs = REGIMES[regime](torch.Generator().manual_seed(seed), scale)
    fn = getattr(lovasz, f"lovasz_{kind}")
    xe, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    exact = fn(xe, t, reduction="none", **kwargs)
    binned = fn(xb, t, reduction="none", bins=lovasz.DEFAULT_BINS, backend=backend, **kwargs)
    exact.sum().backward()
    binned.sum().backward()
    cos = _cosine(xe.grad, xb.grad)
    assert cos >= 0.999, f"{regime}, {backend}: gradient cosine {cos:.5f}"
    # Each reduced entry is a convex combination of group losses, each within the bound (U <= 1 for
    # bounded errors; hinge errors here are below 2).
    u = 2.0 if kind == "hinge" else 1.0
    assert (binned <= exact + 1e-5).all()
    assert (exact - binned <= exact / BINNING.per_octave + 2.0**BINNING.lo * u + 1e-5).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("regime", list(REGIMES))
def test_gradient_fidelity(regime, backend):
    for seed in range(2):
        _check(regime, backend, seed, 1.0)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(list(REGIMES)), st.sampled_from(BACKENDS), st.integers(0, 2**31 - 1), st.floats(0.5, 2.0))
def test_gradient_fidelity_property(regime, backend, seed, scale):
    _check(regime, backend, seed, scale)


@pytest.mark.skipif(not backends.numba_installed(), reason="numba not installed")
def test_numba_backward_bins_like_its_forward():
    # Per image, a batch gives each image the gradient it gets alone (forward and backward bin alike).
    _, x, t, _ = missed_small_object(torch.Generator().manual_seed(2), 1.0)
    xb = x.clone().requires_grad_(True)
    lovasz.lovasz_softmax(xb, t, per_image=True, bins=lovasz.DEFAULT_BINS, backend="numba", reduction="sum").backward()
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        lovasz.lovasz_softmax(xi, t[i : i + 1], per_image=True, bins=lovasz.DEFAULT_BINS, backend="numba").backward()
        assert torch.equal(xi.grad[0], xb.grad[i])
