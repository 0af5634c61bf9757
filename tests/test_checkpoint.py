"""Checkpoints: atomic writes, hashes in meta.json, and bad input that must fail with a CheckpointError naming the
problem, in Python and through ``python -m llara.evaluate`` (exit code 2, one ``error:`` line, no traceback)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import llara.evaluation.evaluate as evaluate_mod
from llara.checkpoint import (
    CheckpointError,
    _atomic_write,
    load_tensors,
    load_trainer_state,
    read_json,
    read_llara_meta,
    save_llara,
    save_tensors,
    write_json,
)
from llara.data import load_dataset
from llara.model.loader import load_llara, share_identical_weights
from llara.model.projector import build_projector
from llara.recommenders import build_recommender, save_recommender

from .conftest import TOY_DATASET, write_toy_dataset

REPO = Path(__file__).resolve().parents[1]


# ---- low-level files --------------------------------------------------------------------------------------------


def test_tensors_round_trip_and_hash(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    digest = save_tensors(tmp_path / "t.safetensors", tensors)
    loaded = load_tensors(tmp_path / "t.safetensors", expected_sha256=digest)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load_tensors(tmp_path / "t.safetensors", expected_sha256="0" * 64)
    blob = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_tensors(tmp_path / "t.safetensors")
    with pytest.raises(CheckpointError, match="missing checkpoint file"):
        load_tensors(tmp_path / "nope.safetensors")


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "meta.json"
    write_json(path, {"step": 1})

    def half_then_crash(fh):
        fh.write(b'{"step": 2, "trunc')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_write(path, half_then_crash)
    assert read_json(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]  # no temporary file left behind
    path.write_text('{"step": ')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(path)


FAKE_META = {"base_model": "tiny", "precision": "fp32", "dataset": {"name": TOY_DATASET, "n_items": 40},
             "recommender": {"path": "rec/sasrec", "model": "sasrec", "weights_sha256": "0" * 64}}


def fake_model(d_in: int = 4, d_out: int = 8, fail: bool = False):
    """What save_llara needs of a LLaRA without a PEFT adapter: a projector and the placeholder rows."""
    projector = build_projector("mlp2x_gelu", d_in, d_out)

    def rows():
        if fail:
            raise RuntimeError("disk full")
        return {"ids": torch.tensor([5, 6, 7]), "rows": torch.zeros(3, d_out)}

    return SimpleNamespace(llm=object(), projector=projector, placeholder_rows=rows)


def test_projector_saved_even_when_frozen_and_crash_keeps_previous_checkpoint(tmp_path):
    model = fake_model()
    model.projector.requires_grad_(False)  # the original release dropped the projector from checkpoints here
    folder = save_llara(tmp_path / "ck", model, {**FAKE_META, "step": 1})
    meta = read_llara_meta(folder)
    assert set(meta["files"]) == {"projector.safetensors", "token_rows.safetensors"}
    saved = load_tensors(folder / "projector.safetensors", meta["files"]["projector.safetensors"])
    assert all(torch.equal(saved[k], v) for k, v in model.projector.state_dict().items())

    with pytest.raises(RuntimeError, match="disk full"):
        save_llara(tmp_path / "ck", fake_model(fail=True), {**FAKE_META, "step": 2})
    assert read_llara_meta(folder)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # and no half-written folder is left


def test_trainer_state_truncated(tmp_path):
    torch.save({"optimizer": {"state": {}, "param_groups": []}, "log": []}, tmp_path / "trainer_state.pt")
    assert load_trainer_state(tmp_path)["log"] == []
    blob = (tmp_path / "trainer_state.pt").read_bytes()
    (tmp_path / "trainer_state.pt").write_bytes(blob[:40])
    with pytest.raises(CheckpointError, match="trainer_state.pt cannot be read"):
        load_trainer_state(tmp_path)
    assert load_trainer_state(tmp_path / "elsewhere") is None


# ---- a trained checkpoint ---------------------------------------------------------------------------------------


def test_meta_hashes_every_weights_file(toy_run):
    folder = toy_run["output"]
    meta = read_llara_meta(folder)
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert on_disk - set(meta["files"]) == {"meta.json", "trainer_state.pt"}
    assert {"projector.safetensors", "token_rows.safetensors", "adapter/adapter_model.safetensors"} <= set(meta["files"])
    assert meta["dataset"]["n_items"] == 40 and meta["recommender"]["model"] == "sasrec"
    # only the placeholder rows are stored, never the whole resized embedding matrix
    adapter = load_tensors(folder / "adapter" / "adapter_model.safetensors")
    assert all("lora_" in k for k in adapter)


def _flip_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_meta(folder: Path, edit) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def _more_items(folder: Path, tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "data41", n_items=41)
    _edit_meta(folder, lambda m: m["dataset"].update(data_dir=str(data)))


def _retrained_recommender(folder: Path, tmp_path: Path) -> None:
    """The recommender at the checkpoint's path was retrained (same architecture, other weights)."""
    src = Path(read_json(folder / "meta.json")["recommender"]["path"])
    stem = tmp_path / "recs" / TOY_DATASET / "sasrec"
    stem.parent.mkdir(parents=True)
    for suffix in (".json", ".safetensors"):
        shutil.copy(str(src) + suffix, str(stem) + suffix)
    _edit_meta(folder, lambda m: m["recommender"].update(path=str(stem)))
    load_llara(str(folder))  # sanity: the moved copy itself is accepted
    torch.manual_seed(123)
    save_recommender(build_recommender("sasrec", n_items=40, dim=16), stem)


