"""Proof that explanations are faithful, measured where the truth is known (synthetic lesions).

Per method, averaged over cases:

- Localisation: relevance mass accuracy (positive attribution inside the true lesions /
  all positive attribution, on the input image's grid, as the user sees it) against the
  lesion-volume fraction of the head (what a random map scores), and the pointing game (is
  the map's maximum within ``POINTING_TOLERANCE_MM`` of a lesion voxel).
- Sanity (Adebayo et al. 2018, model-parameter randomisation): the weights are re-initialised
  top-down (the heads first, the image stem last) and the Spearman rank correlation between
  the trained model's map and the randomised model's map is computed over the head
  (foreground of the model-grid image). ``randomisation_spearman`` uses the signed maps (the
  paper's "no ABS" variant, which is what the product shows: evidence for vs against);
  ``randomisation_spearman_abs`` (the magnitudes) is reported beside it, computed over the
  head voxels where either map is non-zero: most voxels are exactly 0 in both maps (the
  "hyperintensity" baseline differs from the image only at bright spots), and counted in,
  those shared zeros alone would make it near 1. A method whose |Spearman| exceeds
  ``SANITY_MAX_SPEARMAN`` (a strong negative correlation is structure too) fails the check
  and is flagged.
- Faithfulness: the deletion curve against the same curve for a random order. Head voxels
  are deleted in order of attribution *magnitude* (the lesion read-out contrasts a spot with
  its surroundings, so a lesion's rim carries negative attribution though it belongs to the
  lesion: deleted in signed order, the core goes and the rim stays behind as a new bright
  spot), ties in random order. A deleted voxel takes the value of the image's grey-level
  opening there (the tissue around it without bright spots: an in-painting, so no dark hole
  is left in a lesion's shape for the network to read). The curves run over the first
  ``DELETION_WINDOW`` of the head's voxels (about 20 times the lesions' share of the head;
  further on deletion erases the brain, not the evidence; AOPC, Samek et al. 2017, also
  scores the first steps only). The image's evidence in a case is the distance of the
  probability from its *floor*: the probability with the pseudo-healthy image (every
  hyperintensity removed, labs kept), which is where deleting image evidence ends; what the
  labs hold cannot be deleted from the image. ``deletion_auc``/``random_deletion_auc`` are
  the mean probabilities over the window; ``deletion_excess_auc``/
  ``random_deletion_excess_auc`` the mean of |probability - floor| (the image evidence
  left); ``deletion_over_random`` is the ratio of the latter summed over cases (a case the
  labs decide adds ~0 to both sums) and ``deletion_over_random_raw`` the ratio of the raw
  areas, reported beside it.
- Per channel (multi-contrast panels): each channel's own map is scored the same way
  (localisation, randomisation, deletion of that channel only), under ``channels``; and
  per kind of true lesion that the generator records (``mask_<kind>`` in ``truth.csv``,
  e.g. the lesions one contrast shows), each channel's share of the positive attribution
  inside those lesions, over the cases that have one: whether the contrast that shows a
  lesion kind is the one whose map carries its evidence.

The result is written to ``explain_quality.json`` and returned.
"""

from __future__ import annotations

import copy
import functools
import json
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.integrate import trapezoid
from scipy.stats import spearmanr

from ..atomic import write_text
from ..data.imaging import foreground_mask, load_volume, voxel_to_ras
from ..errors import InputError
from .attribution import (
    DEFAULT_METHOD,
    METHODS,
    explain,
    image_baseline,
    without_hyperintensities,
)

SANITY_MAX_SPEARMAN = 0.2
POINTING_TOLERANCE_MM = 2.5  # one model-grid voxel
DELETION_WINDOW = 0.05  # of the head's voxels (lesions: ~0.3% on the demo cohort)
DELETION_FRACTIONS = (0.0, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05)
RESULT_FILE = "explain_quality.json"
TARGETS = {
    "rma_over_lesion_fraction": 10.0,
    "pointing_game": 0.8,
    "randomisation_spearman": SANITY_MAX_SPEARMAN,
    "deletion_over_random": 0.5,
}


