"""How the project's modules may import each other, checked on the source (no module is imported here)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KNOWN_PRIVATE: set[tuple[str, str]] = set()  # none: a name another module needs is public
# the app reaches these through inference
MODEL_LAYER = {"llara.model.llm", "llara.model.llara_model", "llara.model.loader", "llara.model.build"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(absolute module, imported names)`` of every ``from ... import`` in ``path`` (relative ones resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def _sources(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]


def test_no_module_imports_a_private_name_of_another_project_module():
    found = {(str(p.relative_to(ROOT)), name) for p in _sources("llara", "app") + [ROOT / "app.py"]
             for module, names in _imports(p) if module.split(".")[0] in ("llara", "app")
             for name in names if name.startswith("_") and not name.startswith("__")}
    assert found <= KNOWN_PRIVATE, sorted(found - KNOWN_PRIVATE)


def test_the_app_reaches_the_model_only_through_inference():
    found = {(str(p.relative_to(ROOT)), module) for p in _sources("app") + [ROOT / "app.py"]
             for module, _ in _imports(p) if module in MODEL_LAYER}
    assert not found, sorted(found)


def test_collate_is_imported_from_its_home():
    # llara.model.llara_model imports collate for its own use; every other module takes it from llara.prompt.batch
    elsewhere: set[str] = set()
    found = {str(p.relative_to(ROOT)) for p in _sources("llara", "app", "tests")
             for module, names in _imports(p) if "collate" in names and module != "llara.prompt.batch"}
    assert found <= elsewhere, sorted(found - elsewhere)

