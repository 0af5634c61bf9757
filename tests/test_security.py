"""Security (issue #8): pickles only behind an explicit opt-in, no user-supplied file paths in the UI, input size
limits, a loopback-only server unless configured, and nothing written outside the cache folder.

The source checks parse ``llara/``, ``app/`` and ``app.py`` with ``ast``, so a new ``torch.load`` or unpickling call
anywhere fails here until it is made safe. See docs/reliability.md.
"""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import gradio as gr
import httpx
import pytest

from app import build_demo, handlers
from app.state import Studio
from llara.checkpoint import CheckpointError, load_trainer_state
from llara.data import load_dataset

from .conftest import TOY_DATASET, load_app_module, write_toy_dataset

pytestmark = pytest.mark.usefixtures("llara_cache")

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "llara").rglob("*.py"), *(REPO / "app").rglob("*.py"), REPO / "app.py"])


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield node, owner, name


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


# ---- pickles ----------------------------------------------------------------------------------------------------


def test_torch_load_only_with_weights_only():
    """Every torch.load in the code base passes weights_only=True (a plain torch.load unpickles arbitrary code)."""
    found, bad = [], []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: from torch import load (hides torch.load from this check)")
        for call, owner, name in _calls(tree):
            if owner == "torch" and name == "load":
                where = f"{path.relative_to(REPO)}:{call.lineno}"
                found.append(where)
                if _keyword(call, "weights_only") is not True:
                    bad.append(f"{where}: torch.load without weights_only=True")
    assert not bad, bad
    assert found, "no torch.load found at all: is the check looking in the right place?"


UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("pd", "read_pickle"),
              ("pandas", "read_pickle"), ("joblib", "load"), ("dill", "load"), ("dill", "loads"), ("marshal", "loads"),
              ("cloudpickle", "load"), ("cloudpickle", "loads"), ("shelve", "open")}


def test_unpickling_only_behind_allow_pickle():
    """The only unpickling call is the release loader's ``pd.read_pickle``, reached only when allow_pickle is set;
    every ``np.load`` says allow_pickle=False."""
    unpickling, np_loads = [], []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                assert not {"pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"} & set(names), \
                    f"{path.relative_to(REPO)}:{node.lineno} imports an unpickler"
        for call, owner, name in _calls(tree):
            if (owner, name) in UNPICKLERS:
                unpickling.append((path.relative_to(REPO).as_posix(), name))
            if owner in ("np", "numpy") and name == "load":
                np_loads.append((path.relative_to(REPO).as_posix(), call.lineno, _keyword(call, "allow_pickle")))
    assert unpickling == [("llara/data/release.py", "read_pickle")]
    assert np_loads and all(flag is False for *_, flag in np_loads), np_loads

    # ... and read_pickle sits in rows_from_pickle, which is called only under a test of allow_pickle
    release = ast.parse((REPO / "llara" / "data" / "release.py").read_text())
    guarded, unguarded = [], []

    def walk(node, guards: frozenset) -> None:
        if isinstance(node, ast.If):  # an elif is an If in the orelse of the one before
            tested = frozenset(n.id for n in ast.walk(node.test) if isinstance(n, ast.Name))
            walk(node.test, guards)
            for part in node.body:
                walk(part, guards | tested)
            for part in node.orelse:
                walk(part, guards)
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "rows_from_pickle":
            (guarded if "allow_pickle" in guards else unguarded).append(node.lineno)
        for child in ast.iter_child_nodes(node):
            walk(child, guards)

    walk(release, frozenset())
    assert guarded and not unguarded, (guarded, unguarded)

    # the one other caller converts a downloaded release, after every file's SHA-256 matched (or raised)
    source = ast.parse((REPO / "llara" / "data" / "release_source.py").read_text())
    callers = [f for f in ast.walk(source) if isinstance(f, ast.FunctionDef)
               and any(isinstance(c, ast.Call) and getattr(c.func, "id", getattr(c.func, "attr", "")) == "rows_from_pickle"
                       for c in ast.walk(f))]
    assert [f.name for f in callers] == ["convert_release"]
    check = next(s for s in callers[0].body if isinstance(s, ast.For))  # for name, want in hashes.items(): ... raise
    assert any(isinstance(n, ast.Raise) for n in ast.walk(check))
    call_line = min(c.lineno for c in ast.walk(callers[0]) if isinstance(c, ast.Call)
                    and getattr(c.func, "id", "") == "rows_from_pickle")
    assert check.end_lineno < call_line


