"""Every command the README and docs/ show must keep working.

Three checks, cheapest first:
- every ``python -m llara.<cmd> ...`` / ``python app.py ...`` line of README.md, docs/*.md and the Makefile parses
  with that command's own argument parser (a renamed or removed flag, or a choice that no longer exists, fails here),
  and every ``make <target>`` the documents name exists in the Makefile;
- every ``from .x import name`` in llara/ and app/, function-level imports included, names something module ``x``
  defines (what broke ``python -m llara.explain --bench`` once: an import inside a function of a name that had
  been removed, which nothing imports at module load);
- the documented commands that finish in seconds run for real, and the training / evaluation / inference /
  attribution commands run with the same flags on the tiny toy setup instead of the embedded model.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import shlex
from pathlib import Path

import pytest

from .conftest import TOY_DATASET, load_app_module

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "Makefile"]
# python commands wherever they appear; make targets only where code starts (prose says "make the ...")
COMMAND = re.compile(r"(?:^|[`$\s])(python -m llara\.[\w.]+|python app\.py)|(?:^|`)(make [a-z][\w-]*)")
# `accelerate launch <its flags> -m llara.x <flags>` runs `python -m llara.x <flags>` in each process
ACCELERATE = re.compile(r"accelerate launch(?: --?[\w-]+(?:[ =]\d+)?)* -m (?=llara\.)")


def _lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, accelerate launches written as the command each process runs."""
    text = text.replace("\\\n", " ").replace("$(PY)", "python")  # the Makefile's recipes run python as $(PY)
    return [ACCELERATE.sub("python -m ", line) for line in text.splitlines()]


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, program, argv)`` for every command line in the documents; program is ``llara.<cmd>``, ``app.py``
    or ``make``. Inline commands end at the closing backtick; shell comments and trailing prose are dropped, and
    ``$NAME`` takes the value of a ``NAME="..."`` line above it in the same document."""
    found: dict[tuple[str, tuple[str, ...]], str] = {}
    for doc in DOCUMENTS:
        variables: dict[str, str] = {}
        for lineno, line in enumerate(_lines(doc.read_text()), start=1):
            assigned = re.fullmatch(r'\s*([A-Z_]+)="([^"]*)"\s*', line)
            if assigned:
                variables[assigned[1]] = assigned[2]
            for match in COMMAND.finditer(line):
                start = match.start(1) if match[1] else match.start(2)
                rest = line[start:].split("`")[0]
                rest = re.split(r"\s+#|\s*[;|]\s|\s+&&\s|\s\(|[):,]\s*$|[):,]\s", rest)[0]
                rest = re.sub(r"\$([A-Z_]+)", lambda m, known=variables: known.get(m[1], m[0]), rest)
                try:
                    words = shlex.split(rest)
                except ValueError:  # an unbalanced quote in prose: not a command
                    continue
                if any(w.startswith("[") for w in words):  # a usage synopsis such as `python app.py [--host --port]`
                    continue
                if words[:2] == ["python", "-m"]:
                    program, argv = words[2], words[3:]
                elif words[:2] == ["python", "app.py"]:
                    program, argv = "app.py", words[2:]
                else:
                    program, argv = "make", words[1:2]
                argv = [w for w in argv if w != "..."]  # "..." stands for "more flags" in the docs
                found.setdefault((program, tuple(argv)), f"{doc.name}:{lineno}")
    return [(where, program, list(argv)) for (program, argv), where in found.items()]


COMMANDS = documented_commands()
PYTHON_COMMANDS = [c for c in COMMANDS if c[1] != "make"]


class _Parsed(Exception):
    """Raised instead of running the command once its arguments have parsed."""


def parse_only(program: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    """Run ``program``'s ``main(argv)`` until its parser has parsed ``argv`` (the command itself never runs).
    A parse error surfaces as ``SystemExit`` with argparse's message on stderr."""
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    module = load_app_module() if program == "app.py" else importlib.import_module(program)
    main = getattr(module, "main", None)
    if main is None:  # a package run as `python -m llara.data` keeps its main in __main__
        main = importlib.import_module(f"{program}.__main__").main
    try:
        main(argv)
    except _Parsed as parsed:
        return parsed.args[0]
    raise AssertionError(f"{program} {' '.join(argv)} finished without parsing its arguments")


def test_the_documents_show_commands():
    programs = {program for _, program, _ in COMMANDS}
    assert {"llara.train", "llara.evaluate", "llara.results", "llara.explain", "app.py", "make"} <= programs
    assert len(PYTHON_COMMANDS) >= 30


@pytest.mark.parametrize("where, program, argv", PYTHON_COMMANDS, ids=[f"{w} {p}" for w, p, _ in PYTHON_COMMANDS])
def test_every_documented_command_parses(where, program, argv, monkeypatch, capsys):
    if not argv:  # the command named in prose (`python -m llara.evaluate`): it must exist and have a main
        module = load_app_module() if program == "app.py" else importlib.import_module(program)
        assert callable(getattr(module, "main", None)) or importlib.util.find_spec(f"{program}.__main__"), where
        return
    # a documented --compute-dtype writes $LLARA_COMPUTE_DTYPE for the process (llara.device): restored afterwards,
    # so the dtype the rest of the suite pins does not change with the docs
    monkeypatch.setenv("LLARA_COMPUTE_DTYPE", os.environ.get("LLARA_COMPUTE_DTYPE", "auto"))
    try:
        parse_only(program, argv, monkeypatch)
    except SystemExit as stop:
        if stop.code in (0, None):  # --help
            return
        pytest.fail(f"{where}: `{program} {shlex.join(argv)}` does not parse: {capsys.readouterr().err.strip()[-300:]}")


