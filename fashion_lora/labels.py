"""DeepFashion-MultiModal's label files: read (every malformed line named) and written.

The data set ships labels beside the images (its README defines the codes):
- `labels/shape/shape_anno_all.txt`: `<img_name> <shape_0> ... <shape_11>`;
- `labels/texture/fabric_ann.txt`: `<img_name> <upper> <lower> <outer>`;
- `labels/texture/pattern_ann.txt` (the data set calls these "color"): `<img_name> <upper> <lower> <outer>`.
The schema (fashion_lora/attributes.py) names every attribute and its values; a code that
means NA ("not visible") becomes None. `outer_clothing` (is an outer garment worn) is in no
file: it is derived from the outer fabric and pattern labels, as the captions are written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .attributes import FILES, NAMES, OUTER_CLOTHING, Attribute
from .errors import UserError

log = logging.getLogger(__name__)
Labels = dict[str, dict[str, str | None]]  # image name -> attribute -> value (None = NA)


def read_file(path: Path, attrs: tuple[Attribute, ...]) -> Labels:
    """One label file; a malformed line stops with the file, the line number and what is wrong.

    Read the same however it was saved: a byte-order mark, Windows or old Mac line ends, tabs or
    runs of spaces. A blank line holds nothing; every other line is an image's labels or an error."""
    out: Labels = {}
    for no, raw in enumerate(path.read_bytes().splitlines(), 1):
        where = f"{path}, line {no}"
        try:
            line = raw.decode("utf-8-sig" if no == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1 + len(attrs):
            raise UserError(f"{where}: expected an image name and {len(attrs)} codes, found {len(parts) - 1} "
                            f"codes ({line.strip()[:80]!r})")
        row = {}
        for column, (attr, code) in enumerate(zip(attrs, parts[1:]), 1):
            if not code.isdigit() or int(code) >= len(attr.values):
                raise UserError(f"{where}, column {column} ({attr.name}): code {code!r} is not one of "
                                f"0..{len(attr.values) - 1} (the data set's README)")
            row[attr.name] = attr.decode(int(code))
        if parts[0] in out:
            raise UserError(f"{where}: {parts[0]} is listed twice")
        out[parts[0]] = row
    return out


def outer_clothing(row: dict[str, str | None]) -> str:
    """Whether an outer garment is worn, as the captions state it: yes when its fabric or
    pattern is labelled, no when both are NA."""
    return "yes" if row.get("outer_fabric") is not None or row.get("outer_pattern") is not None else "no"


def read_labels(folder: Path) -> Labels:
    """The labels of `folder` (the data set's layout), merged per image; {} when it has none.
    An image missing from one file gets NA for that file's attributes; `outer_clothing` is
    derived from the texture files (NA for an image in neither)."""
    merged: Labels = {}
    textured: set[str] = set()
    for rel, attrs in FILES:
        path = folder / rel
        if not path.is_file():
            continue
        rows = read_file(path, attrs)
        log.info("%s: %d images", path, len(rows))
        if rel.startswith("texture/"):
            textured.update(rows)
        for name, row in rows.items():
            merged.setdefault(name, {}).update(row)
    for name, row in merged.items():
        for attr in NAMES:
            row.setdefault(attr, None)
        row[OUTER_CLOTHING.name] = outer_clothing(row) if name in textured else None
    return merged


def write_labels(folder: Path, labels: Labels) -> None:
    """`labels` as the data set's three files under `folder` (images in name order)."""
    for rel, attrs in FILES:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [" ".join([name] + [str(a.encode(labels[name].get(a.name))) for a in attrs])
                 for name in sorted(labels)]
        path.write_text("\n".join(lines) + "\n")
