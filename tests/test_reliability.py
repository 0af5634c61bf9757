"""Reliability (issue #8): bad input where it enters (the served app's HTTP API and the command lines), a bounded
load test, and faults (SIGKILL mid-training, damaged checkpoints, an app pointed at a bad checkpoint, a crash
during save). Everything runs on the tiny toy checkpoint; the app is launched in process on 127.0.0.1.

Handler-level bad inputs are in ``test_app.py``; checkpoint corruption through ``load_llara`` and the evaluate CLI
in ``test_checkpoint.py``; in-process kill/resume equivalence in ``test_train.py``. This file adds what those do
not reach: the HTTP layer gradio puts in front of the handlers, the other CLIs, a real SIGKILL, and the
Predictor / app start-up paths. See docs/reliability.md for the commands and the figures of a run.
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

import llara.attribute as attribute_mod
import llara.checkpoint as checkpoint_mod
import llara.evaluate as evaluate_mod
import llara.inference as inference_mod
import llara.search as search_mod
import llara.train as train_mod
from app import handlers
from llara.checkpoint import CheckpointError, read_llara_meta
from llara.inference import Predictor

from .conftest import TOY_TITLES, User, load_app_module, make_client, toy_train_args, write_toy_dataset

pytestmark = pytest.mark.usefixtures("llara_cache")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
GENERIC = "upstream Gradio app has raised an exception"  # what gradio says for a non-gr.Error (show_error off)
CHOICE_XFAIL = ("gradio's own choice check answers before the handler and lists every catalog label (about 40 KB on "
                "MovieLens); fix: allow_custom_value=True on the history/candidates/found/attr-target dropdowns in "
                "app/__init__.py, so the handlers' one-line messages apply over HTTP too")


def still_serving(client, user: User) -> None:
    out = client.predict(user.h, user.c, "rank", "none", 0, user.truth, api_name="/predict")
    assert "Predicted in" in out[6]


def http_error(client, args, api_name: str) -> str:
    with pytest.raises(Exception) as info:  # gradio_client raises AppError carrying the server's message
        client.predict(*args, api_name=api_name)
    return str(info.value)


# ---- 1. bad input over HTTP ---------------------------------------------------------------------------------------
# layer: "handler" = our handlers answer (must hold now); "gradio" = gradio's own component check answers, with a
# message that is already specific; "choice" = gradio's dropdown choice check answers first (see CHOICE_XFAIL);
# "schema" = a JSON value of the wrong type for a typed component: gradio hides the reason (show_error is off, as
# it must be: it would also show internal exceptions), the server answers with its generic error and keeps serving.

OK = ("rank", "none", 0, "")
BAD_HTTP = [
    # /predict: (history, candidates, decode, ablation, seed, truth)
    ("predict", "empty history", lambda u: ([], u.c, *OK), r"^Pick at least one watched movie\.$", "handler", None),
    ("predict", "null history", lambda u: (None, u.c, *OK), r"^Pick at least one watched movie\.$", "handler", None),
    ("predict", "201 picks", lambda u: ([u.h[0]] * 201, u.c, *OK), r"Too many watched movies \(201\); pick at most 200", "handler", None),
    ("predict", "empty candidates", lambda u: (u.h, [], *OK), r"candidate set is empty", "handler", None),
    ("predict", "one candidate", lambda u: (u.h, u.c[:1], *OK), r"Give at least 2 candidates to choose from \(got 1\)", "handler", None),
    ("predict", "25 candidates", lambda u: (u.h, u.pool[:25], *OK), r"At most 20 candidates .*\(got 25\)", "handler", None),
    ("predict", "duplicate candidates", lambda u: (u.h, [u.c[0], *u.c[:19]], *OK), r"same movie twice", "handler", None),
    ("predict", "watched candidate", lambda u: (u.h, [u.h[0], *u.c[1:]], *OK), r"both watched and a candidate", "handler", None),
    ("predict", "seed 2**40", lambda u: (u.h, u.c, "rank", "none", 2**40, ""), r"seed must be a whole number from 0 to 4,294,967,295", "handler", None),
    ("predict", "seed 1e308", lambda u: (u.h, u.c, "rank", "none", 1e308, ""), r"seed must be a whole number from 0 to 4,294,967,295", "handler", None),
    ("predict", "seed null", lambda u: (u.h, u.c, "rank", "none", None, ""), r"seed must be a whole number", "handler", None),
    ("predict", "seed -1", lambda u: (u.h, u.c, "rank", "none", -1, ""), r"^Value -1 is less than minimum value 0\.$", "gradio", None),
    ("predict", "decode beam", lambda u: (u.h, u.c, "beam", "none", 0, ""), r"'beam' .*not in the list of choices: \['head', 'rank'", "gradio", None),
    ("predict", "decode 3", lambda u: (u.h, u.c, 3, "none", 0, ""), r"Value: 3 .*not in the list of choices: \['head', 'rank'", "gradio", None),
    ("predict", "ablation all", lambda u: (u.h, u.c, "rank", "all", 0, ""), r"'all' .*not in the list of choices: \['none'", "gradio", None),
    ("predict", "unknown title", lambda u: (["No Such Artist"], u.c, *OK), r"^Not in the catalog: 'No Such Artist'\.", "choice", "history"),
    ("predict", "10000-char title", lambda u: (["x" * 10_000], u.c, *OK), r"^Not in the catalog: 'x{80}\.\.\.'", "choice", "history"),
    ("predict", "odd unicode", lambda u: (["\x00\u202e\u0301 \U0001F600 \ufeff"], u.c, *OK), r"^Not in the catalog: ", "choice", "history"),
    ("predict", "unknown candidate", lambda u: (u.h, [*u.c[:19], "Nope"], *OK), r"^Not in the catalog: 'Nope'\. Pick candidates", "choice", "candidates"),
    ("predict", "ints as history", lambda u: ([1, 2], u.c, *OK), r"must be a list of movie titles", "choice", "history"),
    ("predict", "string as history", lambda u: ("abc", u.c, *OK), r"^Not in the catalog: 'abc'", "choice", "history"),
    ("predict", "object as history", lambda u: ({"a": 1}, u.c, *OK), r"must be a list of movie titles", "choice", "history"),
    ("predict", "seed 'abc'", lambda u: (u.h, u.c, "rank", "none", "abc", ""), GENERIC, "schema", None),
    ("predict", "seed [1]", lambda u: (u.h, u.c, "rank", "none", [1], ""), GENERIC, "schema", None),
    # /attribute: (history, candidates, target, method, ablation, seed, decode)
    ("attribute", "empty history", lambda u: ([], u.c, handlers.TOP_CHOICE, "grad_x_input", "none", 0, "rank"), r"^Pick at least one watched movie\.$", "handler", None),
    ("attribute", "method shap", lambda u: (u.h, u.c, handlers.TOP_CHOICE, "shap", "none", 0, "rank"), r"'shap' .*not in the list of choices", "gradio", None),
    ("attribute", "target not among candidates", lambda u: (u.h, u.c[:5], u.c[10], "grad_x_input", "none", 0, "rank"), r"is not among the candidates", "choice", "attr-target"),
    ("attribute", "seed 2**40", lambda u: (u.h, u.c, handlers.TOP_CHOICE, "grad_x_input", "shuffle", 2**40, "rank"), r"from 0 to 4,294,967,295", "handler", None),
    # /search: (query, history)
    ("search", "empty query", lambda u: ("", u.h), r"^Describe a movie first", "handler", None),
    ("search", "blank query", lambda u: ("   \n\t", u.h), r"^Describe a movie first", "handler", None),
    ("search", "null query", lambda u: (None, u.h), r"^Describe a movie first", "handler", None),
    ("search", "10000-char query", lambda u: ("x" * 10_000, u.h), r"^The description is 10,000 characters; keep it under 500\.$", "handler", None),
    ("search", "unknown history", lambda u: ("space", ["No Such Artist"]), r"^Not in the catalog: 'No Such Artist'", "choice", "history"),
    # /load_test_user: (user id, seed)
    ("load_test_user", "letters", lambda u: ("abc", 0), r"^The user id must be a number, got 'abc'\.$", "handler", None),
    ("load_test_user", "10000 digits", lambda u: ("1" * 10_000, 0), r"at most 12 digits, got 10,000 characters", "handler", None),
    ("load_test_user", "not a test user", lambda u: ("999999", 0), r"User 999999 is not a test user", "handler", None),
    ("load_test_user", "NUL byte", lambda u: ("\x00", 0), r"user id must be a number", "handler", None),
    ("load_test_user", "seed -1", lambda u: ("", -1), r"less than minimum value 0", "gradio", None),
    # /draw_candidates: (history, seed, truth)
    ("draw_candidates", "empty history", lambda u: ([], 0, ""), r"^Pick at least one watched movie\.$", "handler", None),
    ("draw_candidates", "seed 2**40", lambda u: (u.h, 2**40, ""), r"from 0 to 4,294,967,295", "handler", None),
    ("draw_candidates", "truth of wrong type", lambda u: (u.h, 0, 12), None, "accepted", None),
    # /add_found: (history, found)
    ("add_found", "ints as matches", lambda u: (u.h, [1, 2]), r"must be a list of movie titles", "choice", "found"),
]


@pytest.mark.parametrize("endpoint, name, make_args, expected, layer, elem_id", BAD_HTTP,
                         ids=[f"{e}:{n}" for e, n, *_ in BAD_HTTP])
def test_bad_input_over_http(served, client, user, endpoint, name, make_args, expected, layer, elem_id):
    args = make_args(user)
    if layer == "accepted":
        assert client.predict(*args, api_name=f"/{endpoint}")
        return still_serving(client, user)
    message = http_error(client, args, f"/{endpoint}")
    still_serving(client, user)  # an error never takes the server down
    if layer == "choice" and not served["custom"].get(elem_id):
        assert "is not in the list of choices" in message  # rejected, but by gradio, naming the whole catalog
        pytest.xfail(CHOICE_XFAIL)
    if layer == "schema":
        assert GENERIC in message
        return
    assert re.search(expected, message), message
    assert len(message) < 400, f"{len(message)}-character message"  # one sentence, not an echo of the input


def test_valid_edge_inputs_over_http_say_what_happened(client, user, studio):
    one = client.predict(user.h[:1], user.c, "head", "none", 0, "", api_name="/predict")
    assert one[0].startswith("### ") and "repeated" not in one[6] and "most recent" not in one[6]
    dup = client.predict([*user.h[:3], *user.h[:3]], user.c, "rank", "none", 0, "", api_name="/predict")
    assert "3 repeated pick(s) counted once" in dup[6]
    long = [label for label in user.pool if label not in user.c][:12]
    many = client.predict(long, user.c, "rank", "none", 0, "", api_name="/predict")
    assert "Only the 10 most recent of the 12 picked movies are used" in many[6]
    assert "Predicted in" in client.predict(user.h, user.c, "rank", "none", 0, 12345, api_name="/predict")[6]  # truth: any type


def test_search_then_add_in_one_session(client, user):
    """The matches become the choices of the matches dropdown, so adding them passes gradio's check."""
    found = client.predict("Mars", user.h, api_name="/search")
    if isinstance(found, dict):  # a dropdown update (new choices + value) reaches API clients as its dict
        assert found["choices"] == [[label, label] for label in found["value"]]
        found = found["value"]
    assert isinstance(found, list) and len(found) == 8 and not set(found) & set(user.h)
    added = client.predict(user.h, found[:2], api_name="/add_found")
    assert added == [*user.h, *found[:2]]
    with pytest.raises(Exception, match=r"Too many watched movies \(201\)"):
        client.predict([user.h[0]] * 200, found[:1], api_name="/add_found")