def test_every_documented_make_target_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    missing = [(where, argv[0]) for where, program, argv in COMMANDS if program == "make" and argv and argv[0] not in targets]
    assert not missing, f"documents name make targets that do not exist: {missing}"


def test_the_parse_check_catches_a_bad_flag(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse_only("llara.evaluate", ["--checkpoint", "x", "--no-such-flag"], monkeypatch)
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


# ---- imports that only run when a function is called -------------------------------------------------------------

def _relative_imports(path: Path, package: str) -> list[tuple[int, str, str]]:
    """``(line, module, name)`` for every ``from .x import name`` (at any depth of the file) in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(("llara", "app"))):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            out += [(node.lineno, base, alias.name) for alias in node.names if alias.name != "*"]
    return out


def _package_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")


SOURCES = sorted([*(REPO / "llara").rglob("*.py"), *(REPO / "app").rglob("*.py")])


def test_every_import_inside_the_project_names_something_that_exists():
    missing = []
    for path in SOURCES:
        for line, module, name in _relative_imports(path, _package_of(path)):
            target = importlib.import_module(module)
            if not hasattr(target, name):
                try:  # `from .pkg import submodule`
                    importlib.import_module(f"{module}.{name}")
                except ModuleNotFoundError:
                    missing.append(f"{path.relative_to(REPO)}:{line}: {module} has no {name!r}")
    assert not missing, "\n".join(missing)


def test_the_import_check_catches_a_removed_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from .bench import NO_SUCH_NAME\n")
    ((line, module, name),) = _relative_imports(bad, "llara")
    assert (module, name) == ("llara.bench", "NO_SUCH_NAME") and not hasattr(importlib.import_module(module), name)


# ---- the documented commands, run -----------------------------------------------------------------------------------

def _documented(program: str, *flags: str) -> list[str]:
    """The argv of the first documented ``program`` command that has all ``flags`` (the test runs what the docs show)."""
    for _, prog, argv in COMMANDS:
        if prog == program and all(f in argv for f in flags):
            return argv
    raise AssertionError(f"no documented `{program}` command with {flags}")


def _swapped(argv: list[str], swap: dict[str, str], drop: tuple[str, ...] = ()) -> list[str]:
    """``argv`` with the values of the flags in ``swap`` replaced and the flags in ``drop`` removed (with values)."""
    out, i = [], 0
    while i < len(argv):
        word = argv[i]
        takes_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if word in drop:
            i += 2 if takes_value else 1
            continue
        if word in swap:
            out += [word, swap[word]]
            i += 2 if takes_value else 1
            continue
        out.append(word)
        i += 1
    return out


def test_make_table_and_the_results_tables_run(capsys):
    """`make table` and `python -m llara.results --reuse` read committed files only: they run as documented."""
    import llara.results as results_mod
    import llara.train_rec as train_rec_mod

    assert train_rec_mod.main(["--model", "all", "--dataset", "movielens", "--reuse", "--no-save"]) == 0
    assert "sasrec" in capsys.readouterr().out
    assert results_mod.main([*_documented("llara.results", "--reuse"), "--plot", ""]) == 0  # no plot into assets/
    assert "HR@1" in capsys.readouterr().out


@pytest.mark.usefixtures("llara_cache")
def test_train_evaluate_and_attribute_run_on_the_toy_setup(toy_setup, toy_checkpoint, tmp_path, capsys):
    """The documented training, evaluation and attribution commands, with the toy data and model swapped in (and
    budgets cut to a step or two: the flags given last win)."""
    import llara.evaluate as evaluate_mod
    import llara.explain as attribute_mod
    import llara.train as train_mod

    from .conftest import TOY_TITLES

    out = str(tmp_path / "run")
    toy = ["--dataset", TOY_DATASET, "--data-dir", toy_setup["data_dir"], "--recommender-dir", toy_setup["rec_dir"],
           "--base-model", toy_setup["base_model"], "--precision", "fp32"]
    train = _swapped(_documented("llara.train", "--output", "--mode", "--recommender"), {"--output": out})
    budget = ["--max-train-samples", "4", "--batch-size", "2", "--max-steps", "2", "--val-samples", "0"]
    assert train_mod.main([*train, *toy, *budget]) == 0 and (Path(out) / "meta.json").is_file()
    resume = _swapped(_documented("llara.train", "--output", "--resume"), {"--output": out})
    assert train_mod.main(resume) == 0  # the documented resume of a finished run says so and exits cleanly

    checkpoint = {"--checkpoint": str(toy_checkpoint)}
    evaluate = _swapped(_documented("llara.evaluate", "--checkpoint", "--decode", "--prompt"), checkpoint)
    capsys.readouterr()
    assert evaluate_mod.main([*evaluate, "--seeds", "1", "--limit", "2", "--precision", "fp32"]) == 0
    assert "hr@1" in capsys.readouterr().out.lower()

    attribute = _swapped(_documented("llara.explain", "--level", "--candidate"),
                         {**checkpoint, "--history": "|".join(TOY_TITLES[:3]), "--candidate": TOY_TITLES[5]})
    assert attribute_mod.main([*attribute, "--steps", "2", "--precision", "fp32"]) == 0
    assert "item-level attribution" in capsys.readouterr().out
