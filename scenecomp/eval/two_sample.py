"""The two-sample classifier test: can a fresh classifier tell two image sets apart?

A small CNN, trained from scratch on half of each set, is scored on the other
halves: 0.5 means the sets are indistinguishable to it, 1.0 fully separable.
The evaluation runs it for real vs generated scenes, object crops (the same
mask for both, so only the painting differs) and backgrounds, and beside each
for two disjoint real sets (the calibration: it should come out near 0.5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenecomp.images import to_float
from scenecomp.nets import with_detail

EPOCHS = 15
REPEATS = 4  # one figure spreads by about +-0.05 with the seed (docs/RESULTS.md): the evaluation reports a mean
MIN_STEPS = 100  # small sets still get enough steps to learn an obvious difference
BATCH_SIZE = 32


def _classifier(channels: int) -> nn.Module:
    """Three strided convolutions over the image and its detail (`with_detail`: without it the small CNN memorises
    the training images' colours and layouts before it finds grain, streaks or grid artefacts), global mean and max
    pooling, one logit: small enough to train on 500 + 500 images of 64x64 in seconds on one core."""
    torch.manual_seed(0)  # its initial weights are part of the test; the caller forks the RNG

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(
                nn.Conv2d(2 * channels, 16, 4, 2, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(16, 32, 4, 2, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(32, 64, 4, 2, 1),
                nn.LeakyReLU(0.2),
            )
            self.head = nn.Linear(128, 1)

        def forward(self, x):
            h = self.trunk(with_detail(x))
            return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))[:, 0]

    return Net()


def two_sample_accuracy(
    a: torch.Tensor, b: torch.Tensor, seed: int = 0, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE
) -> float:
    """Held-out accuracy of a fresh classifier telling ``a`` from ``b``.

    a, b: ``[N,C,H,W]`` and ``[M,C,H,W]`` (uint8, or floats in [-1,1]). Both are
    cut to ``n = min(N, M)`` so that guessing one class scores 0.5. One
    permutation (from ``seed``) splits both the same way, so paired samples
    (``a[i]`` and ``b[i]`` from the same layout) fall on the same side. The
    classifier trains ``epochs`` passes (at least ``MIN_STEPS`` steps) over
    the first halves (random horizontal flips) and is scored on the second halves; nan when n < 4.
    """
    n = min(len(a), len(b))
    if n < 4:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    train, test = order[: n // 2], order[n // 2 :]
    x_train = torch.cat([to_float(a[train]), to_float(b[train])])
    y_train = torch.cat([torch.zeros(len(train)), torch.ones(len(train))])
    with torch.random.fork_rng(devices=[]):
        net = _classifier(a.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        steps = max(MIN_STEPS, epochs * math.ceil(len(x_train) / batch_size))
        for _ in range(steps):
            rows = torch.randint(0, len(x_train), (batch_size,), generator=gen)
            x = x_train[rows]
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.binary_cross_entropy_with_logits(net(x), y_train[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            right = (net(to_float(a[test])) < 0).sum() + (net(to_float(b[test])) > 0).sum()
    return float(right) / (2 * len(test))


def two_sample_figures(a: torch.Tensor, b: torch.Tensor, repeats: int = REPEATS) -> list[float]:
    """`two_sample_accuracy` with seeds ``0 .. repeats-1`` (each its own split of the sets and batch order):
    the figures whose mean and range the evaluation reports."""
    return [two_sample_accuracy(a, b, seed=s) for s in range(repeats)]
