"""Many requests at once against one loaded ``Predictor``: latency percentiles, throughput, time spent waiting for
the model apart from computing, and memory, as the demo's users meet them.

    python -m llara.bench --parts load --precisions nf4          # 20 clients x 5 predicts, the demo's two models

Each client is a thread that sends its predicts one after another (the next when the last answered), all clients
starting together; the inputs are the first test users' histories with their seeded candidates, rotated per client.
The HTTP layer in front of the handlers is left out: it adds milliseconds, while the model calls (one at a time,
under the Predictor's lock) are what a queue of users waits for.
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from .inference import Predictor


def rss_mb() -> float:
    """Current resident memory (VmRSS) of this process, MB (NaN where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def load_test(predictor: Predictor, clients: int = 20, per_client: int = 5, decode: str | None = None,
              max_batch: int | None = None) -> dict:
    """Run ``clients`` x ``per_client`` predicts concurrently; returns latencies (p50/p95/max), predicts per second,
    the median wait for the model and the median compute time per predict, errors, the model batches, and RSS
    before and after. ``max_batch``: requests answered together at most for this run (1: one at a time)."""
    if clients < 1 or per_client < 1 or (max_batch is not None and max_batch < 1):
        raise ValueError("clients, per_client and max_batch must be >= 1")
    decode = decode or predictor.decodes[0]
    inputs = []
    for sample in predictor.dataset.test[:per_client]:
        history = list(sample.history)
        inputs.append((history, predictor.draw_candidates(history, 0, include=sample.target)))
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