@dataclass
class QualityCase:
    """One case for the quality measurement.

    ``image`` [1, 1, D, H, W] and ``serology`` [1, d] on the model grid; ``lesion`` (bool)
    and ``affine`` on the grid where localisation is scored (the input image's grid);
    ``to_input`` maps a model-grid map to that grid (identity when None).
    """

    case_id: str
    image: torch.Tensor
    serology: torch.Tensor
    target: int
    lesion: np.ndarray
    affine: np.ndarray
    labs: dict = field(default_factory=dict)
    to_input: Callable[[np.ndarray], np.ndarray] | None = None
    head: np.ndarray | None = None  # foreground on the lesion grid (None: the model grid's)
    # the generator's masks of lesion kinds (kind -> bool mask on the lesion grid), e.g. the
    # lesions one contrast shows: which channel carries the evidence inside each kind
    truth_masks: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# Model randomisation


def cascade_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules that own parameters, top-down (reverse of registration: heads first)."""
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    return layers[::-1]


def randomised_model(model: torch.nn.Module, stage: str = "all", seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with weights re-initialised top-down up to ``stage``.

    ``head``: the output heads; ``fusion``: everything above the image encoder; ``all``:
    every layer (the full cascade of Adebayo et al.).
    """
    randomised = copy.deepcopy(model).eval()
    layers = cascade_layers(randomised)
    if stage == "head":
        chosen = [m for n, m in layers if n.endswith("head")]
    elif stage == "fusion":
        chosen = [m for n, m in layers if not n.startswith("image_encoder")]
    elif stage == "all":
        chosen = [m for _, m in layers]
    else:
        raise InputError(f"unknown randomisation stage {stage!r} (head, fusion, all)")
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for module in chosen:
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            for p in module.parameters(recurse=False):  # e.g. PReLU's constant init
                p.add_(0.1 * torch.randn_like(p))
    return randomised


# ----------------------------------------------------------------------------------------
# Metrics


def relevance_mass_accuracy(attribution: np.ndarray, lesion: np.ndarray) -> float:
    """Positive attribution inside the lesions / all positive attribution (0 if none)."""
    positive = np.clip(np.asarray(attribution, dtype=np.float64), 0, None)
    total = positive.sum()
    return float(positive[lesion].sum() / total) if total > 0 else 0.0


def pointing_hit(
    attribution: np.ndarray, lesion: np.ndarray, affine: np.ndarray, tolerance_mm: float
) -> bool:
    """Whether the map's maximum lies within ``tolerance_mm`` (RAS) of a lesion voxel."""
    peak = np.array(np.unravel_index(int(np.argmax(attribution)), attribution.shape))
    if lesion[tuple(peak)]:
        return True
    voxels = np.argwhere(lesion)
    if voxels.size == 0:
        return False
    distance = np.linalg.norm(voxel_to_ras(affine, voxels) - voxel_to_ras(affine, peak), axis=1)
    return bool(distance.min() <= tolerance_mm)


