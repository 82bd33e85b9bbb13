"""llama-server's web UI as C++ sources: what llama.cpp's scripts/ui-assets.cmake generates from
tools/ui's templates and built assets (tools/ui/dist), written here so that the server builds
without cmake. The sdist of llama-cpp-python 0.3.36 ships no dist: the table is then empty and
the server answers its API only.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..files import atomic

UI_TEMPLATES = ("tools/ui/ui.h.in", "tools/ui/ui.cpp.in")
UI_DIST = "tools/ui/dist"


# scripts/ui-assets.cmake's mime_from_ext
UI_MIME = {
    "html": "text/html; charset=utf-8", "css": "text/css", "js": "application/javascript",
    "json": "application/json", "webmanifest": "application/manifest+json",
    "svg": "image/svg+xml", "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg",
    "ico": "image/x-icon", "woff": "font/woff", "woff2": "font/woff2",
}  # fmt: skip


def ui_sources(src: Path) -> tuple[str, str]:
    """The text of tools/ui's generated ui.h and ui.cpp, as scripts/ui-assets.cmake writes them:
    every file of tools/ui/dist as a byte array (uncompressed: its gzip option only saves
    bandwidth), or an empty table when there is no dist/index.html (0.3.36's sdist)."""
    dist = src / UI_DIST
    assets: list[str] = []
    if (dist / "index.html").is_file():
        assets = sorted(
            rel
            for rel in (p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file())
            if not rel.startswith("_gzip/")
        )
    arrays, table = [], []
    for i, name in enumerate(assets):
        data = (dist / name).read_bytes()
        hex_bytes = "".join(f"0x{b:02x}," for b in data)
        arrays.append(f"static const unsigned char asset_{i}[] = {{{hex_bytes}}};\n")
        etag = hashlib.sha256(data).hexdigest()
        ext = name.rpartition(".")[2] if "." in name else ""
        mime = UI_MIME.get(ext, "application/octet-stream")
        table.append(
            f'    {{ "{name}", asset_{i}, sizeof(asset_{i}), "\\"{etag}\\"", "{mime}" }},\n'
        )
    values = {
        "ASSET_ARRAYS": "".join(arrays),
        "ASSET_TABLE": "".join(table),
        "N_ASSETS": str(len(assets)),
        "USE_GZIP": "false",
    }

    def configure(text: str) -> str:  # cmake's configure_file(... @ONLY)
        text = re.sub(
            r"^#cmakedefine (\w+)(.*)$",
            lambda m: (
                f"#define {m.group(1)}{m.group(2)}" if assets else f"/* #undef {m.group(1)} */"
            ),
            text,
            flags=re.M,
        )
        return re.sub(r"@(\w+)@", lambda m: values.get(m.group(1), m.group(0)), text)

    header, cpp = (src / t for t in UI_TEMPLATES)
    return configure(header.read_text(encoding="utf-8")), configure(cpp.read_text(encoding="utf-8"))


def write_ui(src: Path, folder: Path) -> Path:
    """ui.h and ui.cpp in ``folder``; rewritten, and the object dropped, only on a change."""
    header, cpp = ui_sources(src)
    folder.mkdir(parents=True, exist_ok=True)
    changed = False
    for name, text in (("ui.h", header), ("ui.cpp", cpp)):
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic.write_text(path, text)
            changed = True
    if changed:
        for stale in folder.glob("ui-*.o"):
            stale.unlink(missing_ok=True)
    return folder / "ui.cpp"
