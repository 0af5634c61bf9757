"""Faults: a real SIGKILL mid-training then --resume, damaged checkpoint files, an app pointed at a bad
checkpoint, and a crash while saving (toy setup). In-process kill/resume equivalence is in ``test_train.py``,
checkpoint corruption through ``load_llara`` and the evaluate CLI in ``test_checkpoint.py``. See docs/reliability.md."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import llara.checkpoint as checkpoint_mod
import llara.training.train as train_mod
from llara.checkpoint import CheckpointError, read_llara_meta
from llara.serving.inference import Predictor

from .conftest import assert_refused, load_app_module, run_cli, toy_train_args, write_toy_dataset

pytestmark = pytest.mark.usefixtures("llara_cache")

REPO = Path(__file__).resolve().parents[1]


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
