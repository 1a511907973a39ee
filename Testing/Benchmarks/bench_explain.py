"""Benchmark the explanation step: speed ratios and quality figures, printed as JSON.

Speed (one run, same machine, same model and case, demo grid 64x80x64 by default):
one forward+backward pass; the whole explain step (default attribution + lab contributions
+ map back to the input grid + evidence regions + Slicer segmentation/scene files); IG's
relative convergence delta; MONAI's OcclusionSensitivity with its default settings.

Quality: with ``--bundle`` and ``--cohort`` (a trained bundle and a synthetic cohort with
lesion masks) ``measure_explanation_quality`` is run on it; without them, on the small toy
model that the tests train (Testing/Python/test_explain.py).

    python Testing/Benchmarks/bench_explain.py --out explain_bench.json
    python Testing/Benchmarks/bench_explain.py --bundle B --cohort M --cases 10 --out f.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "Python"))

from autoimmuneai.data.imaging import Volume  # noqa: E402
from autoimmuneai.explain.attribution import DEFAULT_METHOD, explain, input_gradients_only  # noqa: E402
from autoimmuneai.explain.quality import (  # noqa: E402
    measure_explanation_quality,
    quality_for_cases,
)
from autoimmuneai.explain.regions import evidence_regions  # noqa: E402
from autoimmuneai.model.fusion import FusionModel, ModelConfig  # noqa: E402
from autoimmuneai.preprocess.model_grid import ModelGrid  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed(model, encoder, grid: ModelGrid, volume: Volume, labs: dict, serology, monai: bool):
    """Ratios of the explain step to one forward+backward pass, and to MONAI occlusion."""
    from autoimmuneai.output.mrml import SegmentSpec, write_case_scene

    model.eval()
    sample = grid.to_model(volume)
    image = sample.tensor[None]

    def forward_backward():
        x = image.clone().requires_grad_(True)
        model(x, serology)[0].max().backward()

    # the floor for a gradient explanation: one input gradient (weights frozen, as explain()
    # freezes them); the pass with weight gradients is reported beside it
    forward_backward()  # warm-up
    fb_weights = _median_time(forward_backward, 5)
    with input_gradients_only(model):
        forward_backward()
        fb = _median_time(forward_backward, 5)

    def explain_step(out_dir: Path):
        e = explain(model, image, serology, encoder=encoder, labs=labs)
        attribution = grid.to_input(e.image_map, sample, mode="linear")
        labelmap, regions = evidence_regions(attribution, volume.affine, e.target_name)
        segments = [SegmentSpec(r.label, r.name, tuple(r.color), r.band) for r in regions]
        write_case_scene(
            out_dir, image=volume, attribution=Volume(attribution, volume.affine),
            labelmap=labelmap, segments=segments, lab_contributions=e.lab_contributions,
            probabilities={c: 0.2 for c in encoder.panel.classes},
            survival=([0.0, 12.0], [1.0, 0.9]), class_name=e.target_name,
        )  # fmt: skip
        return e

    with tempfile.TemporaryDirectory() as tmp:
        e = explain_step(Path(tmp) / "warm")
        step_times, attr_times = [], []
        for i in range(3):
            start = time.perf_counter()
            e = explain_step(Path(tmp) / f"case{i}")
            step_times.append(time.perf_counter() - start)
            attr_times.append(e.seconds)
    step = float(np.median(step_times))
    out = {
        "device": f"cpu, {torch.get_num_threads()} threads",
        "grid": list(grid.shape),
        "input_shape": list(volume.shape),
        "forward_backward_s": fb,
        "forward_backward_with_weight_gradients_s": fb_weights,
        "explain_step_s": step,
        "attribution_s": float(np.median(attr_times)),
        "explain_step_over_forward_backward": step / fb,
        "ig_n_steps": e.n_steps,
        "ig_relative_delta": e.relative_delta,
        "method": DEFAULT_METHOD,
    }
    if monai:
        from monai.visualize import OcclusionSensitivity

        class ImageOnly(torch.nn.Module):
            def forward(self, x):
                return model(x, serology.expand(x.shape[0], -1))

        occ = OcclusionSensitivity(ImageOnly().eval(), verbose=False)
        start = time.perf_counter()
        with torch.no_grad():
            occ(image)
        out["monai_occlusion_default_s"] = time.perf_counter() - start
        out["monai_over_attribution"] = out["monai_occlusion_default_s"] / out["attribution_s"]
        out["monai_over_explain_step"] = out["monai_occlusion_default_s"] / step
    return out


def toy_quality(n_cases: int) -> dict:
    from test_explain import toy_quality_cases, trained_toy

    model, encoder = trained_toy()
    cases = toy_quality_cases(encoder, range(500, 500 + n_cases))
    report = quality_for_cases(
        model, encoder, cases, stages=("head", "fusion", "all"),
        explain_kwargs={"occlusion": {"occlusion_window": 6, "occlusion_stride": 4}},
    )  # fmt: skip
    report["model"] = "toy (test_explain.trained_toy), 24x28x24 grid at 6 mm"
    return report


def bundle_speed(bundle_path: Path, cohort_path: Path, monai: bool) -> dict:
    """Speed with a trained bundle on the first test case of ``cohort_path``.

    IG's step count (adaptive) and convergence delta depend on the weights, so this is the
    figure to report; :func:`demo_speed` times an untrained network.
    """
    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.data.imaging import load_volume
    from autoimmuneai.inference.predictor import Predictor
    from autoimmuneai.model.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    cohort = load_cohort(cohort_path, bundle.panel)
    case = next(c for c in cohort.cases if c.split in (None, "", "test"))
    volume = load_volume(case.images[bundle.panel.channels[0]])
    prepared = Predictor(bundle).prepare(volume, case.labs)
    out = speed(
        bundle.model, bundle.encoder, bundle.grid, volume, case.labs, prepared.serology, monai
    )
    out["case_id"] = case.case_id
    return out


def demo_speed(monai: bool) -> dict:
    """Speed on the demo grid with the default network (timing does not depend on weights)."""
    from test_explain import MS, PANEL, encode, head_image, parsed_labs, toy_labs

    from autoimmuneai.data.serology import SerologyEncoder

    rng = np.random.default_rng(0)
    values, missing = toy_labs(rng, MS)
    encoder = SerologyEncoder(PANEL).fit(values[None].repeat(4, 0), missing[None].repeat(4, 0))
    torch.manual_seed(0)
    model = FusionModel(ModelConfig(n_serology=encoder.n_encoded, n_classes=len(PANEL.classes)))
    grid = ModelGrid()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (96, 112, 96)
    affine[:3, 3] = -(np.array(shape) - 1)
    volume = head_image(affine, shape, [(np.array([25.0, 10.0, 5.0]), 8.0)], 0)
    return speed(
        model, encoder, grid, volume, parsed_labs(values, missing),
        encode(encoder, values, missing), monai,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--cohort", type=Path)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--split", default=None)
    parser.add_argument("--skip-monai", action="store_true", help="skip MONAI occlusion (slow)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    figures: dict = {}
    if not args.skip_speed:
        figures["speed"] = (
            bundle_speed(args.bundle, args.cohort, not args.skip_monai)
            if args.bundle and args.cohort
            else demo_speed(not args.skip_monai)
        )
    if not args.skip_quality:
        if args.bundle and args.cohort:
            with tempfile.TemporaryDirectory() as tmp:
                quality = measure_explanation_quality(
                    args.bundle, args.cohort, tmp, split=args.split, n_cases=args.cases
                )
        else:
            quality = toy_quality(args.cases)
        for method in quality["methods"].values():
            method.pop("cases", None)
        figures["quality"] = quality
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
