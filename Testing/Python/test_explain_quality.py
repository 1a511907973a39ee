"""Explanation-quality metrics: exact values on hand-made maps, and a run on the toy model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_explain import MS, encode, toy_case, toy_quality_cases, trained_toy

from autoimmuneai.explain.attribution import image_baseline
from autoimmuneai.explain.quality import (
    DELETION_WINDOW,
    deletion_curves,
    pointing_hit,
    quality_for_cases,
    randomised_model,
    rank_correlation,
    relevance_mass_accuracy,
)


def test_relevance_mass_accuracy_counts_positive_mass_only():
    attribution = np.zeros((4, 4, 4))
    lesion = np.zeros((4, 4, 4), dtype=bool)
    lesion[0, 0, 0] = True
    attribution[0, 0, 0] = 3.0
    attribution[3, 3, 3] = 1.0
    attribution[2, 2, 2] = -5.0  # evidence against: not part of the mass
    assert relevance_mass_accuracy(attribution, lesion) == pytest.approx(0.75)
    assert relevance_mass_accuracy(-np.ones((2, 2, 2)), np.ones((2, 2, 2), bool)) == 0.0


def test_pointing_game_uses_millimetres_of_the_affine():
    attribution = np.zeros((10, 10, 10))
    attribution[5, 5, 5] = 1.0
    lesion = np.zeros((10, 10, 10), dtype=bool)
    lesion[5, 5, 7] = True  # two voxels away along k
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    thick = np.diag([1.0, 1.0, 3.0, 1.0])
    assert pointing_hit(attribution, lesion, fine, 2.5)
    assert not pointing_hit(attribution, lesion, thick, 2.5)  # 6 mm away
    lesion[5, 5, 5] = True
    assert pointing_hit(attribution, lesion, thick, 0.0)


def test_rank_correlation_over_a_mask():
    a = np.arange(27, dtype=float).reshape(3, 3, 3)
    mask = np.ones_like(a, dtype=bool)
    assert rank_correlation(a, a**3, mask) == pytest.approx(1.0)
    assert rank_correlation(a, -a, mask) == pytest.approx(-1.0)
    assert rank_correlation(a, np.zeros_like(a), mask) == 0.0


@pytest.mark.slow  # trains the toy model (once per process)
def test_randomisation_cascade_is_top_down():
    model, _ = trained_toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_only = randomised_model(model, "head").state_dict()
    changed = {k for k, v in head_only.items() if not torch.equal(v, before[k])}
    assert changed and all(k.split(".")[0].endswith("head") for k in changed)
    full = randomised_model(model, "all").state_dict()
    weights = [k for k in before if k.endswith("weight")]
    assert all(not torch.equal(full[k], before[k]) for k in weights)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


@pytest.mark.slow  # trains the toy model (once per process)
def test_deletion_curves_start_together_and_areas_match():
    model, encoder = trained_toy()
    image, values, missing, _ = toy_case(MS, 71)
    serology = encode(encoder, values, missing)
    head = image[0, 0].numpy() > -2.0
    curves = deletion_curves(model, image, serology, image[0, 0].numpy(), MS, head)
    fractions = np.asarray(curves["fractions"])
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(DELETION_WINDOW)
    # Nothing deleted: the order cannot matter, and it is the model's own probability.
    assert curves["attribution"][0] == pytest.approx(curves["random"][0], abs=1e-9)
    with torch.no_grad():
        p0 = torch.softmax(model(image, serology).double(), 1)[0, MS].item()
        floor = torch.softmax(model(image_baseline(image), serology).double(), 1)[0, MS].item()
    assert curves["attribution"][0] == pytest.approx(p0, abs=1e-6)
    assert curves["floor"] == pytest.approx(floor, abs=1e-9)
    # The areas are the mean height of each curve over the deleted fraction: scikit-learn's
    # area under a curve divided by the window, and inside the curve's own range.
    from sklearn.metrics import auc

    for order in ("attribution", "random"):
        prob = np.asarray(curves[order])
        area = curves[f"{order}_auc"]
        assert area == pytest.approx(auc(fractions, prob) / DELETION_WINDOW)
        assert prob.min() - 1e-12 <= area <= prob.max() + 1e-12
        excess = np.abs(prob - floor)
        assert curves[f"{order}_excess_auc"] == pytest.approx(
            auc(fractions, excess) / DELETION_WINDOW
        )


@pytest.mark.slow  # trains the toy model (once per process)
def test_deletion_goes_by_magnitude_and_fills_with_the_opened_image():
    """A map that is large and NEGATIVE on a few voxels deletes exactly those first."""
    model, encoder = trained_toy()
    image, values, missing, _ = toy_case(MS, 72)
    serology = encode(encoder, values, missing)
    head = image[0, 0].numpy() > -2.0
    attribution = np.zeros(head.shape)
    chosen = np.argwhere(head)[:: max(1, int(head.sum()) // 20)][:20]  # 20 spread voxels
    attribution[tuple(chosen.T)] = -1.0
    fractions = (0.0, 20 / head.sum())
    curves = deletion_curves(model, image, serology, attribution, MS, head, fractions=fractions)
    expected = image.clone()
    opened = image_baseline(image, "opened")
    for i, j, k in chosen:
        expected[0, 0, i, j, k] = opened[0, 0, i, j, k]
    with torch.no_grad():
        p = torch.softmax(model(expected, serology).double(), 1)[0, MS].item()
    assert curves["attribution"][1] == pytest.approx(p, abs=1e-6)


@pytest.mark.slow  # trains the toy model (once per process)
def test_quality_report_on_the_toy_model():
    model, encoder = trained_toy()
    cases = toy_quality_cases(encoder, (81, 82))
    report = quality_for_cases(model, encoder, cases, ("integrated_gradients", "layer_gradcam"))
    ig = report["methods"]["integrated_gradients"]
    assert report["n_cases"] == 2 and len(ig["cases"]) == 2
    assert ig["relevance_mass_accuracy"] > 2 * ig["lesion_volume_fraction"]
    assert ig["deletion_auc"] < ig["random_deletion_auc"]
    assert ig["deletion_excess_auc"] < ig["random_deletion_excess_auc"]
    assert ig["max_relative_delta"] <= 0.05
    assert ig["passes_sanity"] and abs(ig["randomisation_spearman"]) <= 0.2
    assert set(report["failing_sanity"]) <= {"layer_gradcam"}
    assert report["recommended_default"] == "integrated_gradients"


def test_lesion_kind_shares_split_the_evidence_inside_each_kind_over_the_channels():
    from autoimmuneai.explain.quality import lesion_kind_figures

    shape = (6, 6, 6)
    flair, t1 = np.zeros(shape), np.zeros(shape)
    enhancing = np.zeros(shape, bool)
    enhancing[1, 1, 1] = enhancing[1, 1, 2] = True
    flair[1, 1, 1], t1[1, 1, 2] = 1.0, 3.0  # inside the kind: 1 on one map, 3 on the other
    flair[4, 4, 4] = 2.0  # outside it: not part of the share
    t1[1, 1, 1] = -5.0  # evidence against: not part of the share either
    empty = np.zeros(shape, bool)
    figures = lesion_kind_figures(
        [flair, t1], ["a", "b"], {"enhancing": enhancing, "none": empty}, np.eye(4)
    )
    assert figures["a"]["enhancing_share"] == pytest.approx(0.25)
    assert figures["b"]["enhancing_share"] == pytest.approx(0.75)
    assert figures["a"]["enhancing_relevance_mass_accuracy"] == pytest.approx(1 / 3)
    assert figures["b"]["enhancing_relevance_mass_accuracy"] == pytest.approx(1.0)
    assert figures["a"]["enhancing_pointing_game"] == 0.0  # its maximum is 3 voxels away
    assert figures["b"]["enhancing_pointing_game"] == 1.0
    assert not any(k.startswith("none_") for k in figures["a"])  # a kind the case lacks


def test_deleting_one_channel_leaves_the_other_channels_as_they_were():
    """Per-channel deletion replaces that channel's voxels only; without a channel every
    channel of a deleted voxel goes (a two-channel model, checked against its own output)."""
    from test_explain import toy_case

    from autoimmuneai.model.fusion import FusionModel, ModelConfig

    first, *_ = toy_case(MS, 73)
    second, *_ = toy_case(MS, 74)
    image = torch.cat([first, second], dim=1)  # [1, 2, D, H, W]
    config = ModelConfig(
        n_serology=4, n_classes=3, image_channels=2, channels=(4, 8), strides=(2, 2), dropout=0.0
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FusionModel(config).eval()
    serology = torch.zeros(1, 4)
    head = image[0, 0].numpy() > -2.0
    attribution = np.zeros(head.shape)
    chosen = np.argwhere(head)[:: max(1, int(head.sum()) // 30)][:30]
    attribution[tuple(chosen.T)] = 1.0
    fractions = (0.0, 30 / head.sum())
    opened = image_baseline(image, "opened")
    for channel, replaced in ((1, [1]), (None, [0, 1])):
        curves = deletion_curves(
            model, image, serology, attribution, 0, head, fractions=fractions, channel=channel
        )
        expected = image.clone()
        for c in replaced:
            for i, j, k in chosen:
                expected[0, c, i, j, k] = opened[0, c, i, j, k]
        with torch.no_grad():
            p = torch.softmax(model(expected, serology).double(), 1)[0, 0].item()
        assert curves["attribution"][1] == pytest.approx(p, abs=1e-6)
    assert not torch.equal(opened[0, 0][tuple(chosen.T)], image[0, 0][tuple(chosen.T)])


def _nifti(path, voxel=None):
    import nibabel as nib

    data = np.zeros((6, 6, 6), np.uint8)
    if voxel is not None:
        data[voxel] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return f"{path.parent.name}/{path.name}"  # relative to the cohort folder


def test_quality_cases_cover_every_lesion_kind_then_every_diagnosis(tmp_path):
    """The few measured cases include one with each kind of true lesion (an all-zero or
    missing kind mask does not count) and the diagnosis commonest among the cases with that
    kind, then one per diagnosis not yet chosen, then the rest; a case without any true lesion
    is never chosen (written files, the real loader)."""
    import pandas as pd

    from autoimmuneai.data.cohort import load_cohort
    from autoimmuneai.explain.quality import _select_cases

    lesion = (2, 2, 2)
    plan = [  # case id, diagnosis, has a lesion, enhancing mask, black-hole mask
        ("c0", "MS", True, None, "zero"),
        ("c1", "MS", True, None, "lesion"),
        ("c2", "NMOSD", False, "lesion", None),
        ("c3", "SVD", True, "lesion", "zero"),
        ("c4", "NMOSD", True, None, None),
        ("c5", "MOGAD", True, "lesion", None),
        ("c6", "MOGAD", True, "lesion", None),
    ]
    manifest, truth = [], []
    for cid, dx, has, enh, black in plan:
        kinds = {}
        for kind, state in (("enhancing", enh), ("black_holes", black)):
            kinds[f"mask_{kind}"] = (
                ""
                if state is None
                else _nifti(
                    tmp_path / "masks" / f"{cid}_{kind}.nii.gz",
                    lesion if state == "lesion" else None,
                )
            )
        manifest.append(
            {
                "case_id": cid,
                "image_flair": _nifti(tmp_path / "images" / f"{cid}.nii.gz", lesion),
                "mask_lesions": _nifti(
                    tmp_path / "masks" / f"{cid}.nii.gz", lesion if has else None
                ),
                "age": "40",
                "sex": "F",
                "diagnosis": dx,
                "split": "test",
            }
        )
        truth.append({"case_id": cid, "diagnosis": dx, **kinds})
    pd.DataFrame(manifest).to_csv(tmp_path / "manifest.csv", index=False)
    pd.DataFrame(truth).to_csv(tmp_path / "truth.csv", index=False)
    cohort = load_cohort(tmp_path / "manifest.csv", "cns_autoimmune")
    table = cohort.truth_table()

    def ids(cases):
        return [c.case_id for c in cases]

    # black holes: c1 alone; enhancing: c3 (SVD) and c5, c6 (MOGAD, the kind's commonest)
    assert ids(_select_cases(cohort, "test", 3, table)) == ["c1", "c5", "c3"]
    assert ids(_select_cases(cohort, "test", 9, table)) == ["c1", "c5", "c3", "c4", "c0", "c6"]
    assert ids(_select_cases(cohort, "test", 3)) == ["c0", "c3", "c4"]  # no truth: diagnoses
    assert ids(_select_cases(cohort, "test", 1, table)) == ["c1"]
    assert _select_cases(cohort, "train", 3, table) == []
