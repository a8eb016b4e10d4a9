"""Disk: a full disk is one line naming the file, the free space and the way out, with nothing
half-written; a run is sized before it starts, and a run that cannot fit is refused."""

import errno
import json
import os
import re
import subprocess

import pytest
import torch

from fashion_lora.disk import LORA_PER_RANK, additional_need, check_free_space, estimate
from fashion_lora.errors import DiskFull, UserError
from fashion_lora.files import atomic_dir, atomic_write_bytes
from fashion_lora.training import train
from tests.helpers import copy_run, dvc, git, outputs, small_params, train_params, write_params


def _enospc(*_args, **_kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_in_an_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "reports" / "metrics.json"
    atomic_write_bytes(target, b"old")
    monkeypatch.setattr(os, "fsync", _enospc)  # the kernel's answer when the data no longer fits
    with pytest.raises(DiskFull) as info:
        atomic_write_bytes(target, b"new")
    message = str(info.value)
    assert str(target) in message and "free on that filesystem" in message and "dvc checkout" in message
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temp file left


def test_full_disk_inside_an_atomic_dir_keeps_the_previous_folder(tmp_path):
    out = tmp_path / "lora"
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_bytes(b"previous")
    with pytest.raises(DiskFull, match="lora"), atomic_dir(out) as tmp:
        (tmp / "weights").write_bytes(b"partial")
        _enospc()  # e.g. save_pretrained running out of space half-way
    assert (out / "weights").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]


def test_train_on_a_full_disk_names_the_last_good_checkpoint(tmp_path, tiny_base, latent_dir, monkeypatch):
    calls = []

    def fsync_until_full(fd):
        calls.append(fd)
        if len(calls) > 1:  # the first checkpoint (step 5) fits, the second does not
            _enospc()

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    out = outputs(tmp_path)
    with pytest.raises(DiskFull) as info:
        train(train_params(max_steps=20, val_every=10, checkpoint_every=5), tiny_base, latent_dir, out)
    message = str(info.value)
    assert "checkpoint.pt" in message and "train: stopped at step 10 of 20" in message, message
    assert f"last checkpoint at step 5 ({out.checkpoint})" in message
    assert torch.load(out.checkpoint, weights_only=True)["step"] == 5  # the last good one is intact
    assert not list(out.checkpoint_dir.glob("*.tmp"))


def test_lora_sizes_per_rank_are_the_real_architectures():
    """The estimate's table recounted from the tiny base and the SD1.5 architecture (meta device)."""
    from diffusers import UNet2DConditionModel

    from fashion_lora.sd15 import sd15_unet_config
    from fashion_lora.tiny import build_tiny

    def per_rank(model) -> dict:
        found = {}
        for name, m in model.named_modules():
            key = name.rsplit(".", 2)[-2] + ".0" if name.endswith("to_out.0") else name.rsplit(".", 1)[-1]
            if isinstance(m, torch.nn.Linear):
                found[key] = found.get(key, 0) + m.in_features + m.out_features
            elif isinstance(m, torch.nn.Conv2d):
                found[key] = found.get(key, 0) + m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels
        return found

    def expected(table, model):
        counts = per_rank(model)
        return {k: counts[k] for k in table if k in counts}

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as work:
        tiny = build_tiny(0, Path(work))
    for kind, unet, text in (("tiny", tiny.unet, tiny.text_encoder), ("sd15", None, None)):
        if kind == "sd15":
            from transformers import CLIPTextConfig, CLIPTextModel
            with torch.device("meta"):
                unet = UNet2DConditionModel(**sd15_unet_config())
                text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                    num_attention_heads=12, max_position_embeddings=77))
        table = LORA_PER_RANK[kind]
        unet_keys = ("proj_in", "to_q", "to_k", "to_v", "to_out.0", "proj_out", "conv1", "conv2")
        assert {k: table[k] for k in unet_keys} == expected(unet_keys, unet), kind
        text_keys = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
        assert {k: table[k] for k in text_keys} == expected(text_keys, text), kind


