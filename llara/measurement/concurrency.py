"""Many requests at once against one loaded ``Predictor``: latency percentiles, throughput, time spent waiting for
the model apart from computing, and memory, as the demo's users meet them.

    python -m llara.bench --parts load --precisions nf4          # 20 clients x 5 predicts, the demo's two models,
                                                                 # then 100 mixed requests (memory)
    python -m llara.bench --parts app --precisions nf4           # `python app.py` from launch to serving, empty cache

Each client is a thread that sends its predicts one after another (the next when the last answered), all clients
starting together; the inputs are the first test users' histories with their seeded candidates, rotated per client.
The HTTP layer in front of the handlers is left out: it adds milliseconds, while the model calls (one at a time,
under the Predictor's lock) are what a queue of users waits for.
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from ..constants import REPO_ROOT
from ..serving.inference import Predictor


def rss_mb(pid: int | str = "self") -> float:
    """Current resident memory (VmRSS) of a process (default: this one), MB (NaN where /proc is missing)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def sample_requests(predictor: Predictor, n: int) -> list[tuple[list[int], list[int]]]:
    """The first ``n`` test users' histories, each with its seeded candidate set (target included): the inputs the
    load and switch benches send."""
    return [(list(s.history), predictor.draw_candidates(list(s.history), 0, include=s.target))
            for s in predictor.dataset.test[:n]]


