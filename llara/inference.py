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
from dataclasses import dataclass, field

import torch

from .attribution import Attribution, attribute_items, attribute_tokens, neutral_slot_vector
from .data import MAX_HISTORY, NUM_CANDIDATES, SequenceDataset, candidates_around, pad_histories
from .metrics import match_answer
from .constants import DECODES
from .model import LLaRA, available
from .prompts import Prompt

ABLATIONS = ("none", "no-embeddings", "no-titles", "shuffle")
ATTRIBUTION_METHODS = ("grad_x_input", "ig", "ablation")
MAX_SEED = 2**32 - 1
MAX_TITLE_CHARS = 300  # longer than any catalog title (the demo's labels use the same bound)


@dataclass
class Answer:
    """What one predictor said: the chosen item, and a full ranking where the decode mode produces one."""

    source: str  # "text", "hybrid" or "recommender"
    decode: str
    item: int | None  # None: a generated answer that names no candidate (invalid)
    text: str  # the generated line, or the chosen title
    ranked: list[tuple[int, float]] = field(default_factory=list)  # (item, score) best first; empty for generate/constrained
    seconds: float = 0.0
    note: str = ""

    @property
    def valid(self) -> bool:
        return self.item is not None


@dataclass
class SlotInfo:
    """One embedding slot of a hybrid prompt, for the prompt inspector."""

    position: int
    item: int
    title: str
    part: str  # "history" or "candidate"
    norm: float  # of the projected vector; token embeddings have norm ~ ``token_norm``
    nearest: list[tuple[str, float]]  # vocabulary tokens closest by cosine


@dataclass
class Prediction:
    history: tuple[int, ...]
    candidates: tuple[int, ...]
    prompts: dict[str, Prompt]  # "text" (absent for the no-titles ablation) and "hybrid"
    answers: dict[str, Answer]  # "text", "hybrid", "recommender"
    ablation: str
    note: str = ""
    seconds: float = 0.0


