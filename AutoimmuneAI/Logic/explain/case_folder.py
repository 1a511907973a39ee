"""Explain one predicted case into its folder: attribution volume, evidence segments, scene, snapshot.

Glue between the stages: ``explain.attribution`` (Captum, model grid) -> the bundle's
preprocessing (back to the patient's own geometry) -> ``explain.regions`` (evidence regions)
-> ``output.mrml`` (Slicer files) -> ``output.snapshot`` (PNG). Returns the explanation part
of ``prediction.json``.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..contracts import CASE_FILES
from ..data.imaging import Volume, save_volume
from ..output.mrml import SegmentSpec, write_case_scene
from .regions import DEFAULT_BANDS, evidence_regions, name_by_anatomy


def explain_into(
    predictor,
    prepared,
    prediction: dict,
    case_dir: Path,
    *,
    method: str | None = None,
    target: str | None = None,
    snapshot: bool = True,
    bands: tuple[float, ...] | None = None,
) -> dict:
    """Write the explanation files of one case and return their summary for prediction.json."""
    from .attribution import DEFAULT_METHOD, DELTA_TOLERANCE, explain

    bundle = predictor.bundle
    classes = predictor.classes
    target_name = target or prediction["predicted"]
    method = method or bundle.metadata.get("explain", {}).get("default_method", DEFAULT_METHOD)
    explanation = explain(
        predictor.model,
        prepared.image,
        prepared.serology,
        encoder=bundle.encoder,
        labs=prepared.labs,
        target=classes.index(target_name),
        method=method,
    )
    attribution = bundle.grid.to_input(explanation.image_map, prepared.sample, mode="linear")
    attribution = np.asarray(attribution, dtype=np.float32)
    volume = prepared.volume
    labelmap, regions = evidence_regions(
        attribution, volume.affine, target_name, bands=tuple(bands) if bands else DEFAULT_BANDS
    )
    matrix = getattr(prepared.sample, "matrix", None)  # template -> patient (preprocessing)
    if matrix is not None:
        regions = name_by_anatomy(regions, target_name, np.linalg.inv(matrix))
    region_channels = _region_channels(bundle, prepared, explanation, labelmap, regions)
    if region_channels:  # name the contrast that carries each region's evidence
        regions = [replace(r, name=f"{r.name} ({region_channels[r.label]})") for r in regions]
    segments = [SegmentSpec(r.label, r.name, r.color, r.band) for r in regions]
    write_case_scene(
        case_dir,
        image=volume,
        attribution=Volume(attribution, volume.affine),
        labelmap=labelmap,
        segments=segments,
        lab_contributions=explanation.lab_contributions,
        probabilities=prediction["probabilities"],
        survival=(prediction["survival"]["times_months"], prediction["survival"]["probability"]),
        class_name=target_name,
    )
    if matrix is not None:  # preprocessing outputs: the brain mask and the template-space image
        save_volume(
            Volume(bundle.grid.native_brain_mask(prepared.sample), volume.affine),
            case_dir / CASE_FILES["brain_mask"],
        )
        image_mni = bundle.grid.template_volume(prepared.sample)
        save_volume(image_mni, case_dir / CASE_FILES["image_mni"])
    if snapshot:
        from ..output.snapshot import render_snapshot

        center = regions[0].centroid_ras if regions else _center_ras(volume)
        render_snapshot(
            volume,
            labelmap,
            segments,
            center,
            case_dir / "snapshot.png",
            case_id=str(prediction["case_id"]),
            synthetic="oracle" in bundle.baselines,  # trained with a generator's ground truth
        )
    positive = attribution[attribution > 0]
    warnings = list(prediction.get("warnings", []))
    if explanation.relative_delta is not None and explanation.relative_delta > DELTA_TOLERANCE:
        warnings.append(
            f"integrated gradients did not converge within {explanation.n_steps} steps "
            f"(delta {explanation.relative_delta:.1%} of the explained output difference, "
            f"tolerance {DELTA_TOLERANCE:.0%}): read the map's fine detail with care"
        )
    return {
        "warnings": warnings,
        "explanation": {
            "explained_class": target_name,
            "method": method,
            "convergence_delta": explanation.convergence_delta,
            "relative_delta": explanation.relative_delta,
            "n_steps": explanation.n_steps,
            "seconds": round(explanation.seconds, 3),
            "channel_share": explanation.channel_share,
            "attribution": {
                "positive_sum": float(positive.sum()),
                "negative_sum": float(attribution[attribution < 0].sum()),
                "max": float(attribution.max()) if attribution.size else 0.0,
            },
        },
        "regions": [
            _region_json(r) | ({"channel": region_channels[r.label]} if region_channels else {})
            for r in regions
        ],
        "lab_contributions": explanation.lab_contributions,
        "modality_share": explanation.modality_share,
    }


def _region_channels(bundle, prepared, explanation, labelmap, regions) -> dict[int, str]:
    """Region label -> the channel with the most positive attribution inside it (multi-channel
    panels only; each channel's map brought back to the patient's voxels)."""
    maps = explanation.channel_maps
    channels = list(bundle.panel.channels)
    if maps is None or len(channels) < 2 or len(maps) != len(channels) or not regions:
        return {}
    native = [
        np.clip(bundle.grid.to_input(m, prepared.sample, mode="linear"), 0.0, None) for m in maps
    ]
    out = {}
    for r in regions:
        inside = labelmap == r.label
        out[r.label] = channels[int(np.argmax([float(m[inside].sum()) for m in native]))]
    return out


def _region_json(region) -> dict:
    d = asdict(region)
    d["centroid_ras"] = [round(float(x), 2) for x in region.centroid_ras]
    d["color"] = [round(float(x), 3) for x in region.color]
    return d


def _center_ras(volume: Volume) -> tuple[float, float, float]:
    center = (np.array(volume.array.shape) - 1) / 2.0
    x, y, z = (float(v) for v in (volume.affine @ np.append(center, 1.0))[:3])
    return x, y, z
