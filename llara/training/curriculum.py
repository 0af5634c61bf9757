"""When a training sample uses the hybrid prompt (item embeddings spliced in) rather than the text-only one.

A pure function of the global step, never of a data-loader counter: the original release kept its step in the
loader workers, so the schedule restarted every epoch. Here resuming at step s reproduces exactly the same choices.

Modes (the paper's ablation on MovieLens HR@1: hybrid 0.4211, two-stage 0.4316, curriculum 0.4421):
  text        p = 0                                   (TALLRec-style, text-only prompts)
  hybrid      p = 1        (alias "direct")           (hybrid prompts from the first step)
  two-stage   p = 0 before switch_fraction * T, then 1 (paper: 2 epochs text, 3 hybrid -> 0.4)
  curriculum  p = step / T, clamped to [0, 1]          (the paper's method)
"""
from __future__ import annotations

import hashlib
from numbers import Integral

CURRICULUM_MODES = ("text", "hybrid", "two-stage", "curriculum")
_ALIASES = {"direct": "hybrid"}


def _check(mode: str, step: int, total_steps: int, switch_fraction: float) -> str:
    mode = _ALIASES.get(mode, mode)
    if mode not in CURRICULUM_MODES:
        raise ValueError(f"unknown curriculum mode {mode!r}; valid modes: {', '.join(CURRICULUM_MODES)} (or 'direct')")
    if isinstance(total_steps, bool) or not isinstance(total_steps, Integral) or total_steps <= 0:
        # ints only (numpy ints included): a float step count is almost always an unrounded len(data) / batch
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if not 0.0 <= switch_fraction <= 1.0:
        raise ValueError(f"switch_fraction must lie in [0, 1], got {switch_fraction!r}")
    return mode


def hybrid_probability(mode: str, step: int, total_steps: int, switch_fraction: float = 0.4) -> float:
    """Probability that a sample at global ``step`` (0-based) of ``total_steps`` uses the hybrid prompt.

    Steps past the end are allowed (clamped), so an extra evaluation step or a rounding of the step count never
    raises. ValueError for an unknown mode, ``total_steps <= 0`` or a negative step.
    """
    mode = _check(mode, step, total_steps, switch_fraction)
    if mode == "text":
        return 0.0
    if mode == "hybrid":
        return 1.0
    if mode == "two-stage":
        return 0.0 if step < switch_fraction * total_steps else 1.0
    return min(1.0, int(step) / int(total_steps))  # curriculum


def _uniform(seed: int, step: int, sample_key: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, step, sample_key): stable across processes and Python versions,
    unlike hash() or a shared RNG whose state depends on how many samples were drawn before."""
    data = b"".join(int(v).to_bytes(16, "little", signed=True) for v in (seed, step, sample_key))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") / 2.0**64


def use_hybrid(
    mode: str, step: int, total_steps: int, sample_key: int, seed: int = 0, switch_fraction: float = 0.4
) -> bool:
    """Decide for one sample (``sample_key``, e.g. its dataset index) whether it gets the hybrid prompt at ``step``.

    Deterministic: u = hash(seed, step, sample_key) in [0, 1), hybrid iff u < p. At p = 0 and p = 1 the answer is
    the same for every sample, so ``text`` / ``hybrid`` modes never depend on the hash.
    """
    p = hybrid_probability(mode, step, total_steps, switch_fraction)
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return _uniform(seed, step, sample_key) < p