def _raw_call(url: str, endpoint: str, body: bytes) -> tuple[int, str]:
    """POST a raw body to gradio's REST API; (status, text of the result stream or of the refusal)."""
    base = url.rstrip("/") + "/gradio_api/call/" + endpoint
    with httpx.Client(timeout=60) as http:
        posted = http.post(base, content=body, headers={"content-type": "application/json"})
        if posted.status_code != 200:
            return posted.status_code, posted.text
        return 200, http.get(f"{base}/{posted.json()['event_id']}").text


def test_raw_http_bodies(served, client, user):
    url = served["url"]
    status, text = _raw_call(url, "predict", b'{"data": [["\xff\xfe"], [], "rank", "none", 0, ""]}')
    assert status in (400, 422), text  # not UTF-8: refused before any handler runs
    status, text = _raw_call(url, "predict", b"not json")
    assert status == 422 and "JSON decode error" in text
    status, text = _raw_call(url, "predict", b'{"data": 5}')
    assert status == 422 and "valid list" in text
    status, text = _raw_call(url, "predict", b'{"data": [["Alpha"]]}')  # too few inputs
    assert status == 200 and "event: error" in text
    # JSON may carry a lone surrogate ("\udcff"), which no UTF-8 string can: a clear message, not a tokenizer crash
    status, text = _raw_call(url, "search", b'{"data": ["\\udcff heist", []]}')
    assert status == 200 and "event: error" in text and "not valid Unicode text" in text, text
    status, text = _raw_call(url, "load_test_user", b'{"data": ["\\udcff", 0]}')
    assert "user id must be a number" in text, text
    still_serving(client, user)


