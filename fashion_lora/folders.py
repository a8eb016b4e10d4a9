"""Diffusers pipeline folders (`models/base`, fused exports) that the pinned stack and the previous
major one (diffusers 0.32 / transformers 4.x) both read.

transformers 5 writes two things 4.x cannot read: the CLIP text encoder's weights with flat keys
(`encoder.layers...`; 4.x looks for `text_model.encoder.layers...` and would leave the encoder at
its random init) and the tokenizer as `tokenizer.json` alone, while `model_index.json` names the
slow `CLIPTokenizer`, which needs `vocab.json` and `merges.txt`. `save_pipeline` writes both in the
classic form, which transformers 5 reads too (benchmarks/previous_stack.py proves it with images).
"""

from __future__ import annotations

import json
from pathlib import Path

from .files import atomic_write_text, canonicalize_safetensors

TEXT_MODEL = "text_model."


def save_pipeline(pipe, out_dir: Path) -> None:
    """`pipe.save_pretrained` (safetensors), then the text encoder and tokenizer in classic form."""
    pipe.save_pretrained(out_dir, safe_serialization=True)
    classic_text_encoder(out_dir / "text_encoder")
    slow_tokenizer_files(out_dir / "tokenizer")


def classic_text_encoder(folder: Path) -> None:
    """Prefix the CLIP text encoder's weight keys with `text_model.` (each shard and the shard
    index, when there is one); keys that have it already are kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    def classic(key: str) -> str:
        return key if key.startswith(TEXT_MODEL) else TEXT_MODEL + key

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata()
            if all(k.startswith(TEXT_MODEL) for k in f.keys()):
                continue
            tensors = {classic(k): f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(file), metadata=metadata)
        canonicalize_safetensors(file)  # sorted header: the same weights give the same bytes
    for index in folder.glob("*.safetensors.index.json"):
        raw = json.loads(index.read_text())
        raw["weight_map"] = {classic(k): v for k, v in sorted(raw.get("weight_map", {}).items())}
        atomic_write_text(index, json.dumps(raw, indent=2, sort_keys=True) + "\n")


def slow_tokenizer_files(folder: Path) -> None:
    """`vocab.json` and `merges.txt` (what the slow CLIPTokenizer of transformers 4.x reads) from
    the BPE model in `tokenizer.json`; nothing when the folder has them already or holds no
    BPE `tokenizer.json`."""
    source = folder / "tokenizer.json"
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file() or not source.is_file():
        return
    model = json.loads(source.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        return
    vocab = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
    # tokenizers writes a merge as "a b" (before 0.20) or as the pair ["a", "b"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    atomic_write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