def _missing_recommender(folder: Path, tmp_path: Path) -> None:
    _edit_meta(folder, lambda m: m["recommender"].update(path=str(tmp_path / "gone" / "sasrec")))


BAD = {
    "missing folder": (lambda f, t: shutil.rmtree(f), r"checkpoint folder .* does not exist"),
    "missing meta.json": (lambda f, t: (f / "meta.json").unlink(), r"missing checkpoint file .*meta\.json"),
    "truncated meta.json": (lambda f, t: _truncate(f / "meta.json"), r"meta\.json is not valid JSON"),
    "not a llara checkpoint": (lambda f, t: _edit_meta(f, lambda m: m.update(format="other/1")), r"is not a llara-checkpoint/1"),
    "truncated projector": (lambda f, t: _truncate(f / "projector.safetensors"), r"projector\.safetensors does not match the SHA-256"),
    "tampered adapter": (lambda f, t: _flip_byte(f / "adapter" / "adapter_model.safetensors"), r"adapter_model\.safetensors does not match the SHA-256"),
    "missing token rows": (lambda f, t: (f / "token_rows.safetensors").unlink(), r"missing checkpoint file .*token_rows"),
    "meta.json without dataset": (lambda f, t: _edit_meta(f, lambda m: m.pop("dataset")), r"dataset"),
    "dataset with more items": (_more_items, r"trained on 40 items but the dataset has 41"),
    "retrained recommender": (_retrained_recommender, r"weights hash differs"),
    "missing recommender": (_missing_recommender, r"needs the recommender checkpoint"),
}


@pytest.fixture
def bad_checkpoint(request, toy_run, tmp_path):
    """A copy of the toy checkpoint broken as BAD[request.param] says; returns (folder, expected message)."""
    folder = tmp_path / "ck"
    shutil.copytree(toy_run["output"], folder)
    corrupt, message = BAD[request.param]
    corrupt(folder, tmp_path)
    return folder, message


@pytest.mark.parametrize("bad_checkpoint", list(BAD), indirect=True)
def test_bad_checkpoint_raises_checkpoint_error(bad_checkpoint):
    folder, message = bad_checkpoint
    with pytest.raises(CheckpointError, match=message):
        load_llara(str(folder))


@pytest.mark.parametrize("bad_checkpoint", ["missing meta.json", "truncated projector", "dataset with more items",
                                            "retrained recommender", "meta.json without dataset"], indirect=True)