# ---- 1b. bad input on the command lines -----------------------------------------------------------------------


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


TWELVE = "|".join(TOY_TITLES[:12])
INFERENCE_BAD = [
    (["--history", ""], r"error: Pick at least one watched movie"),
    (["--history", "No Such Artist"], r"error: no artist titled 'No Such Artist' in the catalog"),
    (["--history", "x" * 10_000], r"error: a --history title of 10,000 characters is not in the catalog"),
    (["--history", "\udcff\udcfe\x00 odd"], r"error: no artist titled '\\udcff\\udcfe\\x00 odd'"),
    (["--history", "Alpha", "--seed", "-1"], r"error: The seed must be a whole number from 0 to 4,294,967,295 \(got -1\)"),
    (["--history", "Alpha", "--seed", str(2**40)], r"from 0 to 4,294,967,295 \(got 1099511627776\)"),
    (["--history", "Alpha", "--seed", "abc"], r"argument --seed: invalid int value: 'abc'"),
    (["--history", "Alpha", "--candidates", "Bravo"], r"Give at least 2 candidates to choose from \(got 1\)"),
    (["--history", "Alpha", "--candidates", "Alpha|Bravo"], r"'Alpha' is both watched and a candidate"),
    (["--history", "Alpha", "--candidates", "Bravo|bravo|Charlie"], r"The candidates contain the same movie twice"),
    (["--history", "Alpha", "--candidates", "Bravo|Nope"], r"no artist titled 'Nope'"),
    (["--history", "Alpha", "--decode", "beam"], r"argument --decode: invalid choice: 'beam'"),
]


@pytest.mark.parametrize("argv, expected", INFERENCE_BAD, ids=[e[:40] for _, e in INFERENCE_BAD])
def test_inference_cli_bad_input(toy_checkpoint, capsys, argv, expected):
    code, _, err = run_cli(inference_mod.main, ["--checkpoint", str(toy_checkpoint), "--precision", "fp32", *argv], capsys)
    assert code == 2
    assert_refused(code, err, expected)


def test_inference_cli_bad_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(inference_mod.main, ["--checkpoint", str(tmp_path / "nope"), "--history", "Alpha"], capsys)
    assert_refused(code, err, r"checkpoint folder .*nope does not exist")