def rank_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Spearman correlation of two maps over ``mask`` (0 when one map is constant)."""
    x, y = np.asarray(a)[mask].ravel(), np.asarray(b)[mask].ravel()
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y)[0])


def deletion_curves(
    model: torch.nn.Module,
    image: torch.Tensor,
    serology: torch.Tensor,
    attribution: np.ndarray,
    target: int,
    head: np.ndarray,
    *,
    fractions: Sequence[float] = DELETION_FRACTIONS,
    seed: int = 0,
    temperature: float = 1.0,
    opened: torch.Tensor | None = None,
    channel: int | None = None,
) -> dict:
    """Probability of ``target`` as head voxels are deleted (see the module docstring).

    Order: attribution magnitude (largest first; ties at random) vs a random permutation.
    A deleted voxel takes the image's grey-level opening. ``floor`` is the probability
    with the pseudo-healthy image (:func:`~autoimmuneai.explain.attribution.image_baseline`) and the same
    labs. Areas are trapezoid areas over the deleted fraction divided by its range (mean
    values): ``<order>_auc`` of the probability, ``<order>_excess_auc`` of
    |probability - floor|. ``opened`` is the image's opening when the caller already has it.
    ``attribution`` and ``head`` are on the model grid [D, H, W]. A deleted voxel is deleted
    in every channel of a multi-contrast image, or, with ``channel``, in that channel only
    (the floor then removes that channel's hyperintensities only): how much of the evidence
    that one contrast holds.
    """
    fill = image_baseline(image, "opened") if opened is None else opened  # a deleted voxel's value
    pseudo_healthy = without_hyperintensities(image, fill)  # the floor's image (IG's baseline)
    n_voxels, n_channels = head.size, int(image.shape[1])
    if channel is not None:  # only this channel's hyperintensities go for the floor
        keep = torch.ones_like(image, dtype=torch.bool)
        keep[:, channel] = False
        pseudo_healthy = torch.where(keep, image, pseudo_healthy)
    offsets = (
        np.arange(n_channels) * n_voxels if channel is None else np.array([channel * n_voxels])
    )
    index = np.flatnonzero(head.ravel())
    scores = np.abs(np.asarray(attribution).ravel()[index])
    rng = np.random.default_rng(seed)
    tiebreak = rng.random(index.size)  # voxels of equal attribution go in random order
    orders = {
        "attribution": index[np.lexsort((tiebreak, -scores))],
        "random": rng.permutation(index),
    }
    span = float(fractions[-1] - fractions[0]) or 1.0
    out: dict = {"fractions": [float(f) for f in fractions]}
    flat_image = image.reshape(-1)
    flat_fill = fill.reshape(-1)
    with torch.no_grad():
        floor_logits = model(pseudo_healthy, serology)
    floor = float(torch.softmax(floor_logits.double() / temperature, dim=1)[0, target])
    out["floor"] = floor
    for name, order in orders.items():
        batch = []
        for f in fractions:
            x = flat_image.clone()
            voxels = order[: int(round(f * order.size))]
            chosen = torch.from_numpy((voxels[:, None] + offsets[None, :]).ravel())
            x[chosen] = flat_fill[chosen]
            batch.append(x.reshape(image.shape[1:]))
        with torch.no_grad():
            logits = model(torch.stack(batch), serology.expand(len(batch), -1))
            prob = torch.softmax(logits.double() / temperature, dim=1)[:, target].numpy()
        out[name] = [float(p) for p in prob]
        out[f"{name}_auc"] = float(trapezoid(prob, fractions)) / span
        out[f"{name}_excess_auc"] = float(trapezoid(np.abs(prob - floor), fractions)) / span
    return out


# ----------------------------------------------------------------------------------------
# Measurement


def quality_for_cases(
    model: torch.nn.Module,
    encoder,
    cases: Sequence[QualityCase],
    methods: Sequence[str] = METHODS,
    *,
    stages: Sequence[str] = ("all",),
    temperature: float = 1.0,
    seed: int = 0,
    explain_kwargs: dict | None = None,
) -> dict:
    """Per-method quality figures over ``cases`` (see the module docstring)."""
    explain_kwargs = explain_kwargs or {}
    model = model.eval()
    randomised = {stage: randomised_model(model, stage, seed) for stage in stages}
    report: dict = {"methods": {}, "n_cases": len(cases), "targets": TARGETS}
    # what depends on the case alone, computed once for every method
    heads = [foreground_mask(case.image[0, 0].numpy()) for case in cases]
    openings = [image_baseline(case.image, "opened") for case in cases]
    for method in methods:
        rows = []
        for case, head_model, opened in zip(cases, heads, openings):
            kwargs = {"encoder": encoder, "labs": case.labs, "target": case.target}
            kwargs |= {"method": method, **explain_kwargs.get(method, {})}
            start = time.perf_counter()
            e = explain(model, case.image, case.serology, **kwargs)
            seconds = time.perf_counter() - start
            model_map = e.image_map
            on_input = case.to_input(model_map) if case.to_input else model_map
            lesion = np.asarray(case.lesion, dtype=bool)
            head_in = case.head if case.head is not None else head_model
            row = {
                "case_id": case.case_id,
                "target": e.target_name,
                "seconds": seconds,
                "relevance_mass_accuracy": relevance_mass_accuracy(on_input, lesion),
                "lesion_volume_fraction": float(lesion.sum() / max(head_in.sum(), 1)),
                "pointing_game": float(
                    pointing_hit(on_input, lesion, case.affine, POINTING_TOLERANCE_MM)
                ),
                "relative_delta": e.relative_delta,
            }
            randomised_maps = {}
            for stage, rmodel in randomised.items():
                explained = explain(rmodel, case.image, case.serology, **kwargs)
                randomised_maps[stage] = explained.channel_maps
                r = explained.image_map
                row[f"spearman_{stage}"] = rank_correlation(model_map, r, head_model)
                support = head_model & ((model_map != 0) | (r != 0))
                row[f"spearman_abs_{stage}"] = rank_correlation(
                    np.abs(model_map), np.abs(r), support
                )
            curves = deletion_curves(
                model, case.image, case.serology, model_map, e.target, head_model,
                seed=seed, temperature=temperature, opened=opened,
            )  # fmt: skip
            row["deletion_auc"] = curves["attribution_auc"]
            row["random_deletion_auc"] = curves["random_auc"]
            row["deletion_excess_auc"] = curves["attribution_excess_auc"]
            row["random_deletion_excess_auc"] = curves["random_excess_auc"]
            row["deletion_floor"] = curves["floor"]
            if e.channel_maps is not None and len(e.channel_maps) > 1:
                row["channels"] = _channel_rows(
                    model, case, e, randomised_maps, head_model, opened,
                    seed=seed, temperature=temperature,
                )  # fmt: skip
            rows.append(row)
        report["methods"][method] = _summarise(rows, stages)
    report["failing_sanity"] = [m for m, r in report["methods"].items() if not r["passes_sanity"]]
    report["recommended_default"] = recommended_default(report)
    return report


def _channel_rows(
    model: torch.nn.Module,
    case: QualityCase,
    e,
    randomised_maps: dict[str, np.ndarray | None],
    head_model: np.ndarray,
    opened: torch.Tensor,
    *,
    seed: int,
    temperature: float,
) -> dict[str, dict]:
    """The localisation, sanity and deletion figures of each channel's own map, and, per
    kind of true lesion (``case.truth_masks``), each channel's share of the positive
    attribution inside those lesions: whether the contrast that shows a kind of lesion is
    the one whose map carries its evidence."""
    names = list(e.channel_share) or [f"channel {k}" for k in range(len(e.channel_maps))]
    lesion = np.asarray(case.lesion, dtype=bool)
    on_input = [case.to_input(m) if case.to_input else m for m in e.channel_maps]
    out: dict[str, dict] = {}
    for k, name in enumerate(names):
        channel_map = e.channel_maps[k]
        curves = deletion_curves(
            model, case.image, case.serology, channel_map, e.target, head_model,
            seed=seed, temperature=temperature, opened=opened, channel=k,
        )  # fmt: skip
        row = {
            "share": float(e.channel_share.get(name, 0.0)),
            "relevance_mass_accuracy": relevance_mass_accuracy(on_input[k], lesion),
            "pointing_game": float(
                pointing_hit(on_input[k], lesion, case.affine, POINTING_TOLERANCE_MM)
            ),
            "deletion_excess_auc": curves["attribution_excess_auc"],
            "random_deletion_excess_auc": curves["random_excess_auc"],
        }
        for stage, maps in randomised_maps.items():
            if maps is not None and len(maps) == len(e.channel_maps):
                row[f"spearman_{stage}"] = rank_correlation(channel_map, maps[k], head_model)
        out[name] = row
    for name, figures in lesion_kind_figures(
        on_input, names, case.truth_masks, case.affine
    ).items():
        out[name].update(figures)
    return out


def lesion_kind_figures(
    maps: Sequence[np.ndarray],
    names: Sequence[str],
    masks: dict[str, np.ndarray],
    affine: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Per channel map and kind of lesion (``masks``: kind -> bool mask, same grid as the
    maps): ``<kind>_share``, the channel's part of all channels' positive attribution inside
    those lesions (sums to 1 over the channels), and the channel map's relevance mass
    accuracy and pointing game against those lesions only. Kinds absent from the case (an
    empty mask) are left out."""
    positive = [np.clip(np.asarray(m, np.float64), 0.0, None) for m in maps]
    out: dict[str, dict[str, float]] = {name: {} for name in names}
    for kind, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            continue
        inside = np.array([p[mask].sum() for p in positive])
        total = float(inside.sum())
        for k, name in enumerate(names):
            out[name][f"{kind}_share"] = float(inside[k] / total) if total > 0 else 0.0
            out[name][f"{kind}_relevance_mass_accuracy"] = relevance_mass_accuracy(maps[k], mask)
            out[name][f"{kind}_pointing_game"] = float(
                pointing_hit(maps[k], mask, affine, POINTING_TOLERANCE_MM)
            )
    return out


def _channel_summary(rows: list[dict], stages: Sequence[str]) -> dict[str, dict]:
    """Per channel, the mean of each figure of ``_channel_rows`` over the cases that have it
    (a lesion-kind figure: over the cases with a lesion of that kind; ``<kind>_cases``), with
    the deletion ratio and the sanity verdict computed as for the whole map."""
    per_case = [r["channels"] for r in rows if r.get("channels")]
    if not per_case:
        return {}
    last = stages[-1]
    lvf = [r["lesion_volume_fraction"] for r in rows if r.get("channels")]
    summary: dict[str, dict] = {}
    for name in per_case[0]:
        keys = list(dict.fromkeys(k for case in per_case for k in case.get(name, {})))
        figures: dict[str, Any] = {}
        for key in keys:
            values = [case[name][key] for case in per_case if key in case.get(name, {})]
            figures[key] = float(np.mean(values))
            if key.endswith("_share") and key != "share":
                figures[f"{key[: -len('_share')]}_cases"] = len(values)
        figures["rma_over_lesion_fraction"] = _ratio(
            figures.get("relevance_mass_accuracy"), float(np.mean(lvf))
        )
        figures["deletion_over_random"] = _ratio(
            figures.get("deletion_excess_auc"), figures.get("random_deletion_excess_auc")
        )
        spearman = figures.get(f"spearman_{last}")
        figures["randomisation_spearman"] = spearman
        figures["passes_sanity"] = _passes_sanity(spearman)
        summary[name] = figures
    return summary


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, None when either is missing or the denominator is 0."""
    return numerator / denominator if numerator is not None and denominator else None


def _passes_sanity(spearman: float | None) -> bool:
    return spearman is not None and abs(spearman) <= SANITY_MAX_SPEARMAN


def _summarise(rows: list[dict], stages: Sequence[str]) -> dict:
    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    last = stages[-1]
    rma, lvf = mean("relevance_mass_accuracy"), mean("lesion_volume_fraction")
    deletion, random_deletion = mean("deletion_auc"), mean("random_deletion_auc")
    excess, random_excess = mean("deletion_excess_auc"), mean("random_deletion_excess_auc")
    spearman = mean(f"spearman_{last}")
    ratio, over_random = _ratio(rma, lvf), _ratio(excess, random_excess)
    summary: dict[str, Any] = {
        "relevance_mass_accuracy": rma,
        "lesion_volume_fraction": lvf,
        "rma_over_lesion_fraction": ratio,
        "pointing_game": mean("pointing_game"),
        "randomisation_spearman": spearman,
        "randomisation_spearman_abs": mean(f"spearman_abs_{last}"),
        "randomisation_cascade": {s: mean(f"spearman_{s}") for s in stages},
        "deletion_auc": deletion,
        "random_deletion_auc": random_deletion,
        "deletion_excess_auc": excess,
        "random_deletion_excess_auc": random_excess,
        "deletion_over_random": over_random,
        "deletion_over_random_raw": _ratio(deletion, random_deletion),
        "seconds_per_case": mean("seconds"),
        "max_relative_delta": max(
            (r["relative_delta"] for r in rows if r["relative_delta"] is not None), default=None
        ),
        "passes_sanity": _passes_sanity(spearman),
        "cases": rows,
    }
    channels = _channel_summary(rows, stages)
    if channels:
        summary["channels"] = channels
    pointing = summary["pointing_game"]
    summary["meets_targets"] = {
        "rma_over_lesion_fraction": (ratio or 0.0) >= 10.0,
        "pointing_game": (pointing or 0.0) >= 0.8,
        "randomisation_spearman": summary["passes_sanity"],
        "deletion_over_random": (over_random or 1.0) <= 0.5,
    }
    return summary


def recommended_default(report: dict) -> str:
    """The default method unless it fails the sanity check; then the best method that passes."""
    methods = report["methods"]
    if methods.get(DEFAULT_METHOD, {}).get("passes_sanity"):
        return DEFAULT_METHOD
    passing = [m for m, r in methods.items() if r["passes_sanity"]]
    if not passing:
        return DEFAULT_METHOD if DEFAULT_METHOD in methods else next(iter(methods), "")
    return max(passing, key=lambda m: methods[m]["relevance_mass_accuracy"] or 0.0)


TRUTH_MASK_PREFIX = "mask_"  # truth.csv columns holding a lesion kind's mask (generator)


def _kind_masks(truth: dict | None) -> dict[str, str]:
    """Lesion kind -> mask path, for each kind whose mask the generator's truth row names
    (``mask_<kind>``; a case without a lesion of a kind has an empty cell)."""
    return {
        str(column)[len(TRUTH_MASK_PREFIX) :]: value.strip()
        for column, value in (truth or {}).items()
        if str(column).startswith(TRUTH_MASK_PREFIX) and isinstance(value, str) and value.strip()
    }


def _truth_row(truth_table, case_id: str) -> dict | None:
    """The generator's truth row of one case (None without a truth table or row)."""
    if truth_table is None or case_id not in truth_table.index:
        return None
    return truth_table.loc[case_id].to_dict()


def _has_lesion(path: str | Path) -> bool:
    import nibabel as nib

    return bool(np.any(np.asarray(nib.load(str(path)).dataobj)))  # type: ignore[attr-defined]


def _candidate_cases(cohort, split: str | None, truth_table=None) -> list[tuple[Any, dict]]:
    """(case, its lesion kind -> mask path) for the cases of ``split`` with a diagnosis and
    at least one true lesion (localisation needs one), in cohort order."""
    candidates = []
    for case in cohort.cases:
        if split is not None and (case.split or "") != split:
            continue
        if case.mask_lesions is None or not case.diagnosis or not _has_lesion(case.mask_lesions):
            continue
        candidates.append((case, _kind_masks(_truth_row(truth_table, case.case_id))))
    return candidates


def _select_cases(cohort, split: str | None, n_cases: int, truth_table=None) -> list:
    """Up to ``n_cases`` cases with a diagnosis and at least one true lesion, chosen so that
    a few cases measure as much as they can: first, for each lesion kind that the generator's
    truth names (``mask_<kind>``, e.g. enhancing lesions or black holes), a case with at least
    one such lesion and the diagnosis most common among such cases (the kind's share of the
    evidence is then measured where that lesion is evidence *for* the explained diagnosis),
    then one case per diagnosis not yet chosen, then the rest in cohort order (the order of
    the returned list; its tail serves as spares)."""
    candidates = _candidate_cases(cohort, split, truth_table)
    shown: dict[tuple[str, str], bool] = {}

    def shows(case, kinds: dict, kind: str) -> bool:  # at least one lesion of this kind
        key = (case.case_id, kind)
        if key not in shown:
            shown[key] = kind in kinds and _has_lesion(cohort.root / kinds[kind])
        return shown[key]

    chosen: list = []
    for kind in sorted({k for _, kinds in candidates for k in kinds}):
        if len(chosen) >= n_cases or any(shows(c, k, kind) for c, k in candidates if c in chosen):
            continue
        showing = [c for c, k in candidates if shows(c, k, kind)]
        typical = Counter(c.diagnosis for c in showing).most_common(1)
        found = [c for c in showing if c not in chosen and c.diagnosis == typical[0][0]]
        chosen += found[:1]
    for case, _ in candidates:
        if len(chosen) < n_cases and case.diagnosis not in {c.diagnosis for c in chosen}:
            chosen.append(case)
    rest = [case for case, _ in candidates if case not in chosen]
    return (chosen + rest)[:n_cases]


QUALITY_SPARE_CASES = 3  # candidates beyond n_cases, used when a case's image fails


def _truth_masks(truth: dict | None, root: Path, volume) -> dict[str, np.ndarray]:
    """The masks of lesion kinds that the generator's truth row names (``mask_<kind>``), on
    ``volume``'s grid (nearest neighbour through the affines where a mask has its own)."""
    from scipy import ndimage as ndi

    masks: dict[str, np.ndarray] = {}
    for kind, value in _kind_masks(truth).items():
        mask = load_volume(root / value, mask=True)
        array = np.asarray(mask.array) > 0
        same = array.shape == tuple(volume.shape) and np.allclose(mask.affine, volume.affine)
        if not same:
            to_mask = np.linalg.inv(np.asarray(mask.affine, np.float64)) @ volume.affine
            array = ndi.affine_transform(
                array.astype(np.uint8), to_mask[:3, :3], to_mask[:3, 3],
                output_shape=tuple(volume.shape), order=0, cval=0,
            ).astype(bool)  # fmt: skip
        masks[kind] = array
    return masks


def _quality_case(
    bundle, predictor, case, truth: dict | None = None, root: Path | None = None
) -> QualityCase:
    """One selected case read, preprocessed and paired with its lesion mask (and, from the
    generator's ``truth`` row, the masks of each lesion kind)."""
    channels = bundle.panel.channels
    volume = load_volume(case.images[channels[0]], series=case.series.get(channels[0]))
    others = {
        c: load_volume(case.images[c], series=case.series.get(c))
        for c in channels[1:]
        if c in case.images
    }
    prepared = predictor.prepare(volume, case.labs, others)
    mask = load_volume(case.mask_lesions).array > 0
    return QualityCase(
        case_id=case.case_id,
        image=prepared.image,
        serology=prepared.serology,
        target=bundle.panel.class_index(case.diagnosis),
        lesion=mask,
        affine=volume.affine,
        labs=prepared.labs,
        to_input=functools.partial(bundle.grid.to_input, sample=prepared.sample, mode="linear"),
        head=foreground_mask(volume.array),
        truth_masks=_truth_masks(truth, root or Path("."), volume),
    )


def measure_explanation_quality(
    bundle_path: str | Path,
    cohort_path: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = None,
    n_cases: int = 10,
    methods: Sequence[str] = METHODS,
    stages: Sequence[str] = ("all",),
    seed: int = 0,
) -> dict:
    """Measure every method on ``n_cases`` cases with lesions; write ``explain_quality.json``.

    The explained class is each case's true diagnosis (the true lesions are its evidence).
    """
    from ..data.cohort import load_cohort
    from ..inference.predictor import Predictor
    from ..model.bundle import load_bundle

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown explanation method(s) {unknown} (one of {', '.join(METHODS)})")
    bundle = load_bundle(bundle_path)
    predictor = Predictor(bundle)
    cohort = load_cohort(cohort_path, bundle.panel)
    truth_table = cohort.truth_table()
    # spare candidates, so that a case whose image cannot be preprocessed is replaced
    selected = _select_cases(cohort, split, n_cases + QUALITY_SPARE_CASES, truth_table)
    if not selected:
        where = f" in split {split!r}" if split else ""
        raise InputError(f"no case with a diagnosis and a non-empty lesion mask{where}")
    cases: list[QualityCase] = []
    for case in selected:
        truth = _truth_row(truth_table, case.case_id)
        try:
            cases.append(_quality_case(bundle, predictor, case, truth, cohort.root))
        except InputError as exc:
            warnings.warn(
                f"case {case.case_id} left out of explanation quality: {exc}", stacklevel=2
            )
        if len(cases) == n_cases:
            break
    if not cases:
        raise InputError("no selected case has a usable image", file=cohort_path)
    report = quality_for_cases(
        bundle.model, bundle.encoder, cases, methods, stages=stages,
        temperature=bundle.temperature, seed=seed,
    )  # fmt: skip
    report["bundle"] = str(bundle_path)
    report["cohort"] = str(cohort_path)
    report["split"] = split
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / RESULT_FILE, json.dumps(report, indent=2))
    return report