def load_test(predictor: Predictor, clients: int = 20, per_client: int = 5, decode: str | None = None,
              max_batch: int | None = None) -> dict:
    """Run ``clients`` x ``per_client`` predicts concurrently; returns latencies (p50/p95/max), predicts per second,
    the median wait for the model and the median compute time per predict, errors, the model batches, and RSS
    before and after. ``max_batch``: requests answered together at most for this run (1: one at a time)."""
    if clients < 1 or per_client < 1 or (max_batch is not None and max_batch < 1):
        raise ValueError("clients, per_client and max_batch must be >= 1")
    decode = decode or predictor.decodes[0]
    inputs = sample_requests(predictor, per_client)
    predictor.predict(*inputs[0], decode)  # warm-up: first-call allocations are not a user's wait
    latencies: list[float] = []
    waits: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        barrier.wait()
        for j in range(per_client):
            history, cands = inputs[(index + j) % len(inputs)]
            started = time.perf_counter()
            try:
                result = predictor.predict(history, cands, decode)
            except Exception as err:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors.append(repr(err))
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                waits.append(result.waited)

    saved_width = predictor.combiner.max_batch
    predictor.combiner.max_batch = max_batch if max_batch is not None else saved_width
    rss_before = rss_mb()
    batches_before = len(predictor.combiner.batch_sizes)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    width = predictor.combiner.max_batch
    predictor.combiner.max_batch = saved_width
    ordered = sorted(latencies)
    pick = (lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else (lambda q: float("nan"))
    return {"clients": clients, "per_client": per_client, "decode": decode, "max_batch": width, "requests": clients * per_client,
            "errors": errors, "wall_s": wall, "predicts_per_s": len(latencies) / wall if wall > 0 else 0.0,
            "p50_s": pick(0.5), "p95_s": pick(0.95), "max_s": ordered[-1] if ordered else float("nan"),
            "median_wait_s": statistics.median(waits) if waits else float("nan"),
            "median_compute_s": statistics.median(l - w for l, w in zip(latencies, waits)) if waits else float("nan"),
            "rss_before_mb": rss_before, "rss_after_mb": rss_mb(),
            "batch_sizes": predictor.combiner.batch_sizes[batches_before:]}


def mixed_load(predictor: Predictor, requests: int = 100, clients: int = 4, explain_every: int = 5,
               methods: tuple[str, ...] | None = None) -> dict:
    """``requests`` requests from ``clients`` threads, as a demo's visitors mix them: every ``explain_every``-th is an
    explanation (the attribution methods in turn), the others predicts (the model's decodes in turn), over the
    first test users. Returns the resident memory before, after and at its highest (sampled after each request),
    the requests of each kind, errors, and wall time: what the process holds once many kinds of work have passed."""
    from ..serving.answers import ATTRIBUTION_METHODS

    if requests < 1 or clients < 1 or explain_every < 1:
        raise ValueError("requests, clients and explain_every must be >= 1")
    methods = methods or ATTRIBUTION_METHODS
    decodes = predictor.decodes
    users = [list(s.history) for s in predictor.dataset.test[:10]]
    inputs = [(h, predictor.draw_candidates(h, 0)) for h in users]
    plan = []
    for i in range(requests):
        if (i + 1) % explain_every == 0:
            plan.append(("explain", methods[(i // explain_every) % len(methods)]))
        else:
            plan.append(("predict", decodes[i % len(decodes)]))
    counts: dict[str, int] = {}
    errors: list[str] = []
    peak = [rss_mb()]
    rss_before = peak[0]
    lock = threading.Lock()
    jobs = iter(enumerate(plan))

    def client() -> None:
        while True:
            with lock:
                step = next(jobs, None)
            if step is None:
                return
            i, (kind, how) = step
            history, cands = inputs[i % len(inputs)]
            try:
                if kind == "explain":
                    predictor.explain(history, cands, how, decode=decodes[0])
                else:
                    predictor.predict(history, cands, how)
            except Exception as err:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors.append(f"{kind} {how}: {err!r}")
            with lock:
                counts[f"{kind} {how}"] = counts.get(f"{kind} {how}", 0) + 1
                peak[0] = max(peak[0], rss_mb())

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": requests, "clients": clients, "counts": counts, "errors": errors,
            "wall_s": time.perf_counter() - started, "rss_before_mb": rss_before, "rss_after_mb": rss_mb(),
            "rss_max_mb": peak[0]}


def format_load(loads: list[dict], mixed: dict | None = None, starts: list[dict] | None = None) -> list[str]:
    """Markdown lines for ``load_test`` results (one column each, same run), a ``mixed_load`` result and
    ``app_start`` results."""
    lines: list[str] = []
    if starts:
        lines += ["", "| `python app.py`, launch to serving | seconds | server RSS then (MB) | target |", "|---|---|---|---|"]
        for r in starts:
            lines.append(f"| {r['precision']}, {'empty cache (first start)' if r['empty_cache'] else 'warm cache'} | "
                         f"{r['ready_s']:.1f} | {r['rss_mb']:,.0f} | "
                         f"{'≤ 30 s' if r['empty_cache'] else ''}{'; ' if r['empty_cache'] else ''}≤ 1,000 MB |")
    if loads:
        first = loads[0]
        lines += ["", f"| {first['clients']} clients x {first['per_client']} predicts ({first['precision']}, "
                  f"{first['decode']}) | " + " | ".join(f"at most {r['max_batch']} per pass" for r in loads) + " | target |",
                  "|---" * (len(loads) + 2) + "|"]
        row = lambda name, cells, target="": lines.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")  # noqa: E731
        row("latency p50 / p95 / max (s)", [f"{r['p50_s']:.2f} / {r['p95_s']:.2f} / {r['max_s']:.2f}" for r in loads], "p95 ≤ 6")
        row("predicts per second", [f"{r['predicts_per_s']:.2f}" for r in loads], "≥ 3")
        row("per predict: median wait for the model / compute (s)",
            [f"{r['median_wait_s']:.2f} / {r['median_compute_s']:.2f}" for r in loads])
        row("model passes (requests per pass: median / max)",
            [f"{len(r['batch_sizes'])} ({statistics.median(r['batch_sizes'] or [0]):.0f} / {max(r['batch_sizes'] or [0])})"
             for r in loads])
        row("errors", [str(len(r["errors"])) for r in loads], "0")
        row("RSS before / after (MB)", [f"{r['rss_before_mb']:,.0f} / {r['rss_after_mb']:,.0f}" for r in loads])
    if mixed:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(mixed["counts"].items()))
        lines += ["", f"{mixed['requests']} mixed requests from {mixed['clients']} clients ({kinds}): "
                  f"{len(mixed['errors'])} errors, {mixed['wall_s']:.0f} s; RSS before / after / highest "
                  f"{mixed['rss_before_mb']:,.0f} / {mixed['rss_after_mb']:,.0f} / {mixed['rss_max_mb']:,.0f} MB "
                  "(target after: ≤ 1,500)"]
    return lines


def app_start(precision: str = "nf4", empty_cache: bool = True, timeout_s: float = 600,
              app_file: str | Path | None = None) -> dict:
    """Launch ``python app.py`` as a user would and time it from launch until its page answers over HTTP; returns
    those seconds and the server's resident memory at that moment. ``empty_cache``: a fresh ``LLARA_CACHE`` (the
    first start ever: base-model conversion and LoRA merges included); else the user's cache as it is."""
    app_file = Path(app_file) if app_file else REPO_ROOT / "app.py"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, **({"LLARA_CACHE": cache} if empty_cache else {})}
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(app_file), "--port", str(port), "--precision", precision],
                                env=env, cwd=app_file.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited with code {proc.returncode} before serving")
                if time.perf_counter() - started > timeout_s:
                    raise RuntimeError(f"app.py did not serve within {timeout_s:.0f} s")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    time.sleep(0.25)
            ready = time.perf_counter() - started
            return {"precision": precision, "empty_cache": empty_cache, "ready_s": ready, "rss_mb": rss_mb(proc.pid)}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