def test_evaluate_cli_reports_bad_checkpoint_in_one_line(bad_checkpoint, capsys):
    folder, message = bad_checkpoint
    capsys.readouterr()
    assert evaluate_mod.main(["--checkpoint", str(folder), "--decode", "rank", "--seeds", "1", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err


def test_dataset_with_other_item_count_passed_directly(toy_run, tmp_path):
    other = load_dataset(TOY_DATASET, data_dir=write_toy_dataset(tmp_path / "data41", n_items=41))
    with pytest.raises(CheckpointError, match="trained on 40 items but the dataset has 41"):
        load_llara(str(toy_run["output"]), dataset=other)


def test_evaluate_subprocess_bad_checkpoint_exit_code(toy_run, tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(toy_run["output"], folder)
    _truncate(folder / "projector.safetensors")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "llara.evaluate", "--checkpoint", str(folder)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "projector.safetensors does not match the SHA-256" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_merged_inference_matches_the_adapter(toy_run, tmp_path, monkeypatch):
    """``merge=True`` folds LoRA into the base weights (cached once): same scores, no LoRA modules left."""
    monkeypatch.setenv("LLARA_CACHE", str(tmp_path))
    plain, _, ds = load_llara(toy_run["output"], precision="fp32")
    merged, _, _ = load_llara(toy_run["output"], precision="fp32", merge=True)
    assert any("lora" in n for n, _ in plain.llm.named_parameters())
    assert not any("lora" in n for n, _ in merged.llm.named_parameters())
    assert len(list(tmp_path.glob("merged/*/config.json"))) == 1
    for sample, cands in zip(ds.test[:3], ds.candidates("test", seed=0)):
        prompt = plain.builder.build(sample.history, cands, hybrid=True)
        a, b = dict(plain.rank(prompt)), dict(merged.rank(prompt))
        assert max(abs(a[k] - b[k]) for k in a) < 1e-3
    again, _, _ = load_llara(toy_run["output"], precision="fp32", merge=True)  # reuses the cached merge
    assert len(list(tmp_path.glob("merged/*"))) == 1


def test_two_loaded_models_share_their_identical_frozen_weights(toy_run):
    """The demo's second model points at the first one's unchanged weights (e.g. token embeddings): held once, tied
    weights still tied, answers unchanged; a weight that differs keeps its own copy."""

    first, _, ds = load_llara(toy_run["output"], precision="fp32")
    second, _, _ = load_llara(toy_run["output"], dataset=ds, precision="fp32")
    assert not any(p.requires_grad for p in second.parameters())  # inference models are frozen
    sample, cands = ds.test[0], ds.candidates("test", seed=0)[0]
    prompt = second.builder.build(sample.history, cands, hybrid=True)
    before = dict(second.rank(prompt))
    emb = second.llm.get_input_embeddings().weight
    with torch.no_grad():
        next(second.projector.parameters()).add_(1.0)  # made to differ: must stay its own
    freed = share_identical_weights(second, first)
    assert freed >= emb.numel() * emb.element_size()
    assert second.llm.get_input_embeddings().weight is first.llm.get_input_embeddings().weight
    out = second.llm.get_output_embeddings()
    if out is not None and first.llm.get_output_embeddings().weight is first.llm.get_input_embeddings().weight:
        assert out.weight is second.llm.get_input_embeddings().weight  # still tied
    assert next(second.projector.parameters()) is not next(first.projector.parameters())
    with torch.no_grad():
        next(second.projector.parameters()).sub_(1.0)
    after = dict(second.rank(prompt))
    assert max(abs(before[k] - after[k]) for k in before) < 1e-5
    assert share_identical_weights(second, first) == 0  # nothing left to share


def test_int8_loads_merged_only_and_ranks_like_float32(toy_run, tmp_path, monkeypatch):
    """int8 (fbgemm) serves a checkpoint with its LoRA update merged in: scores within int8 rounding of float32, a
    merged cache in bf16 (what its name says), and a clear error where LoRA would have to wrap an int8 layer."""
    from llara.model.cpu8bit import Int8Linear

    monkeypatch.setenv("LLARA_CACHE", str(tmp_path))
    ref, _, ds = load_llara(toy_run["output"], precision="fp32", merge=True)
    int8, _, _ = load_llara(toy_run["output"], precision="int8", merge=True)
    assert any(isinstance(m, Int8Linear) for m in int8.llm.modules())
    assert len(list(tmp_path.glob("merged/*-bf16"))) == 1  # int8 quantizes the bf16 merge
    for sample, cands in zip(ds.test[:3], ds.candidates("test", seed=0)):
        prompt = ref.builder.build(sample.history, cands, hybrid=True)
        a, b = dict(ref.rank(prompt)), dict(int8.rank(prompt))
        assert max(abs(a[k] - b[k]) for k in a) < 0.05 * max(abs(v) for v in a.values()) + 0.05
    with pytest.raises(ValueError, match="int8 is for inference only"):
        load_llara(toy_run["output"], precision="int8", trainable=True)


def test_int8_unmerged_runs_lora_beside_shared_int8_layers(toy_run, tmp_path, monkeypatch):
    """Unmerged int8: the LoRA update runs beside the int8 base layers (no merged cache is built), scores stay within
    int8 rounding of float32, and a second model over the same base holds the same int8 layers, not a copy."""
    from llara.model.cpu8bit import Int8Linear
    from llara.model.lora_side import SideLoRA

    monkeypatch.setenv("LLARA_CACHE", str(tmp_path))
    ref, _, ds = load_llara(toy_run["output"], precision="fp32", merge=False)
    first, _, _ = load_llara(toy_run["output"], precision="int8", merge=False)
    second, _, _ = load_llara(toy_run["output"], precision="int8", merge=False)
    assert not list(tmp_path.glob("merged/*"))
    sides = {n: m for n, m in first.llm.named_modules() if isinstance(m, SideLoRA)}
    assert sides and all(isinstance(m.base, Int8Linear) for m in sides.values())
    others = dict(second.llm.named_modules())
    assert all(others[n].base is m.base and others[n] is not m for n, m in sides.items())
    embedding = first.llm.get_input_embeddings().weight
    assert share_identical_weights(second, first) >= embedding.numel() * 4  # the float32 embedding, held once
    for sample, cands in zip(ds.test[:3], ds.candidates("test", seed=0)):
        prompt = ref.builder.build(sample.history, cands, hybrid=True)
        a, b = dict(ref.rank(prompt)), dict(first.rank(prompt))
        assert max(abs(a[k] - b[k]) for k in a) < 0.05 * max(abs(v) for v in a.values()) + 0.05
