"""The fusion network: a MONAI image encoder and a serology MLP, fused, with two heads.

Why this shape: the image encoder is a handful of MONAI ``Convolution``/``ResidualUnit``
blocks with stride 2 (small enough to train on a 2-core CPU at the 64x80x64 model grid),
beside a fixed, differentiable lesion read-out (``LesionLoad``: local hyperintensity summed
per region of a coarse grid), because a CNN trained from scratch on a few hundred cases does
not learn to count small lesions by location, which is what the diagnosis rests on;
the serology encoder sees encoded lab values *and* their missingness indicators (the
``SerologyEncoder`` output); fusion is either late concatenation or FiLM/DAFT-style affine
conditioning, where the serology (with the pooled image features of the previous block)
sets a per-channel scale and shift of the last image block. Two heads share the fused
representation: diagnosis logits and a Cox log-hazard. The logits also get a linear "wide"
path from the encoded labs and the lesion read-out, so that a decisive lab value moves them
as far as a logistic model would. The default risk head is a mixture
over the differential, ``log sum_k p(k|x) exp(a_k)``: the hazard a case would have if its
disease were drawn from the model's own probabilities. Relapse rates differ far more between
these diseases than within one, and a handful of class log-hazards cannot overfit a few
hundred cases the way a linear head on the fused features does (it gave the higher held-out
c-index on the demo: see CHANGELOG.md).

Everything is a pure function of ``(image, serology)``: no batch norm (instance or group
norm only), no in-place state, so Captum can attribute over both inputs and the weights
behave identically for one case or a batch. ``model.image_encoder.last_block`` is the
layer to hand to ``LayerGradCam``.

Image-only and serology-only variants are the same class with ``use_serology=False`` or
``use_image=False``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

FUSIONS = ("concat", "film")
RISKS = ("linear", "mixture")


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`FusionModel` (stored in the bundle as JSON)."""

    n_serology: int
    n_classes: int
    fusion: str = "film"
    use_image: bool = True
    use_serology: bool = True
    image_channels: int = 1
    channels: tuple[int, ...] = (8, 16, 32, 64)  # output channels of each image stage
    strides: tuple[int, ...] = (2, 2, 2, 2)  # stride of each image stage
    coords: bool = True  # append voxel-coordinate channels at the stem (location matters)
    lesion_channel: bool = True  # the stem also sees LesionLoad.excess (the lesion map)
    lesion_regions: tuple[int, ...] = (4, 5, 4)  # regional lesion-load grid; () turns it off
    lesion_contrast: float = 2.5  # local excess (foreground SDs) that counts as a lesion
    lesion_window: int = 5  # voxels (odd): the cube whose mean is a voxel's "surroundings"
    # a soft count of the lesions (local peaks of the lesion map) beside the regional loads:
    # how many lesions, not only how much lesion, tells these diseases apart
    lesion_count: bool = True
    # the read-out again on the image averaged over 2x2x2 voxels, at each of these windows
    # (odd, in those coarse voxels: 5 and 7 span 10 and 14 voxels of the grid), as the total
    # load and the count: a lesion as wide as the base window hides from it, so how load and
    # count change with the window tells small sharp lesions from large soft ones
    lesion_coarse_windows: tuple[int, ...] = (5, 7)
    pool: str = "avgmax"  # global pooling of the last block: "avg" or "avgmax" (avg + max)
    norm: str = "instance"  # "instance" or "group" (never batch: Captum and DDP need purity)
    serology_width: int = 32
    hidden: int = 64
    dropout: float = 0.2
    # dropout on the CNN's pooled features only: trained from scratch on a few hundred cases
    # they overfit (without dropout, adding them to lesion loads + labs lowered the balanced
    # accuracy on an external sample; dropout 0.5 won most of it back)
    image_dropout: float = 0.5
    # Cox head: "mixture" (log-hazard from the diagnosis probabilities and one log-hazard per
    # class) or "linear" (w . fused features; bundles written before the mixture head)
    risk: str = "mixture"
    # a linear path from the encoded labs and the lesion read-out straight to the logits,
    # beside the deep one ("wide and deep")
    wide: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.lesion_regions = tuple(int(r) for r in self.lesion_regions)
        if self.lesion_regions and (len(self.lesion_regions) != 3 or min(self.lesion_regions) < 1):
            raise ValueError("lesion_regions must be three positive sizes, or empty")
        self.lesion_coarse_windows = tuple(int(w) for w in self.lesion_coarse_windows)
        if any(w < 3 or w % 2 == 0 for w in (self.lesion_window, *self.lesion_coarse_windows)):
            raise ValueError(
                "lesion_window and lesion_coarse_windows must be odd numbers of voxels >= 3"
            )
        self.strides = tuple(int(s) for s in self.strides)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        if not (self.use_image or self.use_serology):
            raise ValueError("a model needs at least one modality (use_image or use_serology)")
        if len(self.channels) != len(self.strides) or len(self.channels) < 2:
            raise ValueError("channels and strides need equal lengths of at least 2")
        if self.risk not in RISKS:
            raise ValueError(f"risk must be one of {RISKS}, not {self.risk!r}")
        if self.norm not in ("none", "instance", "group"):
            raise ValueError(f"norm must be 'none', 'instance' or 'group', not {self.norm!r}")
        if self.pool not in ("avg", "avgmax"):
            raise ValueError(f"pool must be 'avg' or 'avgmax', not {self.pool!r}")
        if self.n_classes < 2:
            raise ValueError("n_classes must be at least 2")

    @property
    def uses_film(self) -> bool:
        """FiLM conditioning is only possible when both modalities are on."""
        return self.fusion == "film" and self.use_image and self.use_serology

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = list(self.strides)
        d["lesion_regions"] = list(self.lesion_regions)
        d["lesion_coarse_windows"] = list(self.lesion_coarse_windows)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        # configs written before these existed
        d = {
            "risk": "linear",
            "wide": False,
            "lesion_count": False,
            "lesion_coarse_windows": (),
            **d,
        }
        return cls(**{k: v for k, v in d.items() if k in known})

    def variant(self, **changes: object) -> ModelConfig:
        """A copy with some fields changed (e.g. ``variant(use_serology=False)``)."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})


def _norm(cfg: ModelConfig, channels: int) -> tuple | None:
    if cfg.norm == "none":
        return None
    if cfg.norm == "group":
        return ("group", {"num_groups": min(4, channels)})
    return ("instance", {"affine": True})


def _coordinates(image: torch.Tensor) -> torch.Tensor:
    """Voxel coordinates in [-1, 1] along each axis, [B, 3, D, H, W] (CoordConv).

    Global pooling alone would make the encoder blind to *where* a lesion lies; location
    (periventricular, brainstem, juxtacortical) is diagnostic, so the stem sees where it is.
    """
    axes = [
        torch.linspace(-1.0, 1.0, n, device=image.device, dtype=image.dtype)
        for n in image.shape[2:]
    ]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid.unsqueeze(0).expand(image.shape[0], -1, -1, -1, -1)


FOREGROUND_Z = -3.0  # below this (foreground z-score) a voxel is background, not tissue


def tissue_mask(image: torch.Tensor) -> torch.Tensor:
    """1 on tissue, 0 on background, from the first channel: [B, 1, D, H, W]."""
    return (image[:, :1] > FOREGROUND_Z).to(image.dtype)


CHANNEL_CONTRAST = 0.6  # the further channels' read-out threshold, x lesion_contrast


class LesionLoad(nn.Module):
    """Regional load of focal hyperintensities: a fixed, differentiable lesion read-out.

    Why: the diagnosis depends on how many lesions lie *where* (periventricular, brainstem,
    juxtacortical), and a CNN trained from scratch on a few hundred cases does not learn to
    count small lesions (on the demo cohort an image-only CNN stayed at chance). This read-out
    hands the network that count directly. The local excess ``x - mean(surroundings)`` (the
    mean over a ``window`` cube of foreground voxels only, so the head's edge and a smooth
    bias field do not count) above ``contrast`` is summed per block of a coarse ``regions`` grid and
    log-compressed: ``log1p(sum)`` per region. With ``count``, one more feature: a soft count of
    the lesions, ``log1p(sum of tanh(excess / COUNT_SCALE))`` over the local peaks of the excess
    (each the maximum of its 3-voxel cube), so a lesion counts about 1 whatever its size and a
    faint noise peak almost 0 (it follows the true lesion count closely on the demo cohort).
    Each of the ``coarse`` windows adds the total load and the count of the lesion map of the
    image averaged over 2x2x2 voxels, with that window's surroundings: the size and edge of
    the lesions, which the base window misses (the README's model section). It has no
    weights (nothing to overfit) and is differentiable (the
    count where the peaks are), so attributions flow back to the lesion voxels themselves.
    """

    COUNT_SCALE = 0.5  # foreground SDs of excess at which a peak counts tanh(1) = 0.76

    def __init__(
        self,
        regions: tuple[int, ...],
        contrast: float,
        window: int,
        count: bool = False,
        coarse: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.regions = tuple(int(r) for r in regions)
        self.count = bool(count)
        self.contrast = float(contrast)
        self.window = int(window)
        self.coarse = tuple(int(w) for w in coarse)
        self.out_features = (
            (int(np.prod(self.regions)) if self.regions else 0)
            + int(self.count)
            + 2 * len(self.coarse)
        )

    @staticmethod
    def _mean(x: torch.Tensor, w: int) -> torch.Tensor:
        # A separable box mean from running sums, zero-padded (so excess() divides by the
        # tissue's own mean and the edges come out right): the values of
        # avg_pool3d(x, w, 1, w // 2, count_include_pad=True) (a test proves it, gradient
        # included), at one running sum and one subtraction per axis whatever the window,
        # where a pooling's cost grows with it. Kept over avg_pool3d because it was faster
        # in training (see CHANGELOG.md).
        p = w // 2
        for dim in (2, 3, 4):
            running = _running_sum(_pad_axis(x, dim, p + 1, p), dim)
            n = x.shape[dim]
            x = (running.narrow(dim, w, n) - running.narrow(dim, 0, n)) / w
        return x

    def excess(
        self, image: torch.Tensor, tissue: torch.Tensor | None = None, window: int | None = None
    ) -> torch.Tensor:
        """Voxel-wise lesion evidence [B, 1, D, H, W] of the first channel (>= 0).

        ``tissue``: :func:`tissue_mask` of ``image`` when the caller already has it;
        ``window``: of the surroundings (default: the base window).
        """
        x = image[:, :1]
        tissue = tissue_mask(image) if tissue is None else tissue
        w = self.window if window is None else window
        surroundings = self._mean(x * tissue, w) / self._mean(tissue, w).clamp_min(1e-3)
        return torch.relu(x - surroundings - self.contrast) * tissue

    def forward(
        self,
        image: torch.Tensor,
        tissue: torch.Tensor | None = None,
        excess: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The read-out [B, out_features], all ``log1p``: the base lesion map summed per
        region, its soft lesion count, then the total load and count of each coarse map.

        ``tissue`` and ``excess`` (the base lesion map): pass them when already computed.
        """
        tissue = tissue_mask(image) if tissue is None else tissue
        e = self.excess(image, tissue) if excess is None else excess
        parts = []
        if self.regions:
            block = e.shape[2] * e.shape[3] * e.shape[4] / np.prod(self.regions)
            d, h, w = self.regions
            parts.append(nn.functional.adaptive_avg_pool3d(e, (d, h, w)).flatten(1) * block)
        if self.count:
            parts.append(self._count(e))
        if self.coarse:
            small = nn.functional.avg_pool3d(image[:, :1], 2, ceil_mode=True)
            small_tissue = tissue_mask(small)
            for window in self.coarse:
                coarse = self.excess(small, small_tissue, window)
                parts += [coarse.flatten(1).sum(1, keepdim=True), self._count(coarse)]
        return torch.log1p(torch.cat(parts, dim=1))

    def _count(self, e: torch.Tensor) -> torch.Tensor:
        """Soft count [B, 1] of the local peaks of the lesion map ``e``."""
        with torch.no_grad():
            peak = (e == cube_max(e, 3)) & (e > 0)
        return (peak * torch.tanh(e / self.COUNT_SCALE)).flatten(1).sum(1, keepdim=True)


def _running_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.cumsum(dim)``. Without autograd and along an outer axis, as one in-place sum per
    slice: faster on CPU than ``cumsum`` across strides, whose memory access is strided (the
    lesion read-out runs on every training batch, with no gradient to keep)."""
    if x.requires_grad or dim == x.ndim - 1:
        return x.cumsum(dim)
    out = x.clone()
    for i in range(1, out.shape[dim]):
        out.select(dim, i).add_(out.select(dim, i - 1))
    return out


def _pad_axis(
    x: torch.Tensor, dim: int, before: int, after: int, value: float = 0.0
) -> torch.Tensor:
    """``x`` [B, C, D, H, W] padded along one spatial axis ``dim`` (2, 3 or 4) only."""
    pad = [0] * 6  # F.pad lists the last axis first
    pad[2 * (4 - dim)], pad[2 * (4 - dim) + 1] = before, after
    return nn.functional.pad(x, pad, value=value)


def cube_max(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Maximum over the ``size``-voxel cube (odd) around each voxel, [B, C, D, H, W].

    The same values as ``F.max_pool3d(x, size, stride=1, padding=size // 2)``, computed as
    three one-axis maxima of shifted views: a cube's maximum is separable, and on the CPU
    elementwise maxima of views are several times faster than ``max_pool3d`` (one 3D or
    three 1D poolings) at the model grid (see the README's figures). The lesion count uses
    ``size=3`` (local peaks), the explanation's grey-level opening its own, larger cube.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"cube size must be an odd number of voxels, got {size}")
    p = size // 2
    for dim in (2, 3, 4):
        padded = _pad_axis(x, dim, p, p, value=float("-inf"))
        n = x.shape[dim]
        out = padded.narrow(dim, 0, n)
        for shift in range(1, size):
            out = torch.maximum(out, padded.narrow(dim, shift, n))
        x = out
    return x


class ImageEncoder(nn.Module):
    """Strided MONAI blocks; ``blocks[:-1]`` is the trunk and ``last_block`` the last stage."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        self.coords = cfg.coords
        self.lesion_channel = cfg.lesion_channel
        self.lesions = LesionLoad(
            cfg.lesion_regions,
            cfg.lesion_contrast,
            cfg.lesion_window,
            cfg.lesion_count,
            cfg.lesion_coarse_windows,
        )
        c_in = cfg.image_channels + (1 if cfg.lesion_channel else 0) + (3 if cfg.coords else 0)
        for i, (c_out, stride) in enumerate(zip(cfg.channels, cfg.strides)):
            block: nn.Module
            if i == 0:  # a plain strided convolution as stem: cheap at full resolution
                block = Convolution(
                    3,
                    c_in,
                    c_out,
                    strides=stride,
                    kernel_size=3,
                    norm=_norm(cfg, c_out),
                    act="PRELU",
                    bias=cfg.norm == "none",  # a bias before a normalisation does nothing
                )
            else:
                block = ResidualUnit(
                    3, c_in, c_out, strides=stride, kernel_size=3, subunits=2,
                    norm=_norm(cfg, c_out), act="PRELU", bias=cfg.norm == "none",
                )  # fmt: skip
            blocks.append(block)
            c_in = c_out
        self.trunk = nn.Sequential(*blocks[:-1])
        self.last_block = blocks[-1]
        self.trunk_channels = cfg.channels[-2]
        self.out_channels = cfg.channels[-1]
        # every channel after the first (the reference, where lesions are bright) is read out
        # for bright and for dark lesions (enhancing on T1-Gd, black holes on T1), and each
        # channel adds a presence flag (a missing optional channel is an all-zero image)
        # (whole-brain totals only: a regional grid per channel would add hundreds of inputs)
        self.extra_channels = cfg.image_channels - 1
        # at a lower contrast: other sequences show lesions fainter than FLAIR does (an
        # enhancing lesion is about 2 foreground SDs above white matter on T1-Gd)
        self.channel_lesions = LesionLoad(
            (1, 1, 1) if cfg.lesion_regions else (),
            cfg.lesion_contrast * CHANNEL_CONTRAST,
            cfg.lesion_window,
            cfg.lesion_count,
            cfg.lesion_coarse_windows,
        )
        self.readout_features = self.lesions.out_features
        if self.extra_channels:
            per_channel = 2 * self.channel_lesions.out_features
            self.readout_features += self.extra_channels * per_channel + cfg.image_channels

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (trunk features, last-block feature map, lesion read-out [B, n]).

        The stem sees the image with its background set to 0 (the z-scored background, about
        -7, would otherwise dominate every filter's response at the head's edge and drown
        the lesions: a network then does not even fit its training set), the
        lesion map and the voxel coordinates. The read-out is :class:`LesionLoad`'s
        (``n = lesions.out_features``, possibly 0).
        """
        tissue = tissue_mask(image)
        excess = self.lesions.excess(image, tissue)
        parts = [image * tissue]
        if self.lesion_channel:
            parts.append(excess)
        if self.coords:
            parts.append(_coordinates(image))
        h = self.trunk(torch.cat(parts, dim=1))
        readout = (
            self.lesions(image, tissue, excess)
            if self.lesions.out_features
            else image.new_zeros(image.shape[0], 0)
        )
        if self.extra_channels:
            readout = torch.cat([readout, *self._channel_readouts(image, tissue)], dim=1)
        return h, self.last_block(h), readout

    def _channel_readouts(self, image: torch.Tensor, tissue: torch.Tensor) -> list[torch.Tensor]:
        """Bright and dark read-outs of each further channel, then the presence flags."""
        parts = []
        for c in range(1, 1 + self.extra_channels):
            x = image[:, c : c + 1]
            if self.channel_lesions.out_features:
                parts += [self.channel_lesions(x, tissue), self.channel_lesions(-x, tissue)]
        present = image.detach().flatten(2).abs().amax(dim=2) > 0
        parts.append(present.to(image.dtype))
        return parts


class SerologyMLP(nn.Module):
    """Two-layer MLP on encoded lab values plus missingness indicators."""

    def __init__(self, n_in: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.out_features = width

    def forward(self, serology: torch.Tensor) -> torch.Tensor:
        return self.net(serology)


class FiLM(nn.Module):
    """Per-channel scale and shift from [pooled trunk features, serology embedding].

    The output layer starts at zero, so training starts from the identity (scale 1, shift 0)
    and learns how much the serology should modulate each image channel.
    """

    def __init__(self, n_context: int, channels: int, hidden: int) -> None:
        super().__init__()
        first = nn.Linear(n_context, hidden)  # created first: the same draws as before
        out = nn.Linear(hidden, 2 * channels)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(first, nn.ReLU(), out)

    def forward(self, fmap: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.net(context).chunk(2, dim=1)
        shape = (fmap.shape[0], fmap.shape[1]) + (1,) * (fmap.ndim - 2)
        return fmap * (1.0 + gamma.view(shape)) + beta.view(shape)


def _gap(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.flatten(2).mean(dim=2)


# CPU inference is fastest in small batches (faster per case than one at a time or in
# batches of 16 on the model grid): the activations of a few cases stay in cache
INFERENCE_BATCH_SIZE = 4


class FusionModel(nn.Module):
    """MRI + serology -> diagnosis logits and Cox log-hazard.

    >>> cfg = ModelConfig(n_serology=20, n_classes=5, channels=(4, 8), strides=(2, 2))
    >>> model = FusionModel(cfg).eval()
    >>> logits = model(torch.zeros(2, 1, 16, 16, 16), torch.zeros(2, 20))
    >>> tuple(logits.shape)
    (2, 5)
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        n_fused = 0
        if cfg.use_image:
            self.image_encoder = ImageEncoder(cfg)
            n_fused += self.image_encoder.out_channels * (2 if cfg.pool == "avgmax" else 1)
            n_fused += self.image_encoder.readout_features
        if cfg.use_serology:
            self.serology_encoder = SerologyMLP(cfg.n_serology, cfg.serology_width)
            n_fused += cfg.serology_width
        if cfg.uses_film:
            self.film = FiLM(
                self.image_encoder.trunk_channels + cfg.serology_width,
                self.image_encoder.out_channels,
                cfg.hidden,
            )
            self.film_act = nn.PReLU()
        self.image_dropout = nn.Dropout(cfg.image_dropout)
        self.trunk = nn.Sequential(
            nn.Linear(n_fused, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)
        )
        self.diagnosis_head = nn.Linear(cfg.hidden, cfg.n_classes)
        n_wide = (cfg.n_serology if cfg.use_serology else 0) + (
            self.image_encoder.readout_features if cfg.use_image else 0
        )
        self.wide_head = (
            nn.Linear(n_wide, cfg.n_classes, bias=False) if cfg.wide and n_wide else None
        )
        if cfg.risk == "mixture":
            self.class_log_hazard = nn.Parameter(torch.zeros(cfg.n_classes))
        else:  # no bias: the Cox partial likelihood is invariant to a shift of the log-hazard
            self.risk_head = nn.Linear(cfg.hidden, 1, bias=False)

    def _features(
        self, image: torch.Tensor, serology: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(fused features [B, hidden] both heads read, the wide path's logits or None)."""
        parts, wide = [], []
        if self.config.use_serology:
            wide.append(serology)
        ser = self.serology_encoder(serology) if self.config.use_serology else None
        if self.config.use_image:
            h, fmap, lesions = self.image_encoder(image)
            if self.config.uses_film:
                assert ser is not None  # FiLM needs both modalities (ModelConfig.uses_film)
                context = torch.cat([_gap(h), ser], dim=1)
                fmap = self.film_act(self.film(fmap, context))
            pooled = [_gap(fmap)]
            if self.config.pool == "avgmax":  # small bright lesions vanish in an average
                pooled.append(fmap.flatten(2).amax(dim=2))
            parts.append(self.image_dropout(torch.cat(pooled, dim=1)))
            if self.image_encoder.readout_features:  # regional loads, lesion counts
                parts.append(lesions)
                wide.append(lesions)
        if ser is not None:
            parts.append(ser)
        z = self.trunk(torch.cat(parts, dim=1))
        return z, (None if self.wide_head is None else self.wide_head(torch.cat(wide, dim=1)))

    def _logits(self, z: torch.Tensor, wide: torch.Tensor | None) -> torch.Tensor:
        logits = self.diagnosis_head(z)
        return logits if wide is None else logits + wide

    def forward_all(
        self, image: torch.Tensor, serology: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (diagnosis logits [B, n_classes], log-hazard [B])."""
        z, wide = self._features(image, serology)
        logits = self._logits(z, wide)
        if self.config.risk == "mixture":
            return logits, self.mixture_log_hazard(logits)
        return logits, self.risk_head(z).squeeze(1)

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        serology: torch.Tensor,
        batch_size: int = INFERENCE_BATCH_SIZE,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [n, C], log-hazard [n]) in eval mode, float32 on the CPU, ``batch_size``
        cases at a time (each batch converted to float and moved to the model's device)."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        logits, risk = [], []
        for start in range(0, len(images), batch_size):
            sl = slice(start, start + batch_size)
            lg, r = self.forward_all(images[sl].float().to(device), serology[sl].float().to(device))
            logits.append(lg.float().cpu())
            risk.append(r.float().cpu())
        self.train(was_training)
        if not logits:
            return torch.zeros(0, self.config.n_classes), torch.zeros(0)
        return torch.cat(logits), torch.cat(risk)

    @torch.no_grad()
    def scale_logits(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Fold a per-class calibration map ``scale * logits + shift`` into the logit layers.

        Vector scaling (``stats.calibration.choose_calibration``) then lives in the weights,
        so every consumer of the logits (probabilities, sets, attributions) sees the
        calibrated ones and the bundle's format does not change. The mixture risk head reads
        the new probabilities: refit its class log-hazards afterwards.
        """
        w = torch.as_tensor(np.asarray(scale), dtype=self.diagnosis_head.weight.dtype)
        b = torch.as_tensor(np.asarray(shift), dtype=self.diagnosis_head.weight.dtype)
        self.diagnosis_head.weight.mul_(w[:, None])
        self.diagnosis_head.bias.mul_(w).add_(b)
        if self.wide_head is not None:
            self.wide_head.weight.mul_(w[:, None])

    def mixture_log_hazard(self, logits: torch.Tensor) -> torch.Tensor:
        """``log sum_k softmax(logits)_k exp(a_k)`` [B]: the hazard over the differential."""
        return torch.logsumexp(torch.log_softmax(logits, dim=1) + self.class_log_hazard, dim=1)

    def forward(self, image: torch.Tensor, serology: torch.Tensor) -> torch.Tensor:
        """Diagnosis logits [B, n_classes] (the output Captum explains)."""
        return self._logits(*self._features(image, serology))
