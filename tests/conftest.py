"""Fixtures: the tiny base built once, a small latent folder, a clean accelerate state.
Helpers (params, repo copies, the dvc runner) are in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fashion_lora.latents import ShardWriter
from fashion_lora.params import Params, load_params
from tests.helpers import CAPTIONS, REPO, SMALL, dvc, make_repo, ran

PIPELINE_STAGES = {"check", "download", "base_model", "filter", "precompute", "train", "judge", "evaluate", "generate",
                   "report"}


WORKER_THREADS = 1  # torch threads per xdist worker: `make test` runs two workers on two cores


def pytest_configure(config):
    """Under pytest-xdist, each worker computes on one thread (two workers of two threads on two
    cores run several times slower than either alone); stage subprocesses take theirs from
    `cpu_threads`, 1 in `SMALL`."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = str(WORKER_THREADS)
        torch.set_num_threads(WORKER_THREADS)


@pytest.fixture(autouse=True)
def _worker_threads():
    """A test that sets torch's thread count (a stage's `configure_torch` with the default
    params) does not leave it raised for the next test on the same worker."""
    import os

    yield
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(WORKER_THREADS)


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from fashion_lora.provision import provision_base

    out = tmp_path_factory.mktemp("tiny") / "base"
    provision_base("tiny-random", 42, out)
    return out


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """One small pipeline (`SMALL` settings) run from scratch by `dvc repro`, once per session;
    the end-to-end tests copy it (`helpers.copy_run`) instead of each running its own."""
    repo = make_repo(tmp_path_factory.mktemp("small_run"), SMALL)
    assert ran(dvc(repo, "repro")) == PIPELINE_STAGES
    return repo


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents")
    gen = torch.Generator().manual_seed(0)
    w = ShardWriter(out, 16, torch.float16)
    for i in range(40):
        lat = torch.randn(4, 8, 8, generator=gen) * 0.8 + (i % 3) * 0.3
        w.add(lat, {"image_name": f"{i}.jpg", "caption": CAPTIONS[i % 3], "split": "val" if i % 5 == 0 else "train",
                    "crop": [0, 0, 1, 1], "orig_size": [1, 1]})
    w.close({"resolution": 64})
    return out


@pytest.fixture(scope="module")
def bucket_latent_dir(tmp_path_factory) -> Path:
    """Latents in three train buckets (64x64: 24, 64x96: 9, 96x64: 1 image) and a bucket that
    only val has (64x128), as precompute writes them."""
    out = tmp_path_factory.mktemp("bucket_latents")
    gen = torch.Generator().manual_seed(1)
    w = ShardWriter(out, 16, torch.float16)
    plan = [((64, 64), "train")] * 24 + [((64, 96), "train")] * 9 + [((96, 64), "train")] + \
        [((64, 64), "val")] * 4 + [((64, 96), "val")] * 2 + [((64, 128), "val")]
    for i, ((bw, bh), split) in enumerate(plan):
        lat = torch.randn(4, bh // 8, bw // 8, generator=gen) * 0.8 + (i % 3) * 0.3
        w.add(lat, {"image_name": f"{i}.jpg", "caption": CAPTIONS[i % 3], "split": split, "bucket": [bw, bh],
                    "crop": [0, 0, 1, 1], "orig_size": [1, 1]})
    w.close({"resolution": 64, "shape": "buckets", "bucket_size": "short_side", "crop": "center",
             "buckets": [[64, 64], [64, 96], [64, 128], [96, 64]], "train_bucket": [64, 64]})
    return out


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """train() builds an Accelerator; accelerate keeps its state per process, so tests that
    train with different mixed precision in one pytest process start from a clean state."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
