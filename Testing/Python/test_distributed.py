"""Data-parallel training: 2 CPU processes (gloo) equal single-process training."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.multiprocessing as mp
from toy_problem import N_CLASSES, N_SEROLOGY, toy_problem

from autoimmuneai.training.trainer import TrainConfig, fit, init_distributed

# 37 training cases: global batches of 8 split 4/4, and a last batch of 5 split 3/2
N_TRAIN, N_VAL = 37, 12


def _config() -> TrainConfig:
    # dropout off: each rank draws its own dropout masks, so only then is equality exact
    return TrainConfig(
        epochs=3, batch_size=8, lr=3e-3, channels=(4, 8), strides=(2, 2), dropout=0.0,
        image_dropout=0.0, cox_weight=0.5, augment=True,
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    info = init_distributed()
    cfg = _config()
    res = fit(
        cfg.model_config(N_SEROLOGY, N_CLASSES),
        toy_problem(N_TRAIN, 0),
        toy_problem(N_VAL, 1),
        cfg,
        progress=False,
        info=info,
        checkpoint=Path(out) / "ckpt.pt",
    )
    torch.save(res.state_dict, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_ranks_match_each_other_and_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    cfg = _config()
    args = (cfg.model_config(N_SEROLOGY, N_CLASSES), toy_problem(N_TRAIN, 0), toy_problem(N_VAL, 1))
    single = fit(*args, cfg, progress=False).state_dict
    start = fit(*args, cfg, epochs=0, progress=False).state_dict  # the initial weights
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    diff = max(float((single[k] - rank0[k]).abs().max()) for k in single)
    assert moved > 1e-3  # training changed the weights ...
    assert diff < 1e-4  # ... and both ways changed them the same (up to summation order)


def test_train_command_under_torchrun(tiny_cohort: Path, tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import torch
            from autoimmuneai.training.trainer import TrainConfig, train_bundle
            torch.set_num_threads(1)
            cfg = TrainConfig(epochs=1, batch_size=8, channels=(4, 8), strides=(2, 2),
                              grid_shape=(16, 20, 16), grid_spacing=10.0,
                              preprocessing="model_grid")
            train_bundle({str(tiny_cohort)!r}, {str(tmp_path / "bundle")!r}, cfg,
                         progress=False, distributed=True)
            """
        )
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        str(script),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(
        (tmp_path / "bundle" / "configs" / "metadata.json").read_text(encoding="utf-8")
    )
    assert meta["training"]["world_size"] == 2
    from autoimmuneai.model.bundle import load_bundle

    assert load_bundle(tmp_path / "bundle").image_only is not None
