"""What a training step reads: seeded single-bucket batches of resident latents with latent and
caption augmentation, text embeddings by caption row, and the fixed validation set."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import diffusion
from ..base import vae_scale_factor
from ..buckets import bucket_name
from ..devices import to_device
from ..errors import UserError
from ..latents import LatentGroups, load_latents
from ..params import Params, TrainParams
from ..seeds import mix_seed
from ..val_loss import FixedEval, fixed_eval

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int, stream: int) -> int:
    """Independent, reproducible seed for (run seed, step, stream)."""
    return mix_seed(seed, step * 7919 + stream * 104_729)


def rank_stream(stream: int, rank: int) -> int:
    """Process `rank`'s own stream of a per-process draw (augmentation): rank 0 keeps `stream`, so
    a one-process run draws as before, and the others never share it (streams 1-999 are the
    run's own: 1 batch order, 2 augmentation, 3 + rank noise)."""
    return stream + 1000 * rank


def sample_noise(shape: torch.Size, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of `shape` (fp32, on the CPU generator's device); `offset` adds a
    per-channel constant (noise offset)."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if offset > 0:
        noise = noise + offset * torch.randn(shape[:2] + (1, 1), generator=generator)
    return noise


def latent_augment(latents: torch.Tensor, generator: torch.Generator, noise_prob: float, noise_std: float,
                   hflip_prob: float, crop_prob: float, crop_min_scale: float,
                   flipped: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample latent augmentation: horizontal flip, crop resized back, Gaussian noise.

    A flip takes `flipped` (the latents of the mirrored images, `precompute.flipped`) where
    given, else mirrors the latent. The draws come from the CPU generator, so a batch is the
    same on any device and either way; on a GPU the choices travel by non-blocking copies and
    are applied by selection (no host sync).
    """
    b, _, h, w = latents.shape
    dev = latents.device
    flip = torch.rand(b, generator=generator) < hflip_prob
    mirrored = latents.flip(-1) if flipped is None else flipped
    out = torch.where(to_device(flip, dev).view(b, 1, 1, 1), mirrored, latents)
    crop = torch.rand(b, generator=generator) < crop_prob
    scales = crop_min_scale + (1 - crop_min_scale) * torch.rand(b, generator=generator)
    offs = torch.rand(b, 2, generator=generator)
    for i in torch.nonzero(crop).flatten().tolist():
        ch, cw = max(1, round(h * float(scales[i]))), max(1, round(w * float(scales[i])))
        top, left = int(offs[i, 0] * (h - ch + 1)), int(offs[i, 1] * (w - cw + 1))
        window = out[i:i + 1, :, top:top + ch, left:left + cw]
        out[i:i + 1] = F.interpolate(window, size=(h, w), mode="bilinear", align_corners=False)
    add = (torch.rand(b, generator=generator) < noise_prob).float().view(b, 1, 1, 1)
    if noise_std > 0:
        out = out + to_device(add, dev) * noise_std * to_device(torch.randn(out.shape, generator=generator), dev)
    return out


class LatentBatches:
    """Seeded, resumable single-bucket batches over resident latents, with latent and caption
    augmentation.

    Batch `s` of process `rank` is a pure function of (seed, s, rank): no iterator state to save;
    each process augments its items with its own draws.
    Each epoch shuffles every bucket, cuts it into global batches (`batch_size` x processes; the
    rank takes its slice, so processes never share an item in a step) and shuffles the order
    of those batches. A bucket with fewer items than a global batch gives one smaller batch per
    epoch (all its items on one process; items // processes each on several, an item repeated
    only when the bucket has fewer items than processes); a larger one gives whole batches, and
    its remainder waits for the next epoch's shuffle.
    Captions are pre-tokenized in every variant (plain, + each quality term, and "" for
    dropout) into one table, `token_ids` [(1 + Q) * N + 1, train.max_token_length]; a batch returns row numbers
    into it, so text embeddings can be cached per row. The latents may live on the GPU: the
    random draws stay on the CPU generators, so a batch is the same wherever they live.
    """

    def __init__(self, latents: LatentGroups, captions: list[str], tokenizer, train_params: TrainParams, seed: int,
                 rank: int = 0, world: int = 1):
        self.groups, self.seed, self.rank, self.world = latents, seed, rank, world
        self._plan: tuple[int, list[tuple[int, torch.Tensor]]] = (-1, [])
        self.batch_size = train_params.batch_size
        self.augment, self.captions = train_params.augment, train_params.captions
        self.n = len(latents)
        self.sizes, self.offsets = latents.sizes, latents.offsets
        global_batch = self.batch_size * world
        self.per_epoch = sum(n // global_batch if n >= global_batch else 1 for n in self.sizes)
        variants = [captions] + [[f"{c}, {q}" for c in captions] for q in self.captions.quality_terms] + [[""]]
        ids, truncated = zip(*(diffusion.tokenize(tokenizer, v, train_params.max_token_length) for v in variants))
        self.token_ids = torch.cat(ids)
        self.truncated = truncated[0]
        self.empty_row = len(self.token_ids) - 1

    def epoch_plan(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        """The epoch's global batches as (group, rows of that group), in training order."""
        generator = torch.Generator().manual_seed(step_seed(self.seed, epoch, 1))
        global_batch = self.batch_size * self.world
        plan = []
        for g, n in enumerate(self.sizes):
            perm = torch.randperm(n, generator=generator)
            if n >= global_batch:
                plan += [(g, perm[k * global_batch:(k + 1) * global_batch]) for k in range(n // global_batch)]
            else:  # one smaller batch: n // world per process (repeats only when n < processes)
                per = max(1, n // self.world)
                plan.append((g, perm.repeat(math.ceil(per * self.world / n))[:per * self.world]))
        if len(self.sizes) > 1:  # one bucket: the batches are already in a random order
            plan = [plan[k] for k in torch.randperm(len(plan), generator=generator).tolist()]
        return plan

    def indices(self, step: int) -> tuple[int, torch.Tensor]:
        """(group, rows of that group) of this process's batch at `step`."""
        epoch, pos = divmod(step, self.per_epoch)
        if self._plan[0] != epoch:  # drawn once per epoch (O(N) per draw)
            self._plan = (epoch, self.epoch_plan(epoch))
        g, rows = self._plan[1][pos]
        per = len(rows) // self.world
        return g, rows[self.rank * per:(self.rank + 1) * per]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented latents [b, 4, h, w] (where the latents live) and caption rows [b] into `token_ids`."""
        g, local = self.indices(step)
        idx = local + self.offsets[g]
        generator = torch.Generator().manual_seed(step_seed(self.seed, step, rank_stream(2, self.rank)))
        a = self.augment
        group = self.groups.tensors[g]
        rows_here = to_device(local, group.device)
        flipped = self.groups.flipped[g][rows_here] if self.groups.flipped is not None else None
        lat = latent_augment(group[rows_here], generator, a.noise_prob, a.noise_std,
                             a.hflip_prob, a.crop_prob, a.crop_min_scale, flipped)
        c = self.captions
        drop = torch.rand(len(idx), generator=generator) < c.dropout_prob
        quality = torch.rand(len(idx), generator=generator) < c.quality_prob
        term = torch.randint(0, max(1, len(c.quality_terms)), (len(idx),), generator=generator)
        variant = torch.where(quality & (len(c.quality_terms) > 0), 1 + term, torch.zeros_like(term))
        rows = torch.where(drop, torch.full_like(idx, self.empty_row), variant * self.n + idx)
        return lat, rows


class TextEmbeddings:
    """Text-encoder outputs by caption row. A frozen encoder's (eval mode, so a cached embedding
    equals a recomputed one) are cached when all distinct rows fit in `limit_bytes` (templated
    fashion captions repeat a lot), computed per batch otherwise; an encoder that `trains`
    (train.text_encoder_lora) runs on every batch with gradients."""

    def __init__(self, text_encoder, token_ids: torch.Tensor, device: torch.device, limit_bytes: int = 1 << 30,
                 trains: bool = False):
        self.encoder, self.token_ids, self.device, self.trains = text_encoder, token_ids, device, trains
        uniq, self.inverse = torch.unique(token_ids, dim=0, return_inverse=True)
        plain = getattr(text_encoder, "module", text_encoder)  # a training encoder may be wrapped in DDP
        dtype = next(plain.parameters()).dtype
        size = len(uniq) * token_ids.shape[1] * plain.config.hidden_size * dtype.itemsize
        cache = size <= limit_bytes and not trains
        self.table = diffusion.encode_text(text_encoder, uniq).to(device) if cache else None
        log.info("text embeddings: %d distinct captions of %d rows, %s", len(uniq), len(token_ids),
                 f"cached ({size / 2**20:.1f} MiB)" if cache else
                 "computed every step (the text encoder trains)" if trains else "computed per step")

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[to_device(self.inverse[rows], self.device)]
        with torch.set_grad_enabled(self.trains):
            return diffusion.text_hidden_states(self.encoder, to_device(self.token_ids[rows], self.device))


@dataclass
class Data:
    """Train batches, text embeddings and the fixed validation plan."""

    batches: LatentBatches
    text: TextEmbeddings
    val_latents: list[torch.Tensor]  # one [C, h, w] per val item (buckets may differ)
    val_encoder_hidden_states: torch.Tensor | None  # of the frozen encoder; None when it trains
    val_ids: torch.Tensor  # val captions' token ids
    val_plan: FixedEval
    val_truncated: int
    sample_size: tuple[int, int]  # (height, width) in pixels of the most common train bucket; 0 without a VAE


def setup_data(params: Params, model, latent_dir: Path) -> Data:
    """Train latents resident in memory with their text embeddings; the val plan fixed by the seed.
    `model` is the `setup.Model` the batches are drawn for."""
    base, accelerator = model.base, model.accelerator
    train_latents = load_latents(latent_dir, "train")
    val = load_latents(latent_dir, "val")
    if len(train_latents) == 0:
        raise UserError(f"{latent_dir}: no train latents; check filter.val_fraction and the data")
    if len(val) == 0:
        raise UserError(f"{latent_dir}: no val latents; validation needs some (filter.val_fraction)")
    if params.train.data_on_device and model.device.type == "cuda":
        # A quarter of the free memory at most: the UNet's activations need the rest.
        fits = train_latents.nbytes < torch.cuda.mem_get_info(model.device)[0] // 4
        log.info("train latents (%.1f MiB) %s", train_latents.nbytes / 2**20,
                 "on the GPU" if fits else "in host memory: too large for the GPU (train.data_on_device)")
        if fits:
            train_latents = train_latents.to(model.device)
    if train_latents.flipped is not None:
        log.info("flips (train.augment.hflip_prob %.2f) take the latents of the mirrored images (precompute.flipped)",
                 params.train.augment.hflip_prob)
    batches = LatentBatches(train_latents, [it["caption"] for it in train_latents.items], base.tokenizer,
                            params.train, params.seed, accelerator.process_index, accelerator.num_processes)
    trains_text = model.text_encoder is not None
    text = TextEmbeddings(model.text_encoder if trains_text else base.text_encoder, batches.token_ids, model.device,
                          trains=trains_text)
    val_ids, val_truncated = diffusion.tokenize(base.tokenizer, [it["caption"] for it in val.items],
                                                params.train.max_token_length)
    # a training encoder is re-encoded at each validation
    val_encoder_hidden_states = None if trains_text else diffusion.encode_text(base.text_encoder, val_ids).float().cpu()
    val_latents = val.per_item()
    # Validation draws timesteps like training does, so the best checkpoint is chosen by the
    # objective being optimised (evaluate reports the uniform-timestep loss per band).
    plan = fixed_eval([tuple(v.shape) for v in val_latents], params.train.val_repeats,
                      base.noise_scheduler.config.num_train_timesteps, params.seed, params.train.timestep_bias)
    log.info("train %d latents in buckets %s (%d batches per epoch), val %d (x%d fixed draws); "
             "%d of %d train captions truncated at %d tokens", len(train_latents), _bucket_sizes(train_latents),
             batches.per_epoch, len(val), params.train.val_repeats, batches.truncated, len(train_latents),
             params.train.max_token_length)
    return Data(batches=batches, text=text, val_latents=val_latents, val_encoder_hidden_states=val_encoder_hidden_states,
                val_ids=val_ids, val_plan=plan, val_truncated=val_truncated,
                sample_size=_sample_size(train_latents, base.vae))


def _sample_size(groups: LatentGroups, vae) -> tuple[int, int]:
    """(height, width) in pixels of the most common train bucket: where samples are drawn."""
    top = max(range(len(groups.tensors)), key=lambda g: groups.sizes[g])
    factor = vae_scale_factor(vae) if vae else 0
    return groups.tensors[top].shape[-2] * factor, groups.tensors[top].shape[-1] * factor


def _bucket_sizes(groups: LatentGroups) -> str:
    """'64x96: 1700, 96x64: 12' (pixels at the VAE's 8x; the latent shape x 8)."""
    return ", ".join(f"{bucket_name(it['bucket'])}: {n}" if "bucket" in it else f"{tuple(t.shape[1:])}: {n}"
                     for t, n, it in zip(groups.tensors, groups.sizes, [groups.items[o] for o in groups.offsets]))
