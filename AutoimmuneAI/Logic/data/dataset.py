"""Cohort -> tensors the network trains on: model-grid images, encoded serology, labels, follow-up.

Resampling hundreds of MRI volumes to the model grid is the slow part of training, so each
case's model-grid image is cached (float16 ``.npy``, keyed by the image files' content and by
the preprocessing's settings) and reused by later epochs, ``--resume``, cross-validation folds
and, inside ``shared_image_cache`` (the demo), by evaluation. Images are kept in float16 in
memory (half the RAM; batches are cast to float32 on the way into the network).

Cases are preprocessed in worker processes, not threads: SimpleITK keeps the GIL while it
registers or corrects an image, so threads ran one case at a time however many there were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import atomic_path
from ..errors import ImageError, InputError
from ..processes import pool_context


@dataclass
class CaseArrays:
    """Model inputs and targets of n cases (row i of every field is case ``case_ids[i]``)."""

    images: torch.Tensor  # [n, C, D, H, W] float16 or float32
    serology: torch.Tensor  # [n, d] float32
    labels: torch.Tensor  # [n] int64, -1 unknown
    times: torch.Tensor  # [n] float32, NaN missing
    events: torch.Tensor  # [n] float32, NaN missing
    case_ids: list[str]
    descriptions: list[dict] | None = None  # imaging.describe_volume of each first channel

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> CaseArrays:
        """The cases at positions ``index`` (in that order)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return CaseArrays(
            images=self.images[idx],
            serology=self.serology[idx],
            labels=self.labels[idx],
            times=self.times[idx],
            events=self.events[idx],
            case_ids=[self.case_ids[i] for i in idx.tolist()],
            descriptions=(
                [self.descriptions[i] for i in idx.tolist()] if self.descriptions else None
            ),
        )

    @classmethod
    def from_numpy(
        cls,
        images: np.ndarray,
        serology: np.ndarray,
        labels: np.ndarray | None = None,
        times: np.ndarray | None = None,
        events: np.ndarray | None = None,
        case_ids: Sequence[str] | None = None,
    ) -> CaseArrays:
        """Wrap arrays (missing targets become -1 / NaN; ids default to ``case0000``...)."""
        n = len(images)
        nan = np.full(n, np.nan)
        return cls(
            images=torch.as_tensor(np.asarray(images)),
            serology=torch.as_tensor(np.asarray(serology, dtype=np.float32)),
            labels=torch.as_tensor(
                np.full(n, -1) if labels is None else np.asarray(labels), dtype=torch.int64
            ),
            times=torch.as_tensor(nan if times is None else np.asarray(times), dtype=torch.float32),
            events=torch.as_tensor(
                nan if events is None else np.asarray(events), dtype=torch.float32
            ),
            case_ids=list(case_ids) if case_ids is not None else [f"case{i:04d}" for i in range(n)],
        )


def _cache_key(paths: Sequence[Path], grid_dict: dict, layout: Sequence[Path | None] = ()) -> str:
    """Key of one case's cached model-grid image: the stage's settings (``grid.to_dict()``)
    and the content of every image file, so a copied or renamed cohort hits the cache and an
    image rewritten in place misses it."""
    h = hashlib.sha256(json.dumps(grid_dict, sort_keys=True).encode())
    if any(p is None for p in layout):  # which channels are missing is part of the key
        h.update(str([p is None for p in layout]).encode())
    for p in paths:
        h.update(content_digest(Path(p)).encode())
    return h.hexdigest()[:32]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def content_digest(path: Path) -> str:
    """SHA-256 of an image file's bytes (memoised per path, size and modification time); for a
    DICOM folder, of its files' names, sizes and modification times (reading every slice
    would cost as much as loading the series)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo in _DIGESTS:
        return _DIGESTS[memo]
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(q for q in path.rglob("*") if q.is_file()):
            fs = f.stat()
            h.update(f"{f.relative_to(path)}|{fs.st_size}|{fs.st_mtime_ns}".encode())
    else:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    _DIGESTS[memo] = digest = h.hexdigest()
    return digest


_SHARED_CACHE: list[Path] = []


@contextlib.contextmanager
def shared_image_cache(folder: str | Path) -> Iterator[Path]:
    """Within the block, ``build_arrays`` calls without a ``cache_dir`` use ``folder``: the
    demo's training and evaluation share one cache, so no image is preprocessed twice."""
    _SHARED_CACHE.append(Path(folder))
    try:
        yield Path(folder)
    finally:
        _SHARED_CACHE.pop()


