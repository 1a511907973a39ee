"""The synthetic demo cohort: determinism, file contracts, class statistics, lesion regions
and exact geometry of oblique / anisotropic output."""

from __future__ import annotations

import copy
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from autoimmuneai.data.labvalues import parse_lab_value
from autoimmuneai.data.panel import load_panel
from autoimmuneai.errors import InputError
from autoimmuneai.synth import (
    MANIFEST_COLUMNS,
    TRUTH_COLUMNS,
    SynthConfig,
    generate_cohort,
    sample_latent_cohort,
)
from autoimmuneai.synth.anatomy import load_anatomy
from autoimmuneai.synth.cohort import assign_classes
from autoimmuneai.synth.latent import sample_case
from autoimmuneai.synth.render import output_grid, render_case
from autoimmuneai.synth.serology import FEATURES

PANEL_FEATURES = [f for f in load_panel("cns_autoimmune").feature_names if f not in ("age", "sex")]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small brain-only cohort at 4 mm (fast), generated with two workers."""
    out = tmp_path_factory.mktemp("synth_a")
    manifest = generate_cohort(
        out, 8, 5, voxel_size=4.0, workers=2, progress=False, anatomy="brain"
    )
    return manifest


def _arrays(folder, pattern):
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob(pattern))}


def test_same_seed_same_cohort_whatever_the_workers(cohort, tmp_path):
    again = generate_cohort(tmp_path / "b", 8, 5, voxel_size=4.0, workers=1, anatomy="brain")
    a, b = cohort.parent, again.parent
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    assert (a / "truth.csv").read_bytes() == (b / "truth.csv").read_bytes()
    for sub, pattern in (("images", "*_flair.nii.gz"), ("masks", "*_lesions.nii.gz")):
        xa, xb = _arrays(a / sub, pattern), _arrays(b / sub, pattern)
        assert xa.keys() == xb.keys() and len(xa) == 8
        for name in xa:
            np.testing.assert_array_equal(xa[name], xb[name])
    other = generate_cohort(tmp_path / "c", 8, 6, voxel_size=4.0, workers=1, anatomy="brain")
    assert other.read_bytes() != cohort.read_bytes()
    img_a = np.asarray(nib.load(a / "images" / "syn0001_flair.nii.gz").dataobj)
    img_c = np.asarray(nib.load(other.parent / "images" / "syn0001_flair.nii.gz").dataobj)
    assert not np.array_equal(img_a, img_c)


def test_manifest_contract_and_lab_strings(cohort):
    m = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    assert tuple(m.columns) == MANIFEST_COLUMNS
    assert list(m.columns[3:17]) == PANEL_FEATURES
    assert m["case_id"].is_unique
    assert set(m["sex"]) <= {"F", "M"}
    assert set(m["event"]) <= {"0", "1"}
    assert (m["event_time"].astype(float) > 0).all()
    assert set(m["split"]) <= {"train", "val", "test"}
    assert set(m["diagnosis"]) <= set(SynthConfig().classes)
    for col in ("image_flair", "mask_lesions"):
        for rel in m[col]:
            assert not rel.startswith("/") and (cohort.parent / rel).is_file()
    truth = pd.read_csv(cohort.parent / "truth.csv")
    assert tuple(truth.columns) == TRUTH_COLUMNS
    assert list(truth["case_id"]) == list(m["case_id"])
    meta = (cohort.parent / "cohort.json").read_text(encoding="utf-8")
    assert '"seed": 5' in meta and '"numpy"' in meta
    img = nib.load(cohort.parent / m["image_flair"][0])
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), [4.0, 4.0, 4.0])


TITRE = re.compile(r"^(1:\d+|neg|negative|<1:\d+)$")
BINARY = re.compile(r"^(pos|neg|positive|negative)$")
NUMBER = re.compile(r"^(<|>)?\d+([.,]\d+)?( mg/dL)?$")


@pytest.fixture(scope="module")
def latents():
    return sample_latent_cohort(500, seed=21)


def test_lab_strings_have_the_real_forms_and_parse(latents):
    panel = load_panel("cns_autoimmune")
    seen: dict[str, set[str]] = {f: set() for f in FEATURES}
    for lat, _ in latents:
        for name, raw in lat.labs.items():
            kind = panel.feature(name).kind
            if raw:
                pattern = {"titer": TITRE, "binary": BINARY}.get(kind, NUMBER)
                assert pattern.match(raw), (name, raw)
                if name not in ("c3", "c4", "crp"):
                    assert "mg/dL" not in raw
            value = parse_lab_value(raw, panel.feature(name))  # raises on anything unreadable
            assert value.missing == (raw == "")
            seen[name].add(raw)
    every = set().union(*seen.values())
    assert "" in seen["ocb"] and "" in seen["aqp4_igg"]
    assert any("," in s for s in every), "some decimal commas"
    assert any(s.endswith("mg/dL") for s in seen["c3"])
    assert any(s.startswith("<") for s in seen["anti_dsdna"] | seen["crp"])
    assert {"neg", "negative"} & seen["mog_igg"] and any(s.startswith("1:") for s in seen["ana"])
    # "95 mg/dL" for C3 is 0.95 g/L.
    assert parse_lab_value("95 mg/dL", panel.feature("c3")).value == pytest.approx(0.95)


def test_class_statistics_follow_the_priors(latents):
    rows = []
    for lat, _ in latents:
        aqp4 = lat.serology_measured["aqp4_igg"]
        rows.append(
            dict(
                dx=lat.diagnosis, age=lat.age, female=lat.sex == "F", n=len(lat.lesions),
                aqp4_true=lat.serology_true["aqp4_igg"] > 0,
                aqp4_pos=np.nan if aqp4 is None else float(aqp4 >= 10),
                ana_true=lat.serology_true["ana"] >= 80, ocb=lat.serology_true["ocb"],
                csf_missing=lat.serology_measured["ocb"] is None,
            )
        )  # fmt: skip
    df = pd.DataFrame(rows)
    g = df.groupby("dx")
    assert g.size().min() >= 60
    # AQP4: NMOSD positive when tested, except assay false negatives (~20%); ~0 elsewhere.
    assert g["aqp4_true"].mean()["NMOSD"] == 1.0
    assert 0.65 <= g["aqp4_pos"].mean()["NMOSD"] <= 0.92
    for c in ("MS", "MOGAD", "SVD"):
        assert g["aqp4_pos"].mean()[c] == 0.0
    female = g["female"].mean()
    assert female["NMOSD"] > 0.8 and female["NPSLE"] > 0.8
    assert 0.35 < female["MOGAD"] < 0.65 and 0.6 < female["MS"] < 0.85
    age = g["age"].median()
    assert 26 < age["MS"] < 36 and age["SVD"] > 50 and age["MOGAD"] < age["NMOSD"]
    assert g["ana_true"].mean()["NPSLE"] > 0.9 and g["ana_true"].mean()["MS"] < 0.3
    assert g["ocb"].mean()["MS"] > 0.85 and g["ocb"].mean()["SVD"] < 0.15
    assert 0.3 < df["csf_missing"].mean() < 0.8
    n = g["n"].median()
    assert n["MS"] > 2 * max(n["NMOSD"], n["NPSLE"], n["MOGAD"])
    assert g["n"].apply(lambda s: (s == 0).mean())["MS"] < 0.1  # MS scans are rarely normal


def test_split_is_stratified_and_classes_follow_fractions():
    cfg = SynthConfig()
    dx, split = assign_classes(np.random.default_rng(0), 400, cfg)
    counts = pd.Series(dx).value_counts()
    for c, f in cfg.class_fractions.items():
        assert abs(counts[c] - 400 * f) <= 1
    tab = pd.crosstab(pd.Series(dx), pd.Series(split), normalize="index")
    assert ((tab["train"] - 0.6).abs() < 0.03).all() and ((tab["test"] - 0.2).abs() < 0.03).all()


def _ms_case(seed: int = 3):
    cfg = SynthConfig()
    cfg.lesions["MS"]["p_normal"] = 0.0
    anat = load_anatomy(2)
    lat = sample_case(np.random.SeedSequence(seed), "t", "MS", anat, cfg)
    return cfg, anat, lat


def test_lesion_labels_match_the_region_maps():
    cfg, anat, lat = _ms_case()
    assert len(lat.lesions) >= 3
    labels = lat.maps.labels
    for spec in lat.lesions:  # each lesion's label is the region of its centre
        ijk = np.rint(np.linalg.inv(anat.affine) @ np.append(spec.center_mm, 1))[:3].astype(int)
        assert anat.label_map[tuple(ijk)] == spec.label
    region = anat.label_map
    agree = []
    for k in np.unique(labels[labels > 0]):
        near = ndi.binary_dilation(region == k, iterations=2)
        agree.append(near[labels == k].mean())
    assert min(agree) > 0.6  # lesions lie mostly in the region their label names
    # Rendered mask: same labels, similar volumes, and lesions clearly hyperintense.
    grid = output_grid(anat, 2.0, cfg=cfg)
    img, mask = render_case(lat, anat, grid, cfg)
    vols = lat.maps.region_volumes_ml()
    for k, name in enumerate(vols, start=1):
        out_ml = (mask == k).sum() * 8.0 / 1000.0
        assert out_ml == pytest.approx(vols[name], rel=0.35, abs=0.05)
    brain = img > 0.4 * np.percentile(img, 99)
    assert img[mask > 0].mean() > 1.35 * np.median(img[brain & (mask == 0)])


def _centroid_ras(mask_path):
    img = nib.load(mask_path)
    ijk = np.argwhere(np.asarray(img.dataobj) > 0)
    return (img.affine[:3, :3] @ ijk.T + img.affine[:3, 3:4]).T.mean(axis=0), len(ijk)


def test_oblique_anisotropic_affine_is_the_real_geometry(tmp_path):
    cfg = SynthConfig()
    cfg.class_fractions = {c: (1.0 if c == "MS" else 0.0) for c in cfg.classes}
    cfg.lesions["MS"].update(p_normal=0.0, count_mean=30.0, count_k=50.0)
    canon = generate_cohort(
        tmp_path / "canon", 1, seed=2, workers=1, progress=False, config=copy.deepcopy(cfg),
        anatomy="brain",
    )  # fmt: skip
    obl = generate_cohort(
        tmp_path / "obl", 1, seed=2, oblique_deg=25.0, anisotropic=True, workers=1, progress=False,
        config=copy.deepcopy(cfg), anatomy="brain",
    )  # fmt: skip
    img = nib.load(obl.parent / "masks" / "syn0001_lesions.nii.gz")
    spacing = np.linalg.norm(img.affine[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [2.0, 2.0, 5.0], atol=1e-6)
    direction = img.affine[:3, :3] / spacing
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)  # float32 sform
    angle = np.degrees(np.arccos((np.trace(direction) - 1) / 2))
    assert angle == pytest.approx(25.0, abs=1e-3)
    c0, n0 = _centroid_ras(canon.parent / "masks" / "syn0001_lesions.nii.gz")
    c1, n1 = _centroid_ras(obl.parent / "masks" / "syn0001_lesions.nii.gz")
    assert n0 > 100 and n1 > 20
    # Same lesions at the same RAS position, up to 2 mm / 5 mm voxel discretisation.
    assert np.linalg.norm(c0 - c1) < 3.5
    assert (canon.parent / "truth.csv").read_bytes() == (obl.parent / "truth.csv").read_bytes()


def test_lesion_centroid_is_grid_independent_on_fine_grids():
    cfg, anat, lat = _ms_case(seed=2)
    cfg.lesions["MS"].update(count_mean=30.0, count_k=50.0)
    lat = sample_case(np.random.SeedSequence(2), "t", "MS", anat, cfg)
    centroids = []
    for oblique, aniso in ((0.0, False), (25.0, False), (-20.0, True)):
        grid = output_grid(anat, 1.25, oblique, aniso, cfg)
        _, mask = render_case(lat, anat, grid, cfg)
        ijk = np.argwhere(mask > 0)
        centroids.append((grid.affine[:3, :3] @ ijk.T + grid.affine[:3, 3:4]).T.mean(axis=0))
    for c in centroids[1:]:
        assert np.linalg.norm(c - centroids[0]) < 1.0  # mm


def test_bad_arguments_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="cases"):
        generate_cohort(tmp_path, 0)
    with pytest.raises(InputError, match="voxel"):
        generate_cohort(tmp_path, 2, voxel_size=20.0)


def test_coarse_fields_reach_every_voxel_of_a_scanner_grid():
    """The renderer's template coordinates and bias, interpolated from the ~4 mm coarse grid,
    against SciPy's own trilinear interpolator on the node positions, at every voxel of a 2D
    thick-slice scanner grid, the last row of each axis included (a lookup that returned 0
    there drew the field of view's front row dark)."""
    from scipy.interpolate import RegularGridInterpolator

    from autoimmuneai.synth.render import _at_candidates, _coarse_grid
    from autoimmuneai.synth.scan import scanner_grid

    grid = scanner_grid(np.array([1.1, 1.1, 5.0]), np.array([196.0, 234.0, 210.0]), np.zeros(3))
    coarse_shape, _ = _coarse_grid(grid)
    rng = np.random.default_rng(3)
    fields = rng.uniform(10, 90, size=(2, *coarse_shape)).astype(np.float32)
    cand = np.arange(int(np.prod(grid.shape)))
    got = _at_candidates(fields, grid.shape, cand)
    nodes = [np.linspace(0.0, n - 1.0, m) for n, m in zip(grid.shape, coarse_shape)]
    ijk = np.indices(grid.shape).reshape(3, -1).T.astype(float)
    for c in range(2):
        want = RegularGridInterpolator(nodes, fields[c].astype(float))(ijk)
        np.testing.assert_allclose(got[c], want, rtol=1e-5, atol=1e-3)
    corner = np.ravel_multi_index(tuple(n - 1 for n in grid.shape), grid.shape)
    np.testing.assert_allclose(got[:, corner], fields[:, -1, -1, -1], rtol=1e-6)


def test_a_whole_head_scan_keeps_its_front_row():
    """A 2D scan whose face reaches the front of the field of view: the last coronal row is
    rendered like the one behind it (it was drawn at about a third of its brightness)."""
    from autoimmuneai.synth.cohort import _plan
    from autoimmuneai.synth.head import load_head
    from autoimmuneai.synth.scan import render_scan

    cfg = SynthConfig()
    anat = load_anatomy(2)
    load_head(2)
    case_id, diagnosis, _, seed = _plan(16, 0, cfg)[6]
    scan = render_scan(sample_case(seed, case_id, diagnosis, anat, cfg), anat, cfg)
    assert scan.acquisition == "2d_axial"
    last, before = scan.image[:, -1, :].astype(float), scan.image[:, -2, :].astype(float)
    lit = before > np.percentile(before, 90)
    assert lit.sum() > 50
    assert last[lit].mean() > 0.8 * before[lit].mean()


def test_a_scan_knows_the_template_point_each_lesion_voxel_shows():
    """``Scan.lesion_template_mm``: every lesion voxel of a whole-head scan, mapped back
    through the head pose and the generator's smooth deformation, lands on its lesion in
    template space; the pose alone, which leaves the deformation out, lands millimetres away
    (the share of the anatomy that no affine registration can reach)."""
    from autoimmuneai.synth.cohort import _plan
    from autoimmuneai.synth.lesions import draw_lesions
    from autoimmuneai.synth.scan import render_scan

    cfg = SynthConfig()
    cfg.scan["acquisitions"] = {"3d_2mm": 1.0}
    anat = load_anatomy(2)
    case_id, diagnosis, _, seed = _plan(6, 11, cfg)[1]
    latent = sample_case(seed, case_id, diagnosis, anat, cfg)
    scan = render_scan(latent, anat, cfg)
    ijk = np.argwhere(scan.lesions > 0)
    assert scan.lesion_template_mm is not None and len(ijk) > 100
    assert scan.lesion_template_mm.shape == (len(ijk), 3)
    occupancy = draw_lesions(latent.lesions, anat).occupancy
    to_voxel = np.linalg.inv(anat.affine)

    def inside(points_mm: np.ndarray) -> float:
        vox = np.rint(np.c_[points_mm, np.ones(len(points_mm))] @ to_voxel.T)[:, :3]
        vox = np.clip(vox.astype(int), 0, np.array(occupancy.shape) - 1)
        return float((occupancy[vox[:, 0], vox[:, 1], vox[:, 2]] > 0).mean())

    assert inside(scan.lesion_template_mm) >= 0.98
    ras = np.c_[ijk, np.ones(len(ijk))] @ scan.grid.affine.T
    by_pose = (ras @ np.linalg.inv(scan.pose).T)[:, :3]
    apart = np.linalg.norm(by_pose - scan.lesion_template_mm, axis=1)
    assert 0.5 < apart.mean() < 8.0
