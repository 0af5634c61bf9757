"""Load: 20 concurrent clients x 5 predicts against the served toy app; every answer equals the single-client
answer, and latency and memory are recorded in tests/artifacts/load.json. See docs/reliability.md."""
from __future__ import annotations

import json
import math
import os
import re
import resource
import statistics
import threading
import time
from pathlib import Path

import pytest
import torch

from app import handlers

from .conftest import load_app_module, make_client

pytestmark = pytest.mark.usefixtures("llara_cache")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"


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
    text = re.sub(r"; \d+\.\d+ s of it waiting for other requests", "", text)  # how long it queued: load-dependent
    return re.sub(r"\d+(\.\d+)? (ms|s)\b", "T", text)


N_CLIENTS, PER_CLIENT = 20, 5


@pytest.mark.slow
def test_load_20_clients_x_5_predicts(served, studio):
    """Every answer equals the single-client answer for the same input, with no errors; latency and memory are
    measured, printed and written to tests/artifacts/load.json."""
    url = served["url"]
    inputs = []
    for k, sample in enumerate(studio.dataset.test[:PER_CLIENT]):
        h, c, _, _ = handlers.load_test_user(studio, str(sample.user), k)
        inputs.append((h, c, ("head", "rank")[k % 2], ("none", "shuffle", "no-embeddings")[k % 3], k))
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


@pytest.mark.slow
def test_50_attributions_do_not_grow_memory(studio):
    """Memory stays flat under attributions: 50 explain requests (every method, both prompts) may grow the resident
    set by 200 MB at most after a warm-up round (which pays for one-time allocations)."""
    p = studio.predictor
    sample = p.dataset.test[0]
    history = list(sample.history)
    cands = p.draw_candidates(history, 0, include=sample.target)
    methods = ("grad_x_input", "ig", "ablation")
    for method in methods:  # warm-up
        p.explain(history, cands, method, decode=p.decodes[0])
    before = _rss_bytes()
    for k in range(50):
        p.explain(history, cands, methods[k % 3], ("none", "no-embeddings", "shuffle")[k % 3], seed=k, decode=p.decodes[0])
    grown = (_rss_bytes() - before) / 2**20
    print(f"RSS grew by {grown:.1f} MB over 50 attributions")
    assert grown <= 200, f"RSS grew by {grown:.0f} MB over 50 attributions"


def test_the_load_benchmark_counts_every_request(studio):
    """``llara.measurement.concurrency.load_test`` (``python -m llara.bench --parts load``) on the toy model."""
    from llara.measurement.concurrency import load_test

    out = load_test(studio.predictor, clients=4, per_client=3)
    assert out["requests"] == 12 and out["errors"] == [] and out["predicts_per_s"] > 0
    assert out["p50_s"] <= out["p95_s"] <= out["max_s"] and out["median_wait_s"] >= 0 and out["median_compute_s"] > 0
    with pytest.raises(ValueError, match=">= 1"):
        load_test(studio.predictor, clients=0)


def test_the_mixed_benchmark_runs_every_kind_of_request(studio):
    """``llara.measurement.concurrency.mixed_load`` (the memory half of ``--parts load``): predicts with every decode and
    explanations with every method, all counted, none failing, and its table line."""
    from llara.measurement.concurrency import format_load, mixed_load
    from llara.serving.answers import ATTRIBUTION_METHODS

    p = studio.predictor
    out = mixed_load(p, requests=len(p.decodes) * 2 + 4 * 2, clients=2, explain_every=2)
    assert out["errors"] == [] and sum(out["counts"].values()) == out["requests"]
    assert {k for k in out["counts"] if k.startswith("explain")} == {f"explain {m}" for m in ATTRIBUTION_METHODS}
    assert any(k.startswith("predict") for k in out["counts"])
    assert out["rss_max_mb"] >= max(out["rss_before_mb"], out["rss_after_mb"]) - 1
    line = format_load([], out)[-1]
    assert f"{out['requests']} mixed requests from 2 clients" in line and "0 errors" in line
    with pytest.raises(ValueError, match=">= 1"):
        mixed_load(p, requests=0)
