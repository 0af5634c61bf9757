"""Bad input on the command lines (inference, attribute, evaluate, search, train, app.py), each refused with one
line that says what to change and never a traceback (toy checkpoint and setup). See docs/reliability.md."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import llara.data.search as search_mod
import llara.evaluation.evaluate as evaluate_mod
import llara.measurement.explain as attribute_mod
import llara.serving.inference as inference_mod
import llara.training.train as train_mod

from .conftest import TOY_TITLES, assert_refused, load_app_module, run_cli, toy_train_args

pytestmark = pytest.mark.usefixtures("llara_cache")

REPO = Path(__file__).resolve().parents[1]


# ---- 1b. bad input on the command lines -----------------------------------------------------------------------


TWELVE = "|".join(TOY_TITLES[:12])
INFERENCE_BAD = [
    (["--history", ""], r"error: Pick at least one watched artist"),  # the toy catalog holds artists
    (["--history", "No Such Artist"], r"error: history item 1: no artist titled 'No Such Artist' in the catalog"),
    (["--history", "x" * 10_000], r"error: a --history title of 10,000 characters is not in the catalog"),
    (["--history", "\udcff\udcfe\x00 odd"], r"error: history item 1: no artist titled '\\udcff\\udcfe\\x00 odd'"),
    (["--history", "Alpha", "--seed", "-1"], r"error: The seed must be a whole number from 0 to 4,294,967,295 \(got -1\)"),
    (["--history", "Alpha", "--seed", str(2**40)], r"from 0 to 4,294,967,295 \(got 1099511627776\)"),
    (["--history", "Alpha", "--seed", "abc"], r"argument --seed: invalid int value: 'abc'"),
    (["--history", "Alpha", "--candidates", "Bravo"], r"Give at least 2 candidates to choose from \(got 1\)"),
    (["--history", "Alpha", "--candidates", "Alpha|Bravo"], r"'Alpha' is both watched and a candidate"),
    (["--history", "Alpha", "--candidates", "Bravo|bravo|Charlie"], r"The candidates contain the same artist twice"),
    (["--history", "Alpha", "--candidates", "Bravo|Nope"], r"error: candidate 2: no artist titled 'Nope'"),
    (["--history", "Alpha", "--decode", "beam"], r"argument --decode: invalid choice: 'beam'"),
]


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
    assert code == 0 and "only the 10 most recent of the 12 picked artists are used" in out


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


# the two commands that take a checkpoint and titles: one runner for both tables
CHECKPOINT_CLI_BAD = [("inference", inference_mod, *case) for case in INFERENCE_BAD] + \
    [("attribute", attribute_mod, *case) for case in ATTRIBUTE_BAD]


@pytest.mark.parametrize("name, module, argv, expected", CHECKPOINT_CLI_BAD,
                         ids=[f"{name}_cli:{e[:40]}" for name, _, _, e in CHECKPOINT_CLI_BAD])
def test_checkpoint_cli_bad_input(toy_checkpoint, capsys, name, module, argv, expected):
    code, _, err = run_cli(module.main, ["--checkpoint", str(toy_checkpoint), "--precision", "fp32", *argv], capsys)
    assert code == 2
    assert_refused(code, err, expected)


def test_attribute_cli_valid_edge_inputs(toy_checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(toy_checkpoint), "--precision", "fp32", "--level", "item"]
    code, out, _ = run_cli(attribute_mod.main, [*base, "--history", "Alpha"], capsys)
    assert code == 0 and "prompt: hybrid, 1 history items" in out and "note:" not in out
    code, out, _ = run_cli(attribute_mod.main, [*base, "--history", "Alpha|alpha|Bravo"], capsys)
    assert code == 0 and "note: 1 repeated pick(s) counted once" in out and "2 history items" in out
    code, out, _ = run_cli(attribute_mod.main, [*base, "--history", TWELVE], capsys)
    assert code == 0 and "only the 10 most recent of the 12 picked artists are used" in out and "10 history items" in out
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
    (["heist", "--dataset", "lastfm"], r"error: dataset 'lastfm' \(the LastFM split of the LLaRA release\) is not on any "
                                       r"package registry: .* LLARA_LASTFM_DIR"),
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