def case_image(
    case, channels: Sequence[str], grid, cache_dir: Path | None = None, optional: Sequence[str] = ()
) -> tuple[np.ndarray, dict]:
    """One case's image on the model grid, float16 [C, *grid.shape], and a description of
    its first channel (``imaging.describe_volume``, for out-of-distribution checks).

    The first channel is preprocessed by ``grid``; the others follow its transform
    (``preprocess.channels``). A channel in ``optional`` that the case lacks is a zero plane
    (the description's ``channels_present`` says which); a required one is an ``ImageError``.
    Both are cached in ``cache_dir`` when given.
    """
    from ..preprocess.channels import channels_to_model
    from .imaging import describe_volume, load_volume

    paths: list[Path | None] = []
    for ch in channels:
        if ch in case.images:
            paths.append(Path(case.images[ch]))
        elif ch in optional and paths:
            paths.append(None)
        else:
            raise ImageError(f"case {case.case_id} has no image for channel {ch!r}")
    cache_file = desc_file = None
    if cache_dir is not None:
        settings = _cache_settings(grid, case.series, len(channels))
        key = _cache_key([p for p in paths if p is not None], settings, paths)
        cache_file, desc_file = Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}.json"
        if cache_file.is_file() and desc_file.is_file():
            try:
                arr = np.load(cache_file, allow_pickle=False)
                desc = json.loads(desc_file.read_text(encoding="utf-8"))
                if arr.shape == (len(channels), *grid.shape):
                    return arr, desc
            except (OSError, ValueError):
                pass  # a damaged cache entry is rebuilt below
    volumes = [
        None if p is None else load_volume(p, series=case.series.get(ch))
        for p, ch in zip(paths, channels)
    ]
    reference = volumes[0]
    assert reference is not None  # the first channel is never optional (data.panel)
    desc = describe_volume(reference)
    if len(channels) == 1:
        t = grid.to_model(reference).tensor
        arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        out = arr.reshape(1, *grid.shape).astype(np.float16)
    else:
        stacked = channels_to_model(grid, volumes, channels)
        out = stacked.array.astype(np.float16)
        desc["channels_present"] = dict(zip(channels, stacked.present))
    if cache_file is not None and desc_file is not None:
        with atomic_path(cache_file) as tmp:
            np.save(tmp, out, allow_pickle=False)
        with atomic_path(desc_file) as tmp:
            tmp.write_text(json.dumps(desc), encoding="utf-8")
    return out, desc


def _cache_settings(grid, series: dict | None, n_channels: int) -> dict:
    """What a cached image depends on besides its files: the stage's settings, the DICOM
    series chosen, and for several channels the co-registration check that aligns them."""
    from ..preprocess.coregistration import METHOD

    settings = {**grid.to_dict(), **({"series": series} if series else {})}
    if n_channels > 1:
        settings["coregistration"] = METHOD
    return settings


def build_arrays(
    cohort,
    grid,
    encoder,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    workers: int = 2,
    failures: list[tuple[str, str]] | None = None,
) -> CaseArrays:
    """All cases of ``cohort`` as :class:`CaseArrays` (images in float16).

    ``encoder`` is a fitted ``SerologyEncoder``; images are resampled by ``grid``
    (``ModelGrid``) in the panel's channel order, ``workers`` cases at a time.
    Without ``failures`` the first image that cannot be read or preprocessed raises its
    one-line ``InputError``. With a list, such cases are left out of the arrays and appended
    to it as ``(case_id, reason)``, so one unreadable scan does not stop a cohort's training
    or evaluation (the caller keeps the cases in ``arrays.case_ids``).
    """
    channels = list(cohort.panel.channels)
    cases = list(cohort.cases)
    if cache_dir is not None:
        cdir: Path | None = Path(cache_dir)
    else:
        cdir = _SHARED_CACHE[-1] if _SHARED_CACHE else None
    if cdir is not None:
        cdir.mkdir(parents=True, exist_ok=True)
    n = len(cases)
    images = np.zeros((n, len(channels), *grid.shape), dtype=np.float16)
    descriptions: list[dict] = [{} for _ in range(n)]

    failed: dict[int, str] = {}
    bar = tqdm(total=n, desc="images -> model grid", unit="case", disable=not progress)
    optional = cohort.panel.optional_channels
    tasks = [(case, channels, grid, cdir, optional) for case in cases]
    for i, (result, error) in enumerate(_preprocess_all(tasks, workers)):
        if error is not None:
            if failures is None:
                raise error
            failed[i] = str(error)
        else:
            assert result is not None
            images[i], descriptions[i] = result
        bar.update(1)
    bar.close()
    if failed and failures is not None:
        kept = [i for i in range(n) if i not in failed]
        failures.extend((cases[i].case_id, failed[i]) for i in sorted(failed))
        cohort = cohort.subset([cases[i].case_id for i in kept])
        images = images[kept]
        descriptions = [descriptions[i] for i in kept]
    values, missing = cohort.lab_matrix()
    times, events = cohort.survival()
    arrays = CaseArrays.from_numpy(
        images=images,
        serology=encoder.transform(values, missing),
        labels=cohort.labels(),
        times=times,
        events=events,
        case_ids=cohort.case_ids,
    )
    arrays.descriptions = descriptions
    return arrays


_Task = tuple  # (case, channels, grid, cache folder, optional channels): case_image's arguments
_Result = tuple[tuple[np.ndarray, dict] | None, InputError | None]


def _preprocess_one(task: _Task) -> _Result:
    """``case_image`` of one task; a bad image is returned as its error, not raised, so the
    caller decides whether it stops the run."""
    try:
        return case_image(*task), None
    except InputError as exc:
        return None, exc


def _init_preprocess_worker() -> None:
    """One thread per worker process: the processes are the parallelism."""
    import SimpleITK as sitk

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _preprocess_all(tasks: list[_Task], workers: int) -> Iterator[_Result]:
    """``_preprocess_one`` of every task, in order, in ``workers`` processes (in this process
    for one worker or a single case). Forked workers inherit the loaded template; where fork
    is not available they start fresh."""
    workers = max(1, min(int(workers), len(tasks), os.cpu_count() or 1))
    if workers <= 1:
        yield from map(_preprocess_one, tasks)
        return
    warm = getattr(tasks[0][2], "warm", None)
    if callable(warm):
        warm()  # template caches, before the workers fork
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=pool_context(),
        initializer=_init_preprocess_worker,
    ) as pool:
        yield from pool.map(_preprocess_one, tasks)
