"""Latents: batched VAE encoding and sharded `.pt` files with an index.

On disk (`data/latents/`):
- `shard_00000.pt` ... : `{"latents": Tensor[n, 4, h/8, w/8], "items": Tensor[n] (int64 index ids)}`
  and, with `precompute.flipped`, `"flipped"`: the latents of the mirrored images; tensors
  only, so they load with `torch.load(weights_only=True)`; one bucket (latent shape) per shard;
- `index.json`: `meta` (resolution, dtype, scaling factor, buckets and their counts, the most
  common train bucket; `flipped` and `flip_gap` with mirrored latents) and one entry per
  latent (`shard`, `offset`, `image_name`, `caption`, `split`, `bucket` [width, height], `crop`
  box in original pixels, `orig_size`).
A few shards instead of thousands of tiny files keep DVC fast.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .buckets import bucket_name
from .errors import UserError
from .files import atomic_torch_save

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
    """Buffers latents per shape (bucket) and writes fixed-size single-shape shards atomically
    (bounded memory: at most `shard_size` latents per bucket)."""

    def __init__(self, out_dir: Path, shard_size: int, dtype: torch.dtype):
        self.out_dir, self.shard_size, self.dtype = out_dir, shard_size, dtype
        self.bufs: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        self.items: list[dict] = []
        self.shards: list[dict] = []

    def add(self, latent: torch.Tensor, item: dict, flipped: torch.Tensor | None = None) -> None:
        """Buffer one latent (and, when the writer stores them, the latent of its mirrored image)."""
        buf = self.bufs.setdefault(tuple(latent.shape), [])
        buf.append((len(self.items), latent if flipped is None else torch.stack([latent, flipped])))
        self.items.append(dict(item))
        if len(buf) == self.shard_size:
            self.flush(tuple(latent.shape))

    def flush(self, shape: tuple) -> None:
        buf = self.bufs.pop(shape, [])
        if not buf:
            return
        name = f"shard_{len(self.shards):05d}.pt"
        for offset, (i, _) in enumerate(buf):  # where an item lives is known once its shard is written
            self.items[i] = {"shard": len(self.shards), "offset": offset, **self.items[i]}
        stacked = torch.stack([lat for _, lat in buf]).to(self.dtype)
        data = {"latents": stacked.contiguous(), "items": torch.tensor([i for i, _ in buf], dtype=torch.int64)}
        if stacked.dim() == 5:  # (latent, latent of the mirrored image) pairs
            data = {"latents": stacked[:, 0].contiguous(), "flipped": stacked[:, 1].contiguous(), "items": data["items"]}
        atomic_torch_save(data, self.out_dir / name)
        self.shards.append({"file": name, "count": len(buf)})

    def close(self, meta: dict) -> dict:
        for shape in sorted(self.bufs):
            self.flush(shape)
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
    if not isinstance(data, dict) or set(data) not in ({"latents", "items"}, {"latents", "items", "flipped"}):
        raise LatentsError(f"{path}: unexpected content; a shard holds 'latents' and 'items' (and 'flipped')")
    return data


@dataclass
class LatentGroups:
    """The latents of a split grouped by shape (bucket), groups sorted by shape: a batch is
    drawn from one group. `items` are the index entries group after group, so global item `i`
    is row `i - offsets[g]` of group `g`."""

    tensors: list[torch.Tensor]  # [n_g, C, h_g, w_g] each
    items: list[dict]
    flipped: list[torch.Tensor] | None = None  # the latents of the mirrored images (`precompute.flipped`)

    @property
    def sizes(self) -> list[int]:
        return [len(t) for t in self.tensors]

    @property
    def offsets(self) -> list[int]:
        return [sum(self.sizes[:g]) for g in range(len(self.tensors))]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors + (self.flipped or []))

    def per_item(self) -> list[torch.Tensor]:
        """One [C, h, w] view per item, in `items` order."""
        return [row for t in self.tensors for row in t]

    def to(self, device) -> LatentGroups:
        flipped = [t.to(device) for t in self.flipped] if self.flipped is not None else None
        return LatentGroups([t.to(device) for t in self.tensors], self.items, flipped)


def load_latents(latent_dir: Path, split: str | None = None) -> LatentGroups:
    """All latents (float32) of `split` (or all) with their index entries, grouped by shape,
    verified shard by shard."""
    index = read_index(latent_dir)
    items = index["items"]
    wanted_set = {i for i, it in enumerate(items) if split is None or it["split"] == split}
    parts: dict[tuple, list[torch.Tensor]] = {}
    flipped: dict[tuple, list[torch.Tensor]] = {}
    order: dict[tuple, list[int]] = {}
    for s_no, shard in enumerate(index["shards"]):
        data = load_shard(latent_dir / shard["file"])
        lat, ids = data["latents"], data["items"].tolist()
        expect = [i for i, it in enumerate(items) if it["shard"] == s_no]
        if len(ids) != shard["count"] or sorted(ids) != expect or lat.shape[0] != len(ids):
            raise LatentsError(f"{latent_dir / shard['file']}: does not match {INDEX} "
                               f"({len(ids)} latents, index expects {shard['count']})")
        take = [k for k, i in enumerate(ids) if i in wanted_set]
        if ("flipped" in data) != bool(index["meta"].get("flipped")):
            state = "present" if "flipped" in data else "missing"
            raise LatentsError(f"{latent_dir / shard['file']}: mirrored latents {state}, unlike {INDEX}; "
                               "rerun `dvc repro -f precompute`")
        if take:
            shape = tuple(lat.shape[1:])
            parts.setdefault(shape, []).append(lat[take].float())
            if "flipped" in data:
                flipped.setdefault(shape, []).append(data["flipped"][take].float())
            order.setdefault(shape, []).extend(ids[k] for k in take)
    shapes = sorted(parts)
    return LatentGroups([torch.cat(parts[s]) for s in shapes], [items[i] for s in shapes for i in order[s]],
                        [torch.cat(flipped[s]) for s in shapes] if flipped else None)


def bucket_counts(items: list[dict]) -> dict[str, dict[str, int]]:
    """{"WxH": {"train": n, "val": m}} over index entries, buckets sorted by size."""
    out: dict[str, dict[str, int]] = {}
    for it in sorted(items, key=lambda it: tuple(it["bucket"])):
        row = out.setdefault(bucket_name(it["bucket"]), {"train": 0, "val": 0})
        row[it["split"]] = row.get(it["split"], 0) + 1
    return out


def iter_chunks(seq: list, size: int) -> Iterable[list]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
