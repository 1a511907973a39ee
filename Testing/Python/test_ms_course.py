"""The second disease family (MS course) and multi-contrast cases: panel, channels, model, explanation."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from autoimmuneai.data.imaging import Volume
from autoimmuneai.data.panel import load_panel, panel_from_dict
from autoimmuneai.errors import InputError
from autoimmuneai.model.fusion import FusionModel, ModelConfig
from autoimmuneai.preprocess.channels import channels_to_model
from autoimmuneai.preprocess.model_grid import ModelGrid


def test_ms_course_panel_declares_channels_units_and_endpoint():
    panel = load_panel("ms_course")
    assert panel.classes == ("CIS", "RRMS", "SPMS", "PPMS")
    assert panel.channels == ("flair", "t1", "t1gd")
    assert panel.required_channels == ("flair",)
    assert panel.optional_channels == ("t1", "t1gd")
    assert panel.feature("nfl").unit == "pg/mL" and panel.feature("gfap").unit == "pg/mL"
    assert panel.feature("nfl").unit_factor("ng/L") == 1.0
    assert panel.feature("disease_duration").unit == "years"
    assert "confirmed disability worsening" in panel.endpoint["label"]
    assert panel.criteria is None  # no published lab rules for the course: no criteria baseline


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ([{"name": "flair", "optional": True}, "t1"], "first channel 'flair' cannot be optional"),
        (["flair", "flair"], "duplicate channel names"),
        (["T1 Gd"], "must be lower-case letters"),
        ([], "declares no image channels"),
    ],
)
def test_bad_channel_lists_are_refused_in_one_line(channels, message):
    data = copy.deepcopy(load_panel("ms_course").raw)
    data["channels"] = channels
    with pytest.raises(InputError, match=message) as info:
        panel_from_dict(data, source="my_panel.json")
    assert "my_panel.json" in str(info.value) and "\n" not in str(info.value)


def _head(shape=(40, 48, 40), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ijk = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    r = np.sqrt((((ijk - centre) / (np.array(shape)[:, None, None, None] * 0.4)) ** 2).sum(0))
    head = (r < 1.0) * 100.0 + ndi.gaussian_filter(rng.normal(0, 20, shape), 2)
    return head.astype(np.float32)


def test_other_channels_follow_the_first_channels_transform_and_missing_is_a_zero_plane():
    grid = ModelGrid((24, 28, 24), 4.0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-40.0, -48.0, -40.0]
    flair = Volume(_head(), affine)
    # a second contrast of the same session: same patient space, another voxel grid
    # (1 mm finer in-plane, shifted origin), and a dimmer foreground so that its own
    # foreground box would be centred elsewhere
    fine = np.diag([1.0, 1.0, 2.0, 1.0])
    fine[:3, 3] = [-40.0, -48.0, -40.0]
    t1_array = ndi.zoom(flair.array, (2, 2, 1), order=1)
    t1_array[: t1_array.shape[0] // 3] *= 0.3
    t1 = Volume(t1_array.astype(np.float32), fine)
    out = channels_to_model(grid, [flair, t1, None])
    assert out.array.shape == (3, *grid.shape) and out.present == (True, True, False)
    assert np.all(out.array[2] == 0)
    np.testing.assert_allclose(out.reference.affine, grid.to_model(flair).affine)
    # the same anatomy lands on the same voxels: the two planes agree where the T1 is unscaled
    a, b = out.array[0], out.array[1]
    keep = np.zeros(grid.shape, bool)
    keep[grid.shape[0] // 2 :] = True
    assert np.corrcoef(a[keep], b[keep])[0, 1] > 0.95
    with pytest.raises(ValueError, match="first"):
        channels_to_model(grid, [None, t1])


def test_model_takes_the_panels_channels_and_reads_a_missing_channel_flag():
    torch.manual_seed(0)
    cfg = ModelConfig(n_serology=6, n_classes=4, channels=(4, 8), strides=(2, 2), image_channels=3)
    model = FusionModel(cfg).eval()
    x = torch.randn(2, 3, 24, 24, 24)
    x[1, 2] = 0.0  # case 1 lacks the third channel
    _, _, readout = model.image_encoder(x)
    assert readout[:, -3:].tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    assert model(x, torch.zeros(2, 6)).shape == (2, 4)
    one = FusionModel(ModelConfig(n_serology=6, n_classes=4, channels=(4, 8), strides=(2, 2)))
    # a one-channel model is unchanged: no flags, no per-channel read-outs
    assert one.image_encoder.readout_features == one.image_encoder.lesions.out_features
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.image_channels == 3