def test_inference_cli_valid_edge_inputs(toy_checkpoint, capsys):
    base = ["--checkpoint", str(toy_checkpoint), "--precision", "fp32"]
    code, out, _ = run_cli(inference_mod.main, [*base, "--history", "Alpha"], capsys)
    assert code == 0 and out.startswith("history: Alpha\n") and "hybrid [head]" in out  # the best decode the checkpoint offers
    code, out, _ = run_cli(inference_mod.main, [*base, "--history", "Alpha|alpha|Bravo|Alpha"], capsys)
    assert code == 0 and "history: Alpha | Bravo  (2 repeated pick(s) counted once)" in out
    code, out, _ = run_cli(inference_mod.main, [*base, "--history", TWELVE, "--seed", str(2**32 - 1)], capsys)
    assert code == 0 and "only the 10 most recent of the 12 picked movies are used" in out


ATTRIBUTE_BAD = [
    (["--history", ""], r"^error: no history"),
    (["--history", "No Such Artist"], r"error: history item 1: no artist titled 'No Such Artist'"),
    (["--history", "x" * 10_000], r"error: a --history/--item title of 10,000 characters is not in the catalog"),
    (["--history", "Alpha", "--candidate", "y" * 10_000], r"error: a --candidate title of 10,000 characters"),
    (["--history", "\udcff odd"], r"error: history item 1: no artist titled '\\udcff odd'"),
    (["--history", "Alpha", "--seed", "-1"], r"error: --seed must be a whole number from 0 to 4,294,967,295, got -1"),
    (["--history", "Alpha", "--seed", str(2**40)], r"error: --seed must be a whole number from 0"),
    (["--history", "Alpha|Bravo", "--candidate", "Charlie", "--candidates", "Delta|Echo"],
     r"error: candidate 'Charlie' is not among the 2 candidates given"),
    (["--history", "Alpha|Bravo", "--candidate", "Alpha"], r"error: candidate 'Alpha' is in the history"),
    (["--history", "Alpha|Bravo", "--candidates", "Delta"], r"error: need at least 2 candidates, got 1"),
    (["--history", "Alpha", "--steps", "0"], r"error: --steps must be >= 1"),
    (["--history", "Alpha", "--sep", ""], r"error: --sep must not be empty"),
    (["--history", "Alpha", "--level", "atoms"], r"error: argument --level: invalid choice"),
]


@pytest.mark.parametrize("argv, expected", ATTRIBUTE_BAD, ids=[e[:40] for _, e in ATTRIBUTE_BAD])
def test_attribute_cli_bad_input(toy_checkpoint, capsys, argv, expected):
    code, _, err = run_cli(attribute_mod.main, ["--checkpoint", str(toy_checkpoint), "--precision", "fp32", *argv], capsys)
    assert code == 2
    assert_refused(code, err, expected)


def test_attribute_cli_valid_edge_inputs(toy_checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(toy_checkpoint), "--precision", "fp32", "--level", "item"]
    code, out, _ = run_cli(attribute_mod.main, [*base, "--history", "Alpha"], capsys)
    assert code == 0 and "prompt: hybrid, 1 history items" in out and "note:" not in out
    code, out, _ = run_cli(attribute_mod.main, [*base, "--history", "Alpha|alpha|Bravo"], capsys)
    assert code == 0 and "note: 1 repeated title(s) counted once" in out and "2 history items" in out
    code, out, _ = run_cli(attribute_mod.main, [*base, "--history", TWELVE], capsys)
    assert code == 0 and "only the 10 most recent of the 12 titles are used" in out and "10 history items" in out
    code, _, err = run_cli(attribute_mod.main, ["--checkpoint", str(tmp_path / "nope"), "--history", "Alpha"], capsys)
    assert_refused(code, err, r"^error: checkpoint folder .*nope does not exist")


EVALUATE_BAD = [
    (["--seeds", "0"], r"^error: --seeds must be >= 1$"),
    (["--seeds", "-1"], r"^error: --seeds must be >= 1$"),
    (["--seeds", "abc"], r"argument --seeds: invalid int value"),
    (["--limit", "-5"], r"^error: --limit must be >= 0$"),
    (["--batch-size", "0", "--decode", "generate"], r"^error: --batch-size must be >= 1$"),
    (["--threads", "-2"], r"^error: --threads must be >= 0"),
    (["--decode", "beam"], r"argument --decode: invalid choice: 'beam'"),
    (["--eval-split", "train"], r"argument --eval-split: invalid choice"),
]


@pytest.mark.parametrize("argv, expected", EVALUATE_BAD, ids=[e[:40] for _, e in EVALUATE_BAD])
def test_evaluate_cli_bad_input(toy_checkpoint, capsys, argv, expected):
    code, _, err = run_cli(evaluate_mod.main, ["--checkpoint", str(toy_checkpoint), "--precision", "fp32", *argv], capsys)
    assert code == 2
    assert_refused(code, err, expected)


