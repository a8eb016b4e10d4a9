"""Latents: batched VAE encoding and sharded `.pt` files with an index.

On disk (`data/latents/`):
- `shard_00000.pt` ... : `{"latents": Tensor[n, 4, r/8, r/8], "items": Tensor[n] (int64 index ids)}`,
  tensors only, so they load with `torch.load(weights_only=True)`;
- `index.json`: `meta` (resolution, dtype, scaling factor) and one entry per latent
  (`shard`, `offset`, `image_name`, `caption`, `split`, `crop` box in original pixels, `orig_size`).
A few shards instead of thousands of tiny files keep DVC fast.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Iterable, Optional

import torch

from .utils import UserError, atomic_torch_save

log = logging.getLogger(__name__)
INDEX = "index.json"


class LatentsError(UserError):
    """A shard or the index is missing, corrupt, or does not match."""


@torch.no_grad()
def encode(vae, x: torch.Tensor) -> torch.Tensor:
    """Scaled posterior mean: deterministic, and what SD training samples around."""
    dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    return (dist.mean * vae.config.scaling_factor).float().cpu()


class ShardWriter:
    """Buffers latents and writes fixed-size shards atomically (bounded memory)."""

    def __init__(self, out_dir: Path, shard_size: int, dtype: torch.dtype):
        self.out_dir, self.shard_size, self.dtype = out_dir, shard_size, dtype
        self.buf: list[torch.Tensor] = []
        self.ids: list[int] = []
        self.items: list[dict] = []
        self.shards: list[dict] = []

    def add(self, latent: torch.Tensor, item: dict) -> None:
        item = {"shard": len(self.shards), "offset": len(self.buf), **item}
        self.buf.append(latent)
        self.ids.append(len(self.items))
        self.items.append(item)
        if len(self.buf) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        name = f"shard_{len(self.shards):05d}.pt"
        data = {"latents": torch.stack(self.buf).to(self.dtype).contiguous(),
                "items": torch.tensor(self.ids, dtype=torch.int64)}
        atomic_torch_save(data, self.out_dir / name)
        self.shards.append({"file": name, "count": len(self.buf)})
        self.buf, self.ids = [], []

    def close(self, meta: dict) -> dict:
        self.flush()
        index = {"meta": meta, "shards": self.shards, "items": self.items}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=1, ensure_ascii=False))
        return index


def read_index(latent_dir: Path) -> dict:
    path = latent_dir / INDEX
    if not path.is_file():
        raise LatentsError(f"{path} not found; run `dvc repro precompute`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LatentsError(f"{path}: corrupt index ({e}); rerun `dvc repro -f precompute`") from None


def load_shard(path: Path) -> dict:
    """Load one shard with weights_only=True: a pickle carrying code is refused, never run."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LatentsError(f"{path}: shard listed in the index is missing; rerun `dvc repro -f precompute`") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LatentsError(f"{path}: not a valid latent shard (refused by torch.load(weights_only=True): "
                           f"{first}); rerun `dvc repro -f precompute`") from None
    if not isinstance(data, dict) or set(data) != {"latents", "items"}:
        raise LatentsError(f"{path}: unexpected content; a shard holds exactly 'latents' and 'items'")
    return data


def load_latents(latent_dir: Path, split: Optional[str] = None) -> tuple[torch.Tensor, list[dict]]:
    """All latents (float32) of `split` (or all) with their index entries, verified shard by shard."""
    index = read_index(latent_dir)
    items = index["items"]
    wanted = [i for i, it in enumerate(items) if split is None or it["split"] == split]
    wanted_set = set(wanted)
    parts: list[torch.Tensor] = []
    order: list[int] = []
    for s_no, shard in enumerate(index["shards"]):
        data = load_shard(latent_dir / shard["file"])
        lat, ids = data["latents"], data["items"].tolist()
        expect = [i for i, it in enumerate(items) if it["shard"] == s_no]
        if len(ids) != shard["count"] or ids != expect or lat.shape[0] != len(ids):
            raise LatentsError(f"{latent_dir / shard['file']}: does not match {INDEX} "
                               f"({len(ids)} latents, index expects {shard['count']})")
        take = [k for k, i in enumerate(ids) if i in wanted_set]
        if take:
            parts.append(lat[take].float())
            order.extend(ids[k] for k in take)
    if not parts:
        return torch.empty(0), []
    return torch.cat(parts), [items[i] for i in order]


def iter_chunks(seq: list, size: int) -> Iterable[list]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
