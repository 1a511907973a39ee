"""CPU cost of the lesion read-out's box mean and cube maximum against torch's poolings.

Usage::

    python Testing/Benchmarks/bench_filters.py --out bench_out/filters.json [--reps 7]

Why these two: the box mean (``LesionLoad._mean``, running sums) and the cube maximum
(``model.fusion.cube_max``, shifted-view maxima) run on every training batch, and the
library poolings (``F.avg_pool3d`` / ``F.max_pool3d``, as one 3D or three 1D poolings) give
the same values (``test_model.py`` proves it). This measures which is cheaper, as CPU time
of one thread (``time.process_time``), which shared machines disturb far less than wall
time. Medians over ``--reps`` interleaved repetitions, in milliseconds:

- ``train_step``: one optimiser step of the default ``FusionModel`` on 16 cases of the
  64x80x64 model grid, with each box mean;
- ``readout``: ``LesionLoad`` forward and backward on 8 cases (what IG differentiates);
- ``cube_max``: the lesion count's 3-voxel cube on 16 cases and the explanation opening's
  5-voxel cube on one case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from autoimmuneai.model.fusion import FusionModel, LesionLoad, ModelConfig, cube_max

GRID = (64, 80, 64)


def separable_avg_pool(x: torch.Tensor, w: int) -> torch.Tensor:
    """The box mean as three one-axis ``avg_pool3d`` (zero padding counted)."""
    for kernel in ((w, 1, 1), (1, w, 1), (1, 1, w)):
        pad = tuple(k // 2 for k in kernel)
        x = F.avg_pool3d(x, kernel, stride=1, padding=pad, count_include_pad=True)
    return x


def separable_max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """The cube maximum as three one-axis ``max_pool3d``."""
    for kernel in ((k, 1, 1), (1, k, 1), (1, 1, k)):
        x = F.max_pool3d(x, kernel, stride=1, padding=tuple(q // 2 for q in kernel))
    return x


def cpu_ms(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3


def compare(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median CPU milliseconds of each variant, the repetitions interleaved."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in variants.items():
            times[name].append(cpu_ms(fn))
    return {name: round(statistics.median(t), 1) for name, t in times.items()}


def with_mean(mean: Callable[[torch.Tensor, int], torch.Tensor], fn: Callable[[], object]):
    """``fn`` run with ``LesionLoad``'s box mean replaced by ``mean``."""
    original = LesionLoad.__dict__["_mean"]

    def run() -> object:
        LesionLoad._mean = staticmethod(mean)  # type: ignore[method-assign]
        try:
            return fn()
        finally:
            LesionLoad._mean = original  # type: ignore[method-assign]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/filters.json"))
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.randn(16, 1, *GRID) + 3.0 * (torch.rand(16, 1, *GRID) > 0.999)
    model = FusionModel(ModelConfig(n_serology=40, n_classes=5))
    optimiser = torch.optim.AdamW(model.parameters())
    serology, labels = torch.randn(16, 40), torch.randint(0, 5, (16,))

    def train_step() -> None:
        loss = F.cross_entropy(model(images, serology), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def readout() -> None:
        x = images[:8].clone().requires_grad_(True)
        model.image_encoder.lesions(x).sum().backward()

    running = LesionLoad.__dict__["_mean"].__func__
    means = {"running_sums": running, "separable_avg_pool3d": separable_avg_pool}
    one = images[:1]
    figures = {
        "unit": "median CPU ms, one thread",
        "train_step": compare({n: with_mean(m, train_step) for n, m in means.items()}, args.reps),
        "readout": compare({n: with_mean(m, readout) for n, m in means.items()}, args.reps),
        "cube_max_3_batch16": compare(
            {
                "cube_max": lambda: cube_max(images, 3),
                "separable_max_pool3d": lambda: separable_max_pool(images, 3),
                "max_pool3d": lambda: F.max_pool3d(images, 3, stride=1, padding=1),
            },
            args.reps,
        ),
        "cube_max_5_batch1": compare(
            {
                "cube_max": lambda: cube_max(one, 5),
                "separable_max_pool3d": lambda: separable_max_pool(one, 5),
                "max_pool3d": lambda: F.max_pool3d(one, 5, stride=1, padding=2),
            },
            args.reps,
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
