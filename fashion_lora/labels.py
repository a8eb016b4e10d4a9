"""DeepFashion-MultiModal's label files: read (every malformed line named) and written.

The data set ships labels beside the images (its README defines the codes):
- `labels/shape/shape_anno_all.txt`: `<img_name> <shape_0> ... <shape_11>`;
- `labels/texture/fabric_ann.txt`: `<img_name> <upper> <lower> <outer>`;
- `labels/texture/pattern_ann.txt` (the data set calls these "color"): `<img_name> <upper> <lower> <outer>`.
The schema (fashion_lora/attributes.py) names every attribute and its values; a code that
means NA ("not visible") becomes None.
"""

from __future__ import annotations

from pathlib import Path

from .attributes import FILES, NAMES, Attribute
from .utils import UserError

Labels = dict[str, dict[str, str | None]]  # image name -> attribute -> value (None = NA)


def read_file(path: Path, attrs: tuple[Attribute, ...]) -> Labels:
    """One label file; a malformed line stops with the file, the line number and what is wrong."""
    out: Labels = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}, line {no}"
            if len(parts) != 1 + len(attrs):
                raise UserError(f"{where}: expected an image name and {len(attrs)} codes, found {len(parts) - 1} "
                                f"codes ({line.strip()[:80]!r})")
            row = {}
            for attr, code in zip(attrs, parts[1:]):
                if not code.isdigit() or int(code) >= len(attr.values):
                    raise UserError(f"{where}: {attr.name} code {code!r} is not one of 0..{len(attr.values) - 1}")
                row[attr.name] = attr.decode(int(code))
            if parts[0] in out:
                raise UserError(f"{where}: {parts[0]} is listed twice")
            out[parts[0]] = row
    return out


def read_labels(folder: Path) -> Labels:
    """The labels of `folder` (the data set's layout), merged per image; {} when it has none.
    An image missing from one file gets NA for that file's attributes."""
    merged: Labels = {}
    for rel, attrs in FILES:
        path = folder / rel
        if not path.is_file():
            continue
        for name, row in read_file(path, attrs).items():
            merged.setdefault(name, {}).update(row)
    for row in merged.values():
        for name in NAMES:
            row.setdefault(name, None)
    return merged


def write_labels(folder: Path, labels: Labels) -> None:
    """`labels` as the data set's three files under `folder` (images in name order)."""
    for rel, attrs in FILES:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [" ".join([name] + [str(a.encode(labels[name].get(a.name))) for a in attrs])
                 for name in sorted(labels)]
        path.write_text("\n".join(lines) + "\n")