SEARCH_BAD = [
    ([""], r"error: describe what you are looking for"),
    (["  \t "], r"error: describe what you are looking for"),
    (["x" * 10_000], r"error: the description is 10,000 characters; keep it under 500"),
    (["heist \udcff"], r"error: the description is not valid UTF-8 text"),
    (["heist", "--top", "0"], r"error: --top must be >= 1, got 0"),
    (["heist", "--top", "-4"], r"error: --top must be >= 1, got -4"),
    (["heist", "--dataset", "lastfm"], r"error: dataset 'lastfm' is not on any package registry"),
    (["heist", "--dataset", "nope"], r"error: unknown dataset 'nope'"),
]


@pytest.mark.parametrize("argv, expected", SEARCH_BAD, ids=[e[:40] for _, e in SEARCH_BAD])
def test_search_cli_bad_input(capsys, argv, expected):
    """All refused before the encoder is loaded or the catalog embedded (each case takes milliseconds)."""
    started = time.perf_counter()
    code, _, err = run_cli(search_mod.main, argv, capsys)
    assert code == 2
    assert_refused(code, err, expected)
    assert time.perf_counter() - started < 10


def test_search_cli_non_utf8_argv_in_a_real_process():
    """Bytes that are not UTF-8 on a real command line (they reach Python as lone surrogates)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "llara.search", b"heist \xff\xfe thriller"], cwd=REPO, env=env,
                          capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and "the description is not valid UTF-8 text" in err and "Traceback" not in err, err


TRAIN_BAD = [
    (["--batch-size", "0"], r"--batch-size must be >= 1, got 0"),
    (["--grad-accum", "0"], r"--grad-accum must be >= 1, got 0"),
    (["--save-every", "0"], r"--save-every must be >= 1, got 0"),
    (["--epochs", "0"], r"--epochs must be a finite number > 0, got 0"),
    (["--epochs", "inf"], r"--epochs must be a finite number > 0, got inf"),
    (["--max-steps", "-3"], r"--max-steps must be >= 0 \(0 = from --epochs\), got -3"),
    (["--max-train-samples", "-1"], r"--max-train-samples must be >= 0"),
    (["--lr", "-1"], r"--lr must be a finite number > 0, got -1"),
    (["--lr", "nan"], r"--lr must be a finite number > 0, got nan"),
    (["--seed", "-1"], r"--seed must be in 0..4294967295, got -1"),
    (["--seed", str(2**40)], r"--seed must be in 0..4294967295"),
    (["--lora-r", "0"], r"--lora-r must be >= 1"),
    (["--lora-dropout", "1"], r"--lora-dropout must be in \[0, 1\)"),
    (["--switch-fraction", "2"], r"--switch-fraction must be in \[0, 1\]"),
    (["--batch-size", "0", "--lr", "0"], r"--batch-size must be >= 1, got 0; --lr must be"),  # every problem at once
    (["--batch-size", "two"], r"argument --batch-size: invalid int value: 'two'"),
    (["--precision", "int3"], r"argument --precision: invalid choice: 'int3'"),
    (["--output", ""], r"--output is required"),
]


@pytest.mark.parametrize("argv, expected", TRAIN_BAD, ids=[e[:40] for _, e in TRAIN_BAD])
def test_train_cli_bad_input(toy_setup, tmp_path, capsys, argv, expected):
    code, _, err = run_cli(train_mod.main, toy_train_args(toy_setup, tmp_path / "out", *argv), capsys)
    assert code == 2
    assert_refused(code, err, expected)
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("flag, value, expected", [
    ("--data-dir", "/nonexistent/data", r"^error: dataset folder /nonexistent/data does not exist"),
    ("--base-model", "/nonexistent/model", r"^error: no such model folder or file: /nonexistent/model"),
    ("--recommender-dir", "/nonexistent/recs", r"^error: missing checkpoint file /nonexistent/recs/lastfm/sasrec.json"),
])
def test_train_cli_missing_inputs(toy_setup, tmp_path, capsys, flag, value, expected):
    code, _, err = run_cli(train_mod.main, toy_train_args(toy_setup, tmp_path / "out", flag, value), capsys)
    assert code == 2
    assert_refused(code, err, expected)


@pytest.mark.parametrize("argv, expected", [
    (["--port", "70000"], r"--port must be in 0..65535, got 70000"),
    (["--concurrency", "0"], r"--concurrency must be >= 1, got 0"),
    (["--queue-size", "-1"], r"--queue-size must be >= 1, got -1"),
    (["--threads", "-1"], r"--threads must be >= 0, got -1"),
    (["--precision", "int3"], r"argument --precision: invalid choice"),
])
def test_app_cli_bad_flags(capsys, argv, expected):
    code, _, err = run_cli(load_app_module().main, argv, capsys)
    assert code == 2
    assert_refused(code, err, expected)


# ---- 2. load: 20 concurrent clients x 5 predicts against the served toy app ------------------------------------


def _rss_bytes() -> int:
    """Resident set size of this process now."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # psutil comes with accelerate; /proc is the fallback on Linux
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _comparable(out) -> str:
    """A predict answer with its timings blanked (they differ per request; nothing else may)."""
    text = json.dumps(out, sort_keys=True, ensure_ascii=False)
    return re.sub(r"\d+(\.\d+)? (ms|s)\b", "T", text)


N_CLIENTS, PER_CLIENT = 20, 5


