"""The public API in ``llama3zh_local/__init__.py``: every name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import llama3zh_local


def test_all_names_resolve_to_their_modules() -> None:
    assert set(llama3zh_local.__all__) - {"__version__"} == set(llama3zh_local._EXPORTS)
    for name in llama3zh_local.__all__:
        value = getattr(llama3zh_local, name)
        if name != "__version__":
            module = llama3zh_local._EXPORTS[name]
            assert value.__module__ == f"llama3zh_local.{module}", name


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        llama3zh_local.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("no AttributeError")


def test_import_loads_no_heavy_module() -> None:
    """``import llama3zh_local`` (and so ``llama3zh --help``) loads neither numpy, gguf nor
    llama.cpp; a public name loads only what it needs."""
    code = (
        "import sys, llama3zh_local as l; "
        "heavy = {'numpy', 'gguf', 'llama_cpp', 'rich'}; "
        "print(sorted(heavy & set(sys.modules))); "
        "l.Event; print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "[]"]


def test_architecture_doc_names_every_module() -> None:
    """docs/architecture.md matches the tree: every module and subpackage is in its listing."""
    from pathlib import Path

    root = Path(llama3zh_local.__file__).parent
    doc = (root.parent / "docs" / "architecture.md").read_text("utf-8")
    tree = doc.split("```", 2)[1]
    missing = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("cli", "data") or rel.name == "__init__.py" and len(rel.parts) > 1:
            continue  # cli/ and data/ are described as folders
        if rel.name not in tree or (len(rel.parts) > 1 and f"{rel.parts[0]}/" not in tree):
            missing.append(str(rel))
    assert not missing, f"not in docs/architecture.md: {missing}"
