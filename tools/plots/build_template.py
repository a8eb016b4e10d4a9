"""Build DVC's offline plots page: vega, vega-lite and vega-embed (pinned in package.json /
package-lock.json, installed by `npm ci`) inlined into one HTML template, so `dvc plots show`
and `dvc plots diff` render with no network. The template has no `{scripts}` placeholder, so
DVC's CDN script tags are never inserted.

    make plots-template   # npm install + writes .dvc/plots/offline.html (committed)
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / ".dvc" / "plots" / "offline.html"
LIBS = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")


def main() -> int:
    scripts = []
    versions = {}
    for rel in LIBS:
        path = HERE / "node_modules" / rel
        if not path.is_file():
            print(f"missing {path}: run `npm ci` in {HERE}", file=sys.stderr)
            return 1
        name = rel.split("/")[0]
        versions[name] = json.loads((HERE / "node_modules" / name / "package.json").read_text())["version"]
        js = path.read_text(encoding="utf8").replace("</script", "<\\/script")
        for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
            assert placeholder not in js, f"{rel} contains DVC placeholder {placeholder}"
        scripts.append(f"<!-- {name} {versions[name]} -->\n<script>{js}</script>")
    page = "\n".join([
        "<!DOCTYPE html>", "<html>", "<head>", '<meta charset="utf-8">', "{refresh_tag}",
        "<title>fashion-lora plots</title>", *scripts,
        "<style>body{font-family:sans-serif} table{border-spacing:15px} img{image-rendering:pixelated}</style>",
        "</head>", "<body>", "{plot_divs}", "</body>", "</html>", ""])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(page, encoding="utf8")
    print(f"wrote {OUT} ({len(page) // 1024} KiB; {versions})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