@pytest.mark.slow
def test_load_20_clients_x_5_predicts(served, studio):
    """Every answer equals the single-client answer for the same input, with no errors; latency and memory are
    measured, printed and written to tests/artifacts/load.json."""
    url = served["url"]
    inputs = []
    for k, sample in enumerate(studio.dataset.test[:PER_CLIENT]):
        h, c, truth = handlers.load_test_user(studio, str(sample.user), k)
        inputs.append((h, c, ("head", "rank")[k % 2], ("none", "shuffle", "no-embeddings")[k % 3], k, truth))
    single = make_client(url)
    try:
        reference = [single.predict(*args, api_name="/predict") for args in inputs]
    finally:
        single.close()
    for args, ref in zip(inputs, reference):  # the single-client answer is the handler's answer
        direct = handlers.predict(studio, *args)
        assert ref[2].split("\n")[0] == direct[2].split("\n")[0] and ref[4].split("\n")[0] == direct[4].split("\n")[0]
        assert {c["label"]: c["confidence"] for c in ref[3]["confidences"]} == pytest.approx(direct[3], abs=1e-9)
    expected = [_comparable(r) for r in reference]

    latencies: list[float] = []
    errors: list[str] = []
    mismatches: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(N_CLIENTS)
    rss_samples: list[int] = []
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.is_set():
            rss_samples.append(_rss_bytes())
            stop.wait(0.05)

    def one_client(index: int) -> None:
        try:
            c = make_client(url)
        except Exception as err:  # noqa: BLE001 - recorded and asserted below
            with lock:
                errors.append(f"client {index}: {err!r}")
            barrier.abort()
            return
        try:
            barrier.wait(timeout=120)
            for j in range(PER_CLIENT):
                k = (index + j) % PER_CLIENT  # every client sends all five inputs, in a rotated order
                started = time.perf_counter()
                try:
                    out = c.predict(*inputs[k], api_name="/predict")
                except Exception as err:  # noqa: BLE001
                    with lock:
                        errors.append(f"client {index} request {j}: {err!r}")
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if _comparable(out) != expected[k]:
                        mismatches.append(f"client {index} input {k}")
        finally:
            c.close()

    rss_before = _rss_bytes()
    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=one_client, args=(i,), daemon=True) for i in range(N_CLIENTS)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - wall
    stop.set()
    sampler.join()
    rss_after = _rss_bytes()
    assert not any(t.is_alive() for t in threads), "a client never finished"

    lat = sorted(latencies)
    p95 = lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)] if lat else float("nan")
    figures = {
        "clients": N_CLIENTS, "requests_per_client": PER_CLIENT, "requests": N_CLIENTS * PER_CLIENT,
        "ok": len(latencies), "errors": len(errors), "mismatches": len(mismatches),
        "concurrency_limit": load_app_module().build_parser().get_default("concurrency"),
        "latency_s": {"p50": round(statistics.median(lat), 4) if lat else None, "p95": round(p95, 4),
                      "max": round(lat[-1], 4) if lat else None, "mean": round(statistics.fmean(lat), 4) if lat else None},
        "wall_s": round(wall, 2), "throughput_rps": round(len(latencies) / wall, 2),
        "rss_mb": {"before": round(rss_before / 2**20, 1), "after": round(rss_after / 2**20, 1),
                   "peak_during": round(max(rss_samples, default=rss_after) / 2**20, 1),
                   "peak_process_lifetime": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "model": "toy checkpoint (2-layer Llama, hidden 32, 40 items), fp32, in-process server on 127.0.0.1",
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\nload:", json.dumps(figures))
    assert not errors, errors[:5]
    assert not mismatches, mismatches[:5]
    assert len(latencies) == N_CLIENTS * PER_CLIENT
    growth = (max(rss_samples, default=rss_after) - rss_before) / 2**20
    assert growth < 500, f"RSS grew by {growth:.0f} MB under load"  # generous: 20 clients, their threads and buffers
    still = make_client(url)
    try:
        assert _comparable(still.predict(*inputs[0], api_name="/predict")) == expected[0]  # and serves on afterwards
    finally:
        still.close()


# ---- 3a. a real SIGKILL mid-training, then --resume ---------------------------------------------------------------


def _meta_step(folder: Path) -> int | None:
    try:
        return json.loads((folder / "meta.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_uninterrupted(toy_setup, tmp_path, capsys):
    """``python -m llara.train --save-every 1`` killed with SIGKILL once a few checkpoints exist; ``--resume``
    finishes with the config, step count and weights of a run that was never killed (test_train.py checks the
    bit-for-bit equivalence in process; here the process really dies, possibly inside a save)."""
    steps = 40
    flags = ("--max-steps", str(steps), "--save-every", "1")
    killed_args = toy_train_args(toy_setup, tmp_path / "killed", *flags)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "llara.train", *killed_args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if (_meta_step(tmp_path / "killed") or 0) >= 3:
                time.sleep(0.04)  # about half a step (most of which is the next save): likely inside a write
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        stderr = proc.communicate(timeout=60)[1].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own ({proc.returncode}) before it was killed: {stderr[-2000:]}"
    killed_at = read_llara_meta(tmp_path / "killed")["step"]  # the last complete checkpoint, hashes verified
    assert 3 <= killed_at < steps
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    with capsys.disabled():
        print(f"\nSIGKILL after the step-{killed_at}/{steps} checkpoint; left beside it: {leftovers or 'nothing'}")

    capsys.readouterr()
    assert train_mod.main([*killed_args, "--resume"]) == 0
    assert f"resuming {tmp_path / 'killed'} at step {killed_at}/{steps}" in capsys.readouterr().out
    assert train_mod.main(toy_train_args(toy_setup, tmp_path / "full", *flags)) == 0

    resumed, full = read_llara_meta(tmp_path / "killed"), read_llara_meta(tmp_path / "full")
    assert resumed["step"] == full["step"] == resumed["total_steps"] == full["total_steps"] == steps
    volatile = {"output", "resume"}
    assert {k: v for k, v in resumed["config"].items() if k not in volatile} == \
        {k: v for k, v in full["config"].items() if k not in volatile}
    assert [e["step"] for e in resumed["log"]] == list(range(1, steps + 1))
    assert [e["loss"] for e in resumed["log"]] == pytest.approx([e["loss"] for e in full["log"]], abs=1e-4)
    from safetensors.torch import load_file

    for name in ("projector.safetensors", "adapter/adapter_model.safetensors", "token_rows.safetensors"):
        a, b = load_file(tmp_path / "killed" / name), load_file(tmp_path / "full" / name)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), name


# ---- 3b. damaged checkpoint files through Predictor.load / resume ---------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def _own_recommender(folder: Path, tmp_path: Path) -> Path:
    """Point the checkpoint at a private copy of its recommender; returns the copy's .safetensors."""
    meta = json.loads((folder / "meta.json").read_text())
    src = checkpoint_mod.resolve_path(meta["recommender"]["path"], folder)
    stem = tmp_path / "recs" / "sasrec"
    stem.parent.mkdir(parents=True)
    for suffix in (".json", ".safetensors"):
        shutil.copy(str(src) + suffix, str(stem) + suffix)
    meta["recommender"]["path"] = str(stem)
    (folder / "meta.json").write_text(json.dumps(meta))
    return Path(str(stem) + ".safetensors")


DAMAGE = {
    # name: (damage(folder, tmp_path), regex the CheckpointError must match: each names the file)
    "tampered head": (lambda f, t: _flip(f / "head.safetensors"), r"head\.safetensors does not match the SHA-256"),
    "truncated head": (lambda f, t: _truncate(f / "head.safetensors"), r"head\.safetensors does not match the SHA-256"),
    "missing head": (lambda f, t: (f / "head.safetensors").unlink(), r"missing checkpoint file .*head\.safetensors"),
    "truncated adapter config": (lambda f, t: _truncate(f / "adapter" / "adapter_config.json"), r"adapter_config\.json does not match"),
    "truncated recommender weights": (lambda f, t: _truncate(_own_recommender(f, t)), r"recs/sasrec\.safetensors does not match the SHA-256"),
    "tampered recommender weights": (lambda f, t: _flip(_own_recommender(f, t)), r"recs/sasrec\.safetensors does not match the SHA-256"),
    "truncated recommender json": (lambda f, t: _truncate(_own_recommender(f, t).with_suffix(".json")), r"recs/sasrec\.json is not valid JSON"),
    "empty meta.json": (lambda f, t: (f / "meta.json").write_bytes(b""), r"meta\.json is not valid JSON"),
    "meta.json not UTF-8": (lambda f, t: (f / "meta.json").write_bytes(b'{"format": "\xff\xfe"}'), r"meta\.json is not valid JSON"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_fails_naming_the_file(toy_checkpoint, tmp_path, damage):
    folder = _copy(toy_checkpoint, tmp_path / "ck")
    corrupt, message = DAMAGE[damage]
    corrupt(folder, tmp_path)
    with pytest.raises(CheckpointError, match=message):
        Predictor.load(str(folder), precision="fp32")


def test_resume_with_truncated_trainer_state_names_the_file(toy_checkpoint, toy_args, tmp_path, capsys):
    folder = _copy(toy_checkpoint, tmp_path / "ck")
    _truncate(folder / "trainer_state.pt")
    args = [*toy_args, "--resume"]
    args[args.index("--output") + 1] = str(folder)
    code, _, err = run_cli(train_mod.main, args, capsys)
    assert_refused(code, err, r"^error: .*ck/trainer_state\.pt cannot be read safely")


def test_truncated_merged_weights_cache_is_rebuilt_or_named(toy_checkpoint, studio, llara_cache):
    """Predictor.load merges LoRA into the base weights once and caches them under $LLARA_CACHE/merged; a cache
    file cut short (a full disk, a killed copy) must not break every later start with an unnamed error."""
    cached = sorted(llara_cache.glob(f"merged/{toy_checkpoint.name}-*/model.safetensors"))
    assert cached, "the studio fixture should have built the merged cache"
    backup = cached[0].read_bytes()
    # a new, shorter file under the same name: the loaded studio maps the old one, and cutting a mapped file in
    # place would crash this test process with SIGBUS rather than test the loader
    cut = cached[0].with_name("cut.tmp")
    cut.write_bytes(backup[: len(backup) // 2])
    os.replace(cut, cached[0])
    try:
        try:
            again = Predictor.load(str(toy_checkpoint), precision="fp32")
        except CheckpointError as err:
            assert "model.safetensors" in str(err)
            return
        except Exception as err:  # noqa: BLE001
            pytest.xfail(f"{type(err).__name__} without the file's name ({str(err)[:80]}): merged_base in "
                         "llara/checkpoint.py reuses a cache entry without checking it (fix: hash the merged files, "
                         "rebuild on mismatch)")
        prompt = studio.predictor.prompts([0, 1, 2], list(range(3, 23)))["hybrid"]
        assert dict(again.answer(prompt, "rank").ranked) == pytest.approx(dict(studio.predictor.answer(prompt, "rank").ranked))
    finally:
        if not cached[0].is_file() or cached[0].stat().st_size != len(backup):  # not rebuilt: leave it as it was
            cached[0].parent.mkdir(parents=True, exist_ok=True)
            cut.write_bytes(backup)
            os.replace(cut, cached[0])


# ---- 3c. app.py refuses to start on a bad checkpoint -----------------------------------------------------------------


def _more_items(folder: Path, tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "data41", n_items=41)
    meta = json.loads((folder / "meta.json").read_text())
    meta["dataset"]["data_dir"] = str(data)
    (folder / "meta.json").write_text(json.dumps(meta))


def _other_n_items(folder: Path, tmp_path: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta["dataset"]["n_items"] += 1
    (folder / "meta.json").write_text(json.dumps(meta))


APP_BAD = {
    "missing folder": (lambda f, t: shutil.rmtree(f), r"cannot start: no LLaRA checkpoint at .*ck \(meta\.json missing\)"),
    "meta says another catalog size": (_other_n_items, r"cannot start: .*ck was trained on 41 items but the dataset has 40"),
    "dataset with another catalog size": (_more_items, r"cannot start: .*ck was trained on 40 items but the dataset has 41"),
    "tampered projector": (lambda f, t: _flip(f / "projector.safetensors"), r"cannot start: .*projector\.safetensors does not match the SHA-256"),
    "truncated meta.json": (lambda f, t: _truncate(f / "meta.json"), r"cannot start: .*meta\.json is not valid JSON"),
}


@pytest.mark.parametrize("bad", list(APP_BAD))
def test_app_refuses_to_start_on_a_bad_checkpoint(toy_checkpoint, tmp_path, capsys, bad):
    folder = _copy(toy_checkpoint, tmp_path / "ck")
    corrupt, message = APP_BAD[bad]
    corrupt(folder, tmp_path)
    code, _, err = run_cli(load_app_module().main, ["--checkpoint", str(folder), "--precision", "fp32"], capsys)
    assert_refused(code, err, message)


def test_app_refuses_to_start_in_a_real_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "app.py", "--checkpoint", str(tmp_path / "nowhere")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "llara-studio: cannot start: no LLaRA checkpoint at" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ---- 3d. a crash while saving leaves the previous checkpoint loadable ------------------------------------------


def _save_again(folder: Path, predictor: Predictor, step: int) -> None:
    meta = read_llara_meta(folder)
    meta = {k: v for k, v in meta.items() if k not in ("format", "projector", "files")}
    checkpoint_mod.save_llara(folder, predictor.model, {**meta, "step": step})


def _answers(predictor: Predictor) -> list:
    prompt = predictor.prompts([0, 1, 2], list(range(3, 23)))["hybrid"]
    return predictor.answer(prompt, "head").ranked


def test_crash_midway_through_a_file_keeps_the_previous_checkpoint(toy_checkpoint, tmp_path, monkeypatch):
    folder = _copy(toy_checkpoint, tmp_path / "ck")
    before = Predictor.load(str(folder), precision="fp32", merge=False)
    step = read_llara_meta(folder)["step"]
    real = checkpoint_mod._atomic_write
    calls = {"n": 0}

    def crash_on_the_second_file(path, write):
        calls["n"] += 1
        if calls["n"] < 2:
            return real(path, write)

        def half(fh):  # half of the bytes reach the disk, then the "disk is full"
            class Half:
                def write(self, data):
                    fh.write(data[: len(data) // 2])
                    raise OSError(28, "No space left on device")
            write(Half())
        return real(path, half)

    monkeypatch.setattr(checkpoint_mod, "_atomic_write", crash_on_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        _save_again(folder, before, step + 1)
    monkeypatch.undo()
    assert read_llara_meta(folder)["step"] == step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no half-written folder beside it
    after = Predictor.load(str(folder), precision="fp32", merge=False)
    assert _answers(after) == _answers(before)


def test_crash_between_the_renames_keeps_the_previous_checkpoint(toy_checkpoint, tmp_path, monkeypatch):
    folder = _copy(toy_checkpoint, tmp_path / "ck")
    predictor = Predictor.load(str(folder), precision="fp32", merge=False)
    step = read_llara_meta(folder)["step"]
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == folder and ".tmp-" in Path(src).name:  # the new folder is about to take the old one's place
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint_mod.os, "replace", replace)
    with pytest.raises(OSError):
        _save_again(folder, predictor, step + 1)
    monkeypatch.undo()
    assert read_llara_meta(folder)["step"] == step