class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_only_release_is_never_unpickled_without_opt_in(tmp_path, toy_setup, capsys):
    folder = write_toy_dataset(tmp_path / "release")
    marker = tmp_path / "pwned"
    for split, name in (("train", "train_data.df"), ("val", "Val_data.df"), ("test", "Test_data.df")):
        (folder / f"{split}.jsonl").unlink()
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(PermissionError, match="--allow-pickle"):
        load_dataset(TOY_DATASET, data_dir=folder)
    import llara.training.train as train_mod

    from .conftest import toy_train_args

    args = toy_train_args({**toy_setup, "data_dir": str(folder)}, tmp_path / "out")
    capsys.readouterr()
    assert train_mod.main(args) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not marker.exists()


def test_a_malicious_trainer_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "trainer_state.pt").write_bytes(pickle.dumps({"optimizer": _Payload(marker)}))
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt cannot be read safely"):
        load_trainer_state(tmp_path)
    assert not marker.exists()


# ---- the UI: no file inputs, bounded inputs -----------------------------------------------------------------------


UPLOADS = tuple(getattr(gr, n) for n in ("File", "Files", "UploadButton", "Audio", "Video", "Model3D", "ImageEditor",
                                         "Gallery", "MultimodalTextbox", "Image", "SimpleImage", "ImageSlider")
                if hasattr(gr, n))


def test_no_user_supplied_files_in_the_ui(studio):
    demo = build_demo(studio)
    blocks = list(demo.blocks.values())
    assert not [b for b in blocks if isinstance(b, (gr.File, gr.UploadButton))]
    input_ids = {i for fn in demo.fns.values() for i in (getattr(x, "_id", x) for x in fn.inputs)}
    takes_files = [type(b).__name__ for b in blocks if isinstance(b, UPLOADS) and (b._id in input_ids or b.interactive)]
    assert not takes_files, f"components that accept a file from the user: {takes_files}"


def test_inputs_are_bounded(studio):
    demo = build_demo(studio)
    boxes = [b for b in demo.blocks.values() if isinstance(b, gr.Textbox)]
    assert boxes and all(b.max_length and b.max_length <= 500 for b in boxes), [(b.elem_id, b.max_length) for b in boxes]
    with pytest.raises(gr.Error, match=rf"Too many artists listened to \({handlers.MAX_PICKS + 1}\)"):
        handlers.to_items(studio, [studio.labels[0]] * (handlers.MAX_PICKS + 1))
    with pytest.raises(gr.Error, match=rf"Too many candidates \({handlers.MAX_PICKS + 1}\)"):
        handlers.predict(studio, studio.labels[:2], [studio.labels[3]] * (handlers.MAX_PICKS + 1))
    with pytest.raises(gr.Error, match="Too many artists listened to"):
        handlers.add_found(studio, [studio.labels[0]] * handlers.MAX_PICKS, [studio.labels[1]])
    with pytest.raises(gr.Error, match="at most 12 digits"):
        handlers.load_test_user(studio, "9" * 5000)


# ---- the server: loopback by default, no file serving -------------------------------------------------------------


def test_binds_loopback_unless_configured(monkeypatch):
    app_main = load_app_module()
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert app_main.build_parser().parse_args([]).host == "127.0.0.1"
    assert app_main.build_parser().parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"  # only when asked
    monkeypatch.setenv("SPACE_ID", "someone/llara-studio")  # Hugging Face Spaces: the container must listen outside
    assert app_main.build_parser().parse_args([]).host == "0.0.0.0"


