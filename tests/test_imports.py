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


# ---- the layers ------------------------------------------------------------------------------------------------------

# llara's layers, lowest first (README.md's Layout section states this order): a module imports modules of its own
# layer and of the layers below it, never one above. The shared leaves are top-level modules; each other layer is
# a package. The commands (``python -m llara.<cmd>``: top-level files that only call their module's main) sit above
# the library, and the app above everything.
LEAVES = {"llara", "llara.constants", "llara.config", "llara.checkpoint", "llara.device", "llara.sources", "llara.memory",
          "llara.metrics", "llara.paper"}
PACKAGES = ["llara.data", "llara.recommenders", "llara.prompt", "llara.model", "llara.training", "llara.evaluation",
            "llara.attribution", "llara.serving", "llara.measurement"]
COMMANDS = {"llara.train", "llara.evaluate", "llara.parts", "llara.written", "llara.small_model", "llara.results",
            "llara.gate", "llara.explain", "llara.inference", "llara.search", "llara.bench", "llara.cpu_paths",
            "llara.cpu4bit", "llara.train_rec"}
LAYERS = ["leaves", *(p.removeprefix("llara.") for p in PACKAGES), "commands", "app"]


def _layer(module: str) -> str | None:
    """The layer of a project module (``None`` for one in no layer: a new module must be given one)."""
    if module in LEAVES:
        return "leaves"
    if module in COMMANDS:
        return "commands"
    if module == "app" or module.startswith("app."):
        return "app"
    for package in PACKAGES:
        if module == package or module.startswith(package + "."):
            return package.removeprefix("llara.")
    return None


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _upward(imports: dict[str, list[str]]) -> list[tuple[str, str]]:
    """``(module, imported)`` for every import of a module in a higher layer than the importer's."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted((module, target) for module, targets in imports.items() for target in targets
                  if rank[_layer(target) or "app"] > rank[_layer(module) or "app"])


def _project_imports() -> dict[str, list[str]]:
    return {_module(p): [m for m, _ in _imports(p) if m.split(".")[0] in ("llara", "app")]
            for p in _sources("llara", "app") + [ROOT / "app.py"]}


def test_every_module_belongs_to_a_layer():
    imports = _project_imports()
    unplaced = sorted(m for m in {*imports, *(t for ts in imports.values() for t in ts)} if _layer(m) is None)
    assert not unplaced, f"modules in no layer (add them to LEAVES, a package or COMMANDS): {unplaced}"
    assert {p.stem for p in (ROOT / "llara").glob("*.py")} - {"__init__"} == {m.split(".")[1] for m in LEAVES | COMMANDS
                                                                               if "." in m}


def test_no_module_imports_a_higher_layer():
    offending = _upward(_project_imports())
    assert not offending, "imports of a higher layer (module -> imported):\n" + "\n".join(f"{m} -> {t}" for m, t in offending)


def test_the_layer_check_catches_an_upward_import():
    imports = {"llara.model.build": ["llara.serving.inference", "llara.prompt.prompts"], "llara.metrics": ["llara.train"],
               "llara.serving.inference": ["llara.model.build"], "app.state": ["llara.train"]}
    assert _upward(imports) == [("llara.metrics", "llara.train"), ("llara.model.build", "llara.serving.inference")]
