"""One request end to end, as the demo serves it: text-only and hybrid LLaRA side by side with the recommender.

    python -m llara.inference --checkpoint checkpoints/llara/movielens-sasrec-curriculum-head \\
        --history "Toy Story|Star Wars|Fargo|Scream" --decode rank --precision nf4

``Predictor`` loads a trained checkpoint once (4-bit by default, as the demo runs) with the recommender whose
embeddings it projects, validates every input with a message a person can act on, and serialises model calls
with a lock: one CPU model serves one request at a time, and the ablation switches (``blank_slots``) and
attributions briefly change model state.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import threading
import time
from pathlib import Path

import torch

from ..attribution.deletion import attribute_deletion
from ..attribution.inspector import SlotInfo, slot_infos
from ..attribution.methods import Attribution, attribute_items, attribute_tokens, neutral_slot_vector
from ..attribution.prompt_layout import check_title_lengths, resolve_item
from ..constants import MAX_BATCH, MAX_SEED, PRECISIONS
from ..data import NUM_CANDIDATES, SequenceDataset, candidates_around
from ..device import add_device_arg, resolve_device, serving_precision
from ..memory import trim_heap
from ..model.decoders import DECODERS, DECODES, available, offered
from ..model.llara_model import LLaRA, rank_candidates
from ..prompt.prompts import Prompt, clean_history
from .answers import (
    ABLATIONS,
    PROMPT_KINDS,
    UNTRAINED_TITLES,
    Answer,
    Explanation,
    PartComparison,
    Prediction,
    check_method,
    names_its_pick,
    writes_titles,
)
from .combiner import Combiner
from .part_view import compare_parts

CANDIDATE_KINDS = ("random", "hard")  # see Predictor.draw_candidates
HARD_POOL = 30  # the recommender's best-scored unseen items a "hard" set draws half its candidates from


def merged_by_default(precision: str) -> bool:
    """Whether ``Predictor.load`` merges the LoRA update when not told: always, except at int8, where the update runs
    beside int8 base layers the text-only and hybrid models share (llara/model/lora_side.py)."""
    return precision != "int8"


class Predictor:
    """A loaded LLaRA checkpoint plus its recommender, safe to share between threads."""

    def __init__(self, model: LLaRA, recommender, dataset: SequenceDataset, meta: dict,
                 text_model: LLaRA | None = None, text_meta: dict | None = None) -> None:
        self.model, self.recommender, self.dataset, self.meta = model, recommender, dataset, meta
        self.precision = "as trained"  # set by load: the precision the weights were loaded at
        self.merged: bool | None = None  # set by load: whether the LoRA update was merged into the weights
        # The text-only panel: a model trained on text-only prompts with the same levers and budget, when given;
        # else the main model answers its text-only prompt too.
        self.text_model, self.text_meta = text_model, text_meta
        self.catalog = dataset.catalog
        self.titles = model.builder.titles
        self.lock = threading.Lock()
        # next/residual requests waiting for the model are answered together (llara/serving/combiner.py)
        self.combiner = Combiner(self.lock, self._answer_batch, max_batch=MAX_BATCH)
        self._neutral: torch.Tensor | None = None
        with torch.no_grad():  # unit item vectors of the recommender (N, d_rec): what "similar items" means to it
            self._unit_items = torch.nn.functional.normalize(model.item_table.float(), dim=-1)

    @classmethod
    def load(cls, checkpoint: str, precision: str = "nf4", threads: int = 0, merge: bool | None = None,
             text_checkpoint: str | None = None, device: str | torch.device | None = None) -> Predictor:
        """``merge``: fold the LoRA update into the base weights once (cached), which roughly halves the cost of
        every forward pass on a CPU; ``False`` keeps the adapter separate (bit-for-bit what training saw). ``None``
        (default): merged, except at int8, where the update runs beside int8 base layers that the text-only and
        hybrid models then share (llara/model/lora_side.py; docs/performance.md: ~130 MB less, no merge to build,
        ~12% more per prediction).
        ``text_checkpoint``: a text-only model for the text-only panel (same dataset). ``device``: where the models
        and the recommender run (default CPU; see llara.device)."""
        from ..checkpoint import resolve_path
        from ..model.loader import load_llara, share_identical_weights
        from ..recommenders import load_recommender

        if threads > 0:
            torch.set_num_threads(threads)
        precision = serving_precision(precision, resolve_device(device or "cpu"))
        if merge is None:
            merge = merged_by_default(precision)
        model, meta, dataset = load_llara(checkpoint, precision=precision, merge=merge, device=device)
        # the model holds its (frozen, checked) recommender already: the same weights, loaded once
        recommender = model.recommender
        if recommender is None:
            recommender = load_recommender(resolve_path(meta["recommender"]["path"], Path(checkpoint)), n_items=dataset.n_items)
            recommender.to(model.device)
        text_model = text_meta = None
        if text_checkpoint:
            text_model, text_meta, _ = load_llara(text_checkpoint, dataset=dataset, precision=precision, merge=merge,
                                                  device=device)
            if text_meta.get("config", {}).get("mode") != "text":
                raise ValueError(f"{text_checkpoint} was not trained on text-only prompts (mode "
                                 f"{text_meta.get('config', {}).get('mode')!r}): it cannot stand for the text-only model")
            share_identical_weights(text_model, model)  # e.g. the base model's token embeddings, held once
        predictor = cls(model, recommender, dataset, meta, text_model, text_meta)
        predictor.precision = precision  # what "auto" resolved to
        predictor.merged = merge  # and how the LoRA update is applied
        trim_heap()  # the conversion and copies of loading are garbage now
        return predictor

    @property
    def decodes(self) -> tuple[str, ...]:
        """The main (hybrid) model's decodes, best first."""
        return offered(self.model)

    def model_for(self, prompt: Prompt) -> LLaRA:
        return self.text_model if self.text_model is not None and not prompt.hybrid else self.model

    # ---- input checks ------------------------------------------------------------------------------------

    def clean_history(self, history: list[int]) -> tuple[list[int], str]:
        """Item ids in watch order, duplicates kept once, the last ``MAX_HISTORY``; a note says what changed."""
        if history:
            self.catalog.check_ids(list(history), "history item id")
        return clean_history(list(history or []), noun=f"{self.catalog.domain}s")

    def check_candidates(self, history: list[int], candidates: list[int]) -> list[int]:
        cands = [int(c) for c in candidates]
        if len(cands) < 2:
            raise ValueError(f"Give at least 2 candidates to choose from (got {len(cands)}).")
        if len(cands) > NUM_CANDIDATES:
            raise ValueError(f"At most {NUM_CANDIDATES} candidates fit the prompt the model was trained on (got {len(cands)}).")
        self.catalog.check_ids(cands, "candidate item id")
        if len(set(cands)) != len(cands):
            raise ValueError(f"The candidates contain the same {self.catalog.domain} twice.")
        both = [self.titles[c] for c in cands if c in set(history)]
        if both:
            raise ValueError(f"{both[0]!r} is both watched and a candidate: candidates must be unseen "
                             f"{self.catalog.domain}s.")
        return cands

    def check_decode(self, decode: str) -> str:
        if decode not in self.decodes:
            raise ValueError(f"Unknown decode mode {decode!r}; this model offers {', '.join(self.decodes)}.")
        return decode

    @staticmethod
    def fallback(model: LLaRA, decode: str) -> tuple[str, str]:
        """``(decode, note)``: ``decode`` where ``model`` offers it, else its best one, with a note saying so (the
        text-only model has no recommender, so no residual scoring)."""
        if available(model, decode):
            return decode, ""
        best = offered(model)[0]
        return best, f"the text-only model has no {decode} decode: answered with {best}"

    @staticmethod
    def check_seed(seed: int) -> int:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"The seed must be a whole number from 0 to {MAX_SEED:,} (got {str(seed)[:40]}).")
        return seed

    def draw_candidates(self, history: list[int], seed: int = 0, include: int | None = None,
                        kind: str = "random") -> list[int]:
        """``NUM_CANDIDATES`` unseen items with ``include`` (e.g. the true next movie) among them, keyed by (seed,
        history) so every history gets its own set. ``kind``: ``random``, the paper's uniform draw; ``hard``, half of
        them drawn from the recommender's 30 best-scored unseen items for this history (the rest at random), so the
        models must tell apart items that all suit the history."""
        if kind not in CANDIDATE_KINDS:
            raise ValueError(f"Unknown candidate set {kind!r}; choose one of {', '.join(CANDIDATE_KINDS)}.")
        history, _ = self.clean_history(history)
        seed = self.check_seed(seed)
        drawn = list(candidates_around(history, self.catalog, seed, include=include, per_history=True))
        if kind == "random":
            return drawn
        scores = self.recommender.score_histories([history], [list(range(len(self.catalog)))])[0]  # (N,)
        # (an inference-mode tensor: no in-place writes) the watched items can never be candidates
        watched = torch.isin(torch.arange(len(scores), device=scores.device), torch.tensor(history, device=scores.device))
        scores = torch.where(watched, -float("inf"), scores)
        top = [int(i) for i in scores.topk(HARD_POOL).indices.tolist() if int(i) != include]
        rng = random.Random(f"{seed}:{','.join(map(str, history))}")
        hard = rng.sample(top, NUM_CANDIDATES // 2)
        rest = [c for c in drawn if c not in hard and c != include]
        chosen = hard + ([include] if include is not None else []) + rest
        chosen = chosen[:NUM_CANDIDATES]
        rng.shuffle(chosen)
        return chosen

    # ---- prompts -----------------------------------------------------------------------------------------

    def prompts(self, history: list[int], candidates: list[int], ablation: str = "none", seed: int = 0) -> dict[str, Prompt]:
        if ablation not in ABLATIONS:
            raise ValueError(f"Unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}.")
        if ablation == "shuffle":
            history = list(history)
            random.Random(self.check_seed(seed)).shuffle(history)
        out = {"hybrid": self.model.builder.build(history, candidates, hybrid=True, titles=ablation != "no-titles")}
        if ablation != "no-titles":  # without titles a text-only prompt names no item at all
            out["text"] = (self.text_model or self.model).builder.build(history, candidates, hybrid=False)
        return out

    def slots(self, prompt: Prompt, nearest: int = 3) -> list[SlotInfo]:
        """What each embedding slot of a hybrid prompt carries (see ``llara.attribution.inspector``)."""
        return slot_infos(self.model, prompt, self._unit_items, nearest)

    # ---- answering ---------------------------------------------------------------------------------------

    def _neutral_vector(self) -> torch.Tensor:
        if self._neutral is None:
            self._neutral = neutral_slot_vector(self.model, "mean")
        return self._neutral

    def _conditions(self, prompt: Prompt, ablation: str) -> contextlib.AbstractContextManager:
        """The model state a prompt is answered (and explained) under: the no-embeddings ablation gives every slot of
        a hybrid prompt the neutral vector. Call under ``self.lock``: it changes the shared model while it lasts."""
        if prompt.hybrid and ablation == "no-embeddings":
            return self.model.blank_slots(self._neutral_vector())
        return contextlib.nullcontext()

    def answer(self, prompt: Prompt, decode: str) -> Answer:
        """One prompt answered with ``decode`` (call under ``self.lock``)."""
        self.check_decode(decode)
        started = time.perf_counter()
        source = "hybrid" if prompt.hybrid else "text"
        model = self.model_for(prompt)
        decode, note = self.fallback(model, decode)
        reply = DECODERS[decode].answer(model, [prompt])[0]
        notes = [note] if note else []
        if DECODERS[decode].reads_titles and not writes_titles(model):
            notes.append(UNTRAINED_TITLES)
        if reply.item is None:
            notes.append("the generated answer names none of the candidates (invalid)")
        return Answer(source, decode, reply.item, reply.text(self.titles), reply.ranked, time.perf_counter() - started,
                      "; ".join(notes))

    def _answer_batch(self, jobs: list[tuple[dict[str, Prompt], str]]) -> list[dict[str, Answer]]:
        """``(prompts by kind, decode)`` jobs with a next-item decode, answered with one pass per model over all their
        prompts (each cut after its query slot, padded into one batch). Called by the combiner under ``self.lock``."""
        started = time.perf_counter()
        groups: dict[int, tuple[LLaRA, list[tuple[int, str, Prompt]]]] = {}
        for i, (prompts, _) in enumerate(jobs):
            for kind, prompt in prompts.items():
                model = self.model_for(prompt)
                groups.setdefault(id(model), (model, []))[1].append((i, kind, prompt))
        out: list[dict[str, Answer]] = [{} for _ in jobs]
        for model, entries in groups.values():
            pure, residual = model.all_item_scores([p for _, _, p in entries])  # (B, N) each
            for row, (i, kind, prompt) in enumerate(entries):
                decode, note = self.fallback(model, jobs[i][1])
                scores = residual if DECODERS[decode].residual else pure
                assert scores is not None  # fallback() answers residual only with a model that has the gate
                ranked = rank_candidates(scores[row], prompt.candidates)
                out[i][kind] = Answer(kind, decode, ranked[0][0], self.titles[ranked[0][0]], ranked, 0.0, note)
        elapsed = time.perf_counter() - started
        for answers in out:
            for answer in answers.values():
                answer.seconds = elapsed  # the batch's time: what this request waited for its answer
        return out

    @torch.inference_mode()
    def recommend(self, history: list[int], candidates: list[int]) -> Answer:
        """The recommender alone, scoring the same candidates from the same history."""
        started = time.perf_counter()
        scores = self.recommender.score_histories([history], [candidates])[0]  # (C,) float32 on the CPU: score_histories brings them back
        ranked = sorted(zip(candidates, scores.float().tolist()), key=lambda x: -x[1])
        name = self.meta["recommender"].get("model", "recommender")
        return Answer("recommender", name, ranked[0][0], self.titles[ranked[0][0]], ranked, time.perf_counter() - started)

    def predict(self, history: list[int], candidates: list[int], decode: str = "rank", ablation: str = "none",
                seed: int = 0) -> Prediction:
        """Both prompts and the recommender on one request; ``seed`` orders the shuffle ablation."""
        started = time.perf_counter()
        history, note = self.clean_history(history)
        candidates = self.check_candidates(history, candidates)
        prompts = self.prompts(history, candidates, ablation, seed)
        self.check_decode(decode)
        if DECODERS[decode].batches and ablation != "no-embeddings":  # no model state to change: batch it
            answers, waited = self.combiner.submit((prompts, decode))
        else:
            answers = {}
            queued = time.perf_counter()
            with self.lock:
                waited = time.perf_counter() - queued  # other requests ahead of this one on the shared model
                for kind in PROMPT_KINDS:
                    if kind in prompts:
                        with self._conditions(prompts[kind], ablation):
                            answers[kind] = self.answer(prompts[kind], decode)
        answers["recommender"] = self.recommend(list(prompts["hybrid"].history), candidates)
        if names_its_pick(self.model) and not DECODERS[decode].reads_titles and "hybrid" in answers:
            # the title the hybrid model writes (greedy, unconstrained, as the paper's protocol), beside its ranking
            with self.lock, self._conditions(prompts["hybrid"], ablation):
                written = self.answer(prompts["hybrid"], "generate")
            answers["written"] = dataclasses.replace(written, source="written")
        return Prediction(tuple(history), tuple(candidates), prompts, answers, ablation, note,
                          time.perf_counter() - started, waited)

    def compare_parts(self, history: list[int], candidates: list[int]) -> PartComparison:
        """The full hybrid prompt beside every variant with parts removed (titles, item slots, user token) and the
        text-only model, each answered by the next-item head alone in one batched pass (see ``llara.serving.part_view``);
        checked as ``predict`` checks its inputs. Needs a checkpoint with a next-item head."""
        return compare_parts(self, history, candidates)

    def attribute(self, prompt: Prompt, method: str = "grad_x_input", target: int | None = None,
                  ablation: str = "none", decode: str = "rank") -> Attribution:
        """Attribution of the answer ``target`` to one prompt, under ``ablation`` as ``predict`` answers it; by
        default the candidate the model chooses with ``decode`` (what the prediction panel shows)."""
        check_method(method)
        chosen_by_model = target is None
        with self.lock, self._conditions(prompt, ablation):
            if target is None:  # an invalid generated answer names nothing: explain the likeliest title instead
                target = self.answer(prompt, decode).item
                target = self.model_for(prompt).rank(prompt)[0][0] if target is None else target
            if method == "ablation":
                result = attribute_items(self.model_for(prompt), prompt, target=target)
            elif method == "deletion":
                result = attribute_deletion(self.model_for(prompt), prompt, target=target)
            else:
                result = attribute_tokens(self.model_for(prompt), prompt, target=target, method=method)
        return dataclasses.replace(result, target_source="model") if chosen_by_model else result

    def explain(self, history: list[int], candidates: list[int], method: str = "grad_x_input", ablation: str = "none",
                seed: int = 0, decode: str = "rank", target: int | None = None,
                chosen: dict[str, int] | None = None) -> Explanation:
        """One explain request, checked as ``predict`` checks it: the attributions of both prompts.

        ``target``: the candidate to explain in both prompts (default: each prompt's own answer). ``chosen``: the
        answers a prediction of this same request already showed (``Prediction.chosen()``), so they are explained
        without ranking again; a prompt kind missing from it is answered here with ``decode``."""
        started = time.perf_counter()
        check_method(method)
        history, note = self.clean_history(history)
        candidates = self.check_candidates(history, candidates)
        if target is not None and target not in candidates:
            raise ValueError(f"{self.titles[target]!r} is not among the candidates: pick one of them to explain.")
        self.check_decode(decode)
        prompts = self.prompts(history, candidates, ablation, seed)
        out = {}
        for kind in PROMPT_KINDS:
            if kind in prompts:
                explained = target if target is not None else (chosen or {}).get(kind)
                result = self.attribute(prompts[kind], method, explained, ablation, decode)
                if target is None and explained is not None:
                    result = dataclasses.replace(result, target_source="model")
                out[kind] = result
        trim_heap()  # an attribution's float32 copies and gradients are freed: keep the process from growing
        used = {kind: self.fallback(self.model_for(p), decode)[0] for kind, p in prompts.items()}
        return Explanation(out, method, ablation, decode, note, time.perf_counter() - started, prompts, tuple(history),
                           used)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.inference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="LLaRA checkpoint folder (written by python -m llara.train)")
    parser.add_argument("--history", required=True, help="watched titles, oldest first, separated by '|'")
    parser.add_argument("--candidates", default="", help="candidate titles separated by '|' (default: 20 drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the candidate draw and of the shuffle ablation (default: 0)")
    parser.add_argument("--decode", choices=DECODES, default=None,
                        help="how each prompt is answered: next, the LLM alone (its next-item head); residual, the "
                             "recommender plus the LLM's correction; head, rank, constrained, generate (default: the "
                             "first the checkpoint offers, in the order " + ", ".join(DECODES) + ")")
    parser.add_argument("--text-checkpoint", default=None, help="a text-only checkpoint for the text-only answer "
                        "(default: the main checkpoint answers its text-only prompt too)")
    parser.add_argument("--ablation", choices=ABLATIONS, default="none", help="prompt ablation (default: none)")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="weights: auto (nf4 on a GPU or a CPU with native bf16, int8 on a CPU without), nf4, int8, "
                             "bf16 or fp32 (default: auto)")
    add_device_arg(parser)
    args = parser.parse_args(argv)

    def split_titles(text: str, what: str) -> list[str]:
        return check_title_lengths([t.strip() for t in text.split("|") if t.strip()], what)

    from ..checkpoint import CheckpointError

    try:
        history_titles, candidate_titles = split_titles(args.history, "--history"), split_titles(args.candidates, "--candidates")
        predictor = Predictor.load(args.checkpoint, precision=args.precision, text_checkpoint=args.text_checkpoint,
                                   device=resolve_device(args.device))
        catalog = predictor.catalog
        history = [resolve_item(catalog, t, f"history item {i + 1}") for i, t in enumerate(history_titles)]
        if candidate_titles:
            cands = [resolve_item(catalog, t, f"candidate {i + 1}") for i, t in enumerate(candidate_titles)]
        else:
            cands = predictor.draw_candidates(history, args.seed)
        result = predictor.predict(history, cands, args.decode or predictor.decodes[0], args.ablation, args.seed)
    except (ValueError, OSError, CheckpointError) as err:
        parser.error(str(err))
    titles = predictor.titles
    print(f"history: {' | '.join(titles[i] for i in result.history)}" + (f"  ({result.note})" if result.note else ""))
    for name, ans in result.answers.items():
        shown = ans.text if ans.valid else f"{ans.text!r} (invalid)"
        print(f"{name:>12} [{ans.decode}] {shown}  ({ans.seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
