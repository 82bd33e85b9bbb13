"""Build (once) and show the bench-only environment of llama.cpp's reference converters.

    python bench/refconv_env.py

prints the venv's python and the folder holding convert_hf_to_gguf.py. torch and transformers
live only there, never in llama3zh's dependencies. See tests/refconv.py for what it holds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import refconv  # noqa: E402


def main() -> None:
    t0 = time.perf_counter()
    rc = refconv.ensure_refconv(log=True)
    print(f"python     {rc.python}")
    print(f"llama.cpp  {rc.llama_cpp}")
    print(f"ready in   {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