class Predictor:
    """A loaded LLaRA checkpoint plus its recommender, safe to share between threads."""

    def __init__(self, model: LLaRA, recommender, dataset: SequenceDataset, meta: dict,
                 text_model: LLaRA | None = None, text_meta: dict | None = None) -> None:
        self.model, self.recommender, self.dataset, self.meta = model, recommender, dataset, meta
        # The text-only panel: a model trained on text-only prompts with the same levers and budget, when given;
        # else the main model answers its text-only prompt too.
        self.text_model, self.text_meta = text_model, text_meta
        self.catalog = dataset.catalog
        self.titles = model.builder.titles
        self.lock = threading.Lock()
        self._neutral: torch.Tensor | None = None
        with torch.no_grad():
            weight = model.llm.get_input_embeddings().weight.float()  # (V, D)
            self._vocab = torch.nn.functional.normalize(weight, dim=-1)
            self.token_norm = float(weight.norm(dim=-1).mean())

    @classmethod
    def load(cls, checkpoint: str, precision: str = "nf4", threads: int = 0, merge: bool = True,
             text_checkpoint: str | None = None) -> "Predictor":
        """``merge``: fold the LoRA update into the base weights once (cached), which roughly halves the cost of
        every forward pass on a CPU; ``False`` keeps the adapter separate (bit-for-bit what training saw).
        ``text_checkpoint``: a text-only model for the text-only panel (same dataset)."""
        from .checkpoint import resolve_path
        from .loader import load_llara
        from .recommenders import load_recommender

        if threads > 0:
            torch.set_num_threads(threads)
        model, meta, dataset = load_llara(checkpoint, precision=precision, merge=merge)
        recommender = load_recommender(resolve_path(meta["recommender"]["path"], checkpoint), n_items=dataset.n_items)
        text_model = text_meta = None
        if text_checkpoint:
            text_model, text_meta, _ = load_llara(text_checkpoint, dataset=dataset, precision=precision, merge=merge)
            if text_meta.get("config", {}).get("mode") != "text":
                raise ValueError(f"{text_checkpoint} was not trained on text-only prompts (mode "
                                 f"{text_meta.get('config', {}).get('mode')!r}): it cannot stand for the text-only model")
        return cls(model, recommender, dataset, meta, text_model, text_meta)

    @property
    def decodes(self) -> tuple[str, ...]:
        """The main (hybrid) model's decodes, best first."""
        return tuple(d for d in DECODES if available(self.model, d))

    def model_for(self, prompt: Prompt) -> LLaRA:
        return self.text_model if self.text_model is not None and not prompt.hybrid else self.model

    # ---- input checks ------------------------------------------------------------------------------------

    def clean_history(self, history: list[int]) -> tuple[list[int], str]:
        """Item ids in watch order, duplicates kept once, the last ``MAX_HISTORY``; a note says what changed."""
        if not history:
            raise ValueError("Pick at least one watched movie.")
        self.catalog.check_ids(list(history), "history item id")
        items = list(dict.fromkeys(int(i) for i in history))
        notes = []
        if len(items) < len(history):
            notes.append(f"{len(history) - len(items)} repeated pick(s) counted once")
        if len(items) > MAX_HISTORY:
            notes.append(f"only the {MAX_HISTORY} most recent of the {len(items)} picked movies are used, as in the paper")
            items = items[-MAX_HISTORY:]
        return items, "; ".join(notes)

    def check_candidates(self, history: list[int], candidates: list[int]) -> list[int]:
        cands = [int(c) for c in candidates]
        if len(cands) < 2:
            raise ValueError(f"Give at least 2 candidates to choose from (got {len(cands)}).")
        if len(cands) > NUM_CANDIDATES:
            raise ValueError(f"At most {NUM_CANDIDATES} candidates fit the prompt the model was trained on (got {len(cands)}).")
        self.catalog.check_ids(cands, "candidate item id")
        if len(set(cands)) != len(cands):
            raise ValueError("The candidates contain the same movie twice.")
        both = [self.titles[c] for c in cands if c in set(history)]
        if both:
            raise ValueError(f"{both[0]!r} is both watched and a candidate: candidates must be unseen movies.")
        return cands

    @staticmethod
    def check_seed(seed: int) -> int:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"The seed must be a whole number from 0 to {MAX_SEED:,} (got {str(seed)[:40]}).")
        return seed

    def draw_candidates(self, history: list[int], seed: int = 0, include: int | None = None) -> list[int]:
        """``NUM_CANDIDATES`` unseen items (seeded), with ``include`` (e.g. the true next movie) among them."""
        history, _ = self.clean_history(history)
        return list(candidates_around(history, self.catalog, self.check_seed(seed), include=include))

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

    @torch.no_grad()
    def slots(self, prompt: Prompt, nearest: int = 3) -> list[SlotInfo]:
        """Each slot's item, projected norm and nearest vocabulary tokens (what the LLM "reads" there)."""
        if not prompt.slot_items:
            return []
        vectors = self.model.projector(self.model.item_table[list(prompt.slot_items)]).float()  # (S, D)
        sims = torch.nn.functional.normalize(vectors, dim=-1) @ self._vocab.T  # (S, V)
        top = sims.topk(nearest, dim=-1)
        n_hist = len(prompt.history)
        out = []
        for k, (pos, item) in enumerate(zip(prompt.slot_positions, prompt.slot_items)):
            toks = [(self.model.tokenizer.decode([int(i)]).strip() or repr(self.model.tokenizer.decode([int(i)])), float(v))
                    for v, i in zip(top.values[k], top.indices[k])]
            out.append(SlotInfo(pos, item, self.titles[item], "history" if k < n_hist else "candidate",
                                float(vectors[k].norm()), toks))
        return out

    # ---- answering ---------------------------------------------------------------------------------------

    def _neutral_vector(self) -> torch.Tensor:
        if self._neutral is None:
            self._neutral = neutral_slot_vector(self.model, "mean")
        return self._neutral

    def answer(self, prompt: Prompt, decode: str) -> Answer:
        """One prompt answered with ``decode`` (call under ``self.lock``)."""
        if decode not in self.decodes:
            raise ValueError(f"Unknown decode mode {decode!r}; this model offers {', '.join(self.decodes)}.")
        started = time.perf_counter()
        source = "hybrid" if prompt.hybrid else "text"
        model, note = self.model_for(prompt), ""
        if not available(model, decode):  # e.g. residual scoring for a text-only model, which has no recommender
            fallback = next(d for d in DECODES if available(model, d))
            note, decode = f"the text-only model has no {decode} decode: answered with {fallback}", fallback
        if decode in ("rank", "head", "next", "residual"):
            if decode in ("next", "residual"):
                ranked = model.rank_items(prompt, residual=decode == "residual")
            else:
                ranked = model.rank(prompt) if decode == "rank" else model.rank_head(prompt)
            item, text = ranked[0][0], self.titles[ranked[0][0]]
        elif decode == "constrained":
            ranked, item = [], model.constrained(prompt)
            text = self.titles[item]
        else:
            ranked, text = [], model.generate([prompt])[0]
            index = match_answer(text, [self.titles[c] for c in prompt.candidates])
            item = None if index is None else prompt.candidates[index]
        if item is None:
            note = "the generated answer names none of the candidates (invalid)"
        return Answer(source, decode, item, text, ranked, time.perf_counter() - started, note)

    @torch.inference_mode()
    def recommend(self, history: list[int], candidates: list[int]) -> Answer:
        """The recommender alone, scoring the same candidates from the same history."""
        started = time.perf_counter()
        seqs, lens = pad_histories([history], self.recommender.pad_id, self.recommender.max_len)
        scores = self.recommender.score(torch.from_numpy(seqs), torch.from_numpy(lens), torch.tensor([candidates]))[0]
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
        answers: dict[str, Answer] = {}
        with self.lock:
            if "text" in prompts:
                answers["text"] = self.answer(prompts["text"], decode)
            blank = self.model.blank_slots(self._neutral_vector()) if ablation == "no-embeddings" else contextlib.nullcontext()
            with blank:
                answers["hybrid"] = self.answer(prompts["hybrid"], decode)
        answers["recommender"] = self.recommend(list(prompts["hybrid"].history), candidates)
        return Prediction(tuple(history), tuple(candidates), prompts, answers, ablation, note, time.perf_counter() - started)

    def attribute(self, prompt: Prompt, method: str = "grad_x_input", target: int | None = None,
                  blank: bool = False, decode: str = "rank") -> Attribution:
        """Attribution of the answer ``target`` to the prompt; by default the candidate the model chooses with
        ``decode`` (what the prediction panel shows). ``blank``: under the no-embeddings ablation, as ``predict``."""
        if method not in ATTRIBUTION_METHODS:
            raise ValueError(f"Unknown attribution method {method!r}; choose one of {', '.join(ATTRIBUTION_METHODS)}.")
        chosen_by_model = target is None
        with self.lock, (self.model.blank_slots(self._neutral_vector()) if blank else contextlib.nullcontext()):
            if target is None:  # an invalid generated answer names nothing: explain the likeliest title instead
                target = self.answer(prompt, decode).item
                target = self.model_for(prompt).rank(prompt)[0][0] if target is None else target
            if method == "ablation":
                result = attribute_items(self.model_for(prompt), prompt, target=target)
            else:
                result = attribute_tokens(self.model_for(prompt), prompt, target=target, method=method)
        return dataclasses.replace(result, target_source="model") if chosen_by_model else result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llara.inference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="LLaRA checkpoint folder (written by python -m llara.train)")
    parser.add_argument("--history", required=True, help="watched titles, oldest first, separated by '|'")
    parser.add_argument("--candidates", default="", help="candidate titles separated by '|' (default: 20 drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the candidate draw and of the shuffle ablation (default: 0)")
    parser.add_argument("--decode", choices=DECODES, default=None,
                        help="how each prompt is answered (default: the best the checkpoint offers, in the order "
                             + ", ".join(DECODES) + ")")
    parser.add_argument("--text-checkpoint", default=None, help="a text-only checkpoint for the text-only answer "
                        "(default: the main checkpoint answers its text-only prompt too)")
    parser.add_argument("--ablation", choices=ABLATIONS, default="none", help="prompt ablation (default: none)")
    parser.add_argument("--precision", choices=("nf4", "bf16", "fp32"), default="nf4", help="weights (default: nf4)")
    args = parser.parse_args(argv)

    def split_titles(text: str, what: str) -> list[str]:
        names = [t.strip() for t in text.split("|") if t.strip()]
        long = [t for t in names if len(t) > MAX_TITLE_CHARS]
        if long:  # no catalog title is that long: say so without echoing the whole string
            raise ValueError(f"a {what} title of {len(long[0]):,} characters is not in the catalog "
                             f"(titles are at most {MAX_TITLE_CHARS} characters)")
        return names

    from .checkpoint import CheckpointError

    try:
        history_titles, candidate_titles = split_titles(args.history, "--history"), split_titles(args.candidates, "--candidates")
        predictor = Predictor.load(args.checkpoint, precision=args.precision, text_checkpoint=args.text_checkpoint)
        find = predictor.catalog.find
        history = [find(t) for t in history_titles]
        if candidate_titles:
            cands = [find(t) for t in candidate_titles]
        else:
            cands = predictor.draw_candidates(history, args.seed)
        result = predictor.predict(history, cands, args.decode or predictor.decodes[0], args.ablation, args.seed)
    except (ValueError, KeyError, OSError, CheckpointError) as err:
        parser.error(str(err.args[0] if isinstance(err, KeyError) else err))
    titles = predictor.titles
    print(f"history: {' | '.join(titles[i] for i in result.history)}" + (f"  ({result.note})" if result.note else ""))
    for name, ans in result.answers.items():
        shown = ans.text if ans.valid else f"{ans.text!r} (invalid)"
        print(f"{name:>12} [{ans.decode}] {shown}  ({ans.seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