def test_estimate_of_the_real_run_and_a_refusal_naming_the_shortfall(tmp_path):
    real = small_params({"data.source": "deepfashion", "model.base": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                         "precompute.resolution": 512, "train.batch_size": 4})
    report = estimate(real)
    assert report["outputs"]["data/raw"] == 5_400_000_000 and report["download_extra"] == 5_400_000_000
    # 512x768 portraits, fp16, each also mirrored (precompute.flipped, the default)
    assert report["outputs"]["data/latents"] == 10_000 * (2 * 4 * 64 * 96 * 2 + 400)
    assert 1e7 < report["lora_params"] < 1.05e7  # rank 12 UNet + rank 16 CLIP attention on SD1.5
    assert report["hub_download"] == report["outputs"]["models/base"] == 4_270_000_000
    needs = additional_need(report, root=tmp_path, cache=tmp_path / ".dvc/cache")
    assert sum(needs.values()) == (report["workspace"] + report["download_extra"] + report["cache"]
                                   + report["outputs"]["models/lora"] + report["hub_download"])
    assert needs[tmp_path.resolve()] >= report["workspace"] + report["download_extra"]
    with pytest.raises(UserError, match=r"disk: this run needs about .* more on the filesystem of"):
        check_free_space({tmp_path: 10**18})


@pytest.mark.slow
@pytest.mark.xdist_group("small_run")  # on the worker that holds the session's small pipeline
def test_a_small_filesystem_refuses_runs_and_a_full_disk_mid_stage_is_one_line(tmp_path, small_run):
    """The trial of issue 27 on a real small filesystem (a tmpfs mount) after a complete run:
    - 2 MB left: `dvc exp run -S train...` is refused by the check stage, nothing deleted;
    - 64 KB left: generate alone (`dvc repro -s`, no check) with more images than it frees
      fails mid-stage with one line, exit code 2 and no traceback of ours;
    - train alone (`dvc repro -s -f train`) is refused by its own check after DVC removed its
      outputs, and says that `dvc checkout` restores them; once space is freed, it does."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mount)], check=True)
    try:
        repo = copy_run(small_run, mount / "repo")  # the session's complete run, on the small filesystem
        assert dvc(repo, "status").stdout.strip() == "Data and pipelines are up to date."
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "run")
        adapter = (repo / "models/lora/pytorch_lora_weights.safetensors").read_bytes()
        images = sorted(p.name for p in (repo / "reports/generate/images").iterdir())
        filler = mount / "filler"
        stat = os.statvfs(mount)
        free = stat.f_bavail * stat.f_frsize

        def leave(n_bytes: int) -> None:
            subprocess.run(["fallocate", "-l", str(free - n_bytes), str(filler)], check=True)

        leave(2_000_000)
        proc = dvc(repo, "exp", "run", "-S", "train.max_steps=40", "-S", "train.checkpoint_every=10", check=False)
        log = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "exited with 2" in log, log[-3000:]
        assert len(re.findall(r"disk: this run needs about .* more on the filesystem of", log)) == 1, log[-3000:]
        assert (repo / "models/lora/pytorch_lora_weights.safetensors").read_bytes() == adapter  # nothing deleted
        assert json.loads((repo / "reports/disk.json").read_text())["outputs"]["models/lora"] > 0
        git(repo, "checkout", "params.yaml")

        leave(64_000)
        write_params(repo, {"generate.steps": [2, 3, 4, 5, 6, 7]})
        proc = dvc(repo, "repro", "-s", "generate", check=False)
        log = proc.stdout + proc.stderr
        lines = [line for line in log.splitlines() if "disk full: writing" in line]
        assert proc.returncode != 0 and "exited with 2" in log and len(lines) == 1, log[-3000:]
        assert "free on that filesystem" in lines[0] and "dvc checkout" in lines[0], lines[0]
        assert not re.search(r'File ".*/(fashion_lora|stages)/', log), "a traceback of ours:\n" + log[-3000:]
        assert not list((repo / "reports/generate").glob(".*.tmp")), "a temp folder was left behind"
        git(repo, "checkout", "params.yaml")

        proc = dvc(repo, "repro", "-s", "-f", "train", check=False)
        log = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "exited with 2" in log, log[-3000:]
        lines = [line for line in log.splitlines() if "disk: this run needs about" in line]
        assert len(lines) == 1 and "`dvc checkout` restores them" in lines[0], log[-3000:]
        assert not (repo / "models/lora").exists()  # DVC removed it before the stage ran

        filler.unlink()
        dvc(repo, "checkout", "-f")
        assert (repo / "models/lora/pytorch_lora_weights.safetensors").read_bytes() == adapter
        assert sorted(p.name for p in (repo / "reports/generate/images").iterdir()) == images
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