def test_main_launches_on_loopback_with_limits(studio, monkeypatch):
    """``python app.py`` as shipped: 127.0.0.1, no public share link, a bounded queue and upload size."""
    app_main = load_app_module()
    seen = {}
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setattr(Studio, "load", classmethod(lambda cls, *a, **kw: studio))

    def queue(self, **kwargs):
        seen["queue"] = kwargs
        return self

    def launch(self, **kwargs):
        seen["launch"] = kwargs

    monkeypatch.setattr(gr.Blocks, "queue", queue)
    monkeypatch.setattr(gr.Blocks, "launch", launch)
    app_main.main([])
    assert seen["launch"]["server_name"] == "127.0.0.1" and not seen["launch"].get("share")
    assert seen["launch"].get("max_file_size") and not seen["launch"].get("allowed_paths")
    from llara.constants import MAX_BATCH

    # a bounded queue, as wide as one batched pass (so the requests waiting for the model can share it)
    assert seen["queue"]["default_concurrency_limit"] == MAX_BATCH == 16 and 0 < seen["queue"]["max_size"] <= 64


def test_served_app_serves_no_arbitrary_files(served, toy_checkpoint):
    base = served["url"].rstrip("/")
    with httpx.Client(timeout=30) as http:
        for target in ("/etc/passwd", str(REPO / "llara" / "checkpoint.py"), str(toy_checkpoint / "meta.json"),
                       str(REPO / "tests" / ".." / "app.py"), "../../../../etc/passwd"):
            for route in ("/gradio_api/file=", "/file="):
                response = http.get(base + route + target)
                assert response.status_code in (403, 404), (route, target, response.status_code, response.text[:200])
                assert "root:" not in response.text and "def " not in response.text


# ---- writes: only into the cache folder ---------------------------------------------------------------------------


def test_handlers_write_only_into_the_cache_folder(toy_checkpoint, tmp_path, monkeypatch):
    """Every handler, description search included, with LLARA_CACHE and the working directory in two temporary
    folders: nothing appears in the working directory; the merged weights and the search matrix land in the cache."""
    cache, cwd, gradio_tmp = tmp_path / "cache", tmp_path / "cwd", tmp_path / "gradio-tmp"
    cwd.mkdir()
    default_cache = Path.home() / ".cache" / "llara-studio"
    before = sorted(default_cache.rglob("*")) if default_cache.is_dir() else []
    monkeypatch.setenv("LLARA_CACHE", str(cache))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
    monkeypatch.chdir(cwd)

    s = Studio.load(toy_checkpoint, precision="fp32")
    h, c, _, state = handlers.load_test_user(s, str(s.dataset.test[0].user), 0)
    c = handlers.draw_candidates(s, h, 1, state=state)
    for decode in s.predictor.decodes:
        handlers.predict(s, h, c, decode, "shuffle", 3, state)
    handlers.attribute(s, h, c, c[2], "grad_x_input", "no-embeddings", 0, "rank")
    found = handlers.search(s, "a planet", h)
    handlers.add_found(s, h, found.value if hasattr(found, "value") else found)
    handlers.target_choices(c)
    demo = build_demo(s)  # the Blocks themselves (gradio copies static images into GRADIO_TEMP_DIR)

    assert sorted(cwd.rglob("*")) == []
    assert len(list(cache.glob("search/*.npy"))) == 1, sorted(cache.rglob("*"))
    assert list(cache.glob("merged/*/model.safetensors")), sorted(cache.rglob("*"))
    assert (sorted(default_cache.rglob("*")) if default_cache.is_dir() else []) == before
    # what gradio wrote: copies of the app's own static images, nothing user-supplied
    copied = [p for p in gradio_tmp.rglob("*") if p.is_file()]
    assert all(p.suffix == ".png" for p in copied), copied
    demo.close()
