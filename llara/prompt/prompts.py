"""Text-only and hybrid prompts, built as token ids plus the positions of embedding slots.

A hybrid prompt lists each item as ``title <HistoryEmb>`` / ``title <CansEmb>``; the model replaces the input
embedding at each slot by the projected recommender embedding of the item behind it. The text-only prompt uses
``title <PH>`` so both kinds have the same layout (and almost the same token positions).

With ``answer="index"`` each candidate is listed behind a letter (``C: title <CansEmb>``) and the answer is the
letter, then the title it labels (`` C: title`` + newline): the letter is one token, so the LM head's logits at the
answer position rank every candidate in the prompt's own pass (as LlamaRec scores its index), and the title after
it is a copy from the list, which is what makes the written answer follow that ranking. ``answer="index-after"``
puts each letter right after its candidate's slot instead (``title <CansEmb> C``): the letter's own position then
sits next to the item vector it labels, so attention that finds the best candidate's slot can read the letter from
the token beside it (a copy, as induction heads do) instead of from a label several tokens before the slot. But
there the title the answer writes after its letter comes *before* that letter in the list, so it cannot be copied
as "what followed this letter". ``answer="index-both"`` writes the letter on both sides (``C: title <CansEmb> C``):
the letter after the slot is there to be picked, the one in front to have its title copied after it.
``answer="slot-first"`` lists each candidate as ``<CansEmb> C: title``: one letter, right after the slot (so its
position sees the item vector it labels, as with ``index-after``) and right before the title (so the answer's title
is "what followed this letter", as with ``index``).

The whole prompt is tokenized in one call (placeholders are special tokens, so they never merge with their
neighbours) and slots are found by token id; the count is checked against the items, so a title can never shift
an embedding onto the wrong position.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from dataclasses import dataclass

from ..constants import CANDIDATE_TOKEN, HISTORY_TOKEN, IGNORE_INDEX, PLACEHOLDER_TOKEN, PLACEHOLDER_TOKENS, USER_TOKEN
from ..data import MAX_HISTORY, Catalog

# Three phrasings per domain (the paper draws one per sample). {n} is the real number of candidates listed:
# the original templates said "10" while listing 20.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "movie": (
        "This user has watched {history} in the previous. Please predict the next movie this user will watch. "
        "Choose the answer from the following {n} movie titles: {candidates}. Answer:",
        "The movies this user watched, oldest first, are {history}. Which movie will the user watch next? "
        "Pick one of these {n} movie titles: {candidates}. Answer:",
        "Watch history: {history}. Recommend the movie this user is most likely to watch next, choosing from "
        "these {n} movie titles: {candidates}. Answer:",
    ),
    "artist": (
        "This user has listened to {history} in the previous. Please predict the next artist this user will listen "
        "to. Choose the answer from the following {n} artist names: {candidates}. Answer:",
        "The artists this user listened to, oldest first, are {history}. Which artist will the user listen to "
        "next? Pick one of these {n} artist names: {candidates}. Answer:",
        "Listening history: {history}. Recommend the artist this user is most likely to play next, choosing from "
        "these {n} artist names: {candidates}. Answer:",
    ),
    "game": (
        "This user has played {history} in the previous. Please predict the next game this user will play. "
        "Choose the answer from the following {n} game titles: {candidates}. Answer:",
        "The games this user played, oldest first, are {history}. Which game will the user play next? "
        "Pick one of these {n} game titles: {candidates}. Answer:",
        "Play history: {history}. Recommend the game this user is most likely to play next, choosing from "
        "these {n} game titles: {candidates}. Answer:",
    ),
}
SEPARATOR = ", "
# The user slot follows the history list, so with causal attention no history slot can see it (the dense
# next-item loss at history slot k must not see the items after k, which the user token summarises).
USER_SLOT = " (profile {token})"
# how the answer names the pick: the candidate's title, or its letter in the list and then the title
ANSWERS = ("title", "index", "index-after", "index-both", "slot-first")  # the indexed formats list letters; see the module docstring
INDEX_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def clean_history(items: list[int], max_items: int = MAX_HISTORY, noun: str = "items") -> tuple[list[int], str]:
    """The history a prompt lists, from what a person picked (oldest first): a repeated item counts once (its first
    pick keeps its place) and only the ``max_items`` most recent are kept, as in the paper's samples. Returns the
    items and a note saying what changed (empty when nothing did); ``noun`` names the items in it ("movies").
    One policy for the demo and every command."""
    if not items:
        raise ValueError(f"Pick at least one watched {noun.removesuffix('s')}.")
    kept = list(dict.fromkeys(int(i) for i in items))
    notes = []
    if len(kept) < len(items):
        notes.append(f"{len(items) - len(kept)} repeated pick(s) counted once")
    if len(kept) > max_items:
        notes.append(f"only the {max_items} most recent of the {len(kept)} picked {noun} are used, as in the paper")
        kept = kept[-max_items:]
    return kept, "; ".join(notes)


@dataclass(frozen=True)
class Prompt:
    """One encoded prompt.

    ``slot_positions[k]`` is the token position whose embedding becomes ``Projector(e[slot_items[k]])``; empty
    for a text-only prompt. ``target_ids`` (" title" + newline) is empty when the target is unknown (inference).
    """

    text: str
    input_ids: tuple[int, ...]
    slot_positions: tuple[int, ...]
    slot_items: tuple[int, ...]
    hybrid: bool
    history: tuple[int, ...]
    candidates: tuple[int, ...]
    template: int
    target: int | None = None
    target_ids: tuple[int, ...] = ()
    candidate_positions: tuple[int, ...] = ()  # the slot (hybrid) or <PH> (text) token after each candidate title
    history_positions: tuple[int, ...] = ()  # the slot (hybrid) or <PH> (text) token after each history title
    user_position: int | None = None  # the user slot (<UserEmb> hybrid, <PH> text), when the prompt has one
    titles: bool = True  # False: the hybrid "IDs only" ablation, items listed by their slots alone
    # part removal (modality dropout in training, part ablation in evaluation): the slots keep their place in the
    # layout but carry the model's neutral vector (``LLaRA.neutral_slot``) instead of their item / user vector
    blank_items: bool = False
    blank_user: bool = False
    # single history slots blanked (indices into ``history``): slot dropout in training, where the item is then known
    # by its title alone while the rest of the prompt keeps its slots
    blank_history: tuple[int, ...] = ()
    indexed: bool = False  # candidates listed behind letters; the answer is the letter, then the title

    def without(self, parts) -> Prompt:
        """This prompt with item slots (``"items"``) and / or the user slot (``"user"``) blanked; titles are removed by
        rebuilding the prompt (``PromptBuilder.build(..., titles=False)``)."""
        unknown = set(parts) - {"items", "user"}
        if unknown:
            raise ValueError(f"only item slots and the user slot are blanked in place, not {sorted(unknown)}")
        return dataclasses.replace(self, blank_items=self.blank_items or "items" in parts,
                                   blank_user=self.blank_user or "user" in parts)

    def without_history_slots(self, indices: Iterable[int]) -> Prompt:
        """This hybrid prompt with the slots of the history items at ``indices`` blanked (their titles stay)."""
        blank = {int(i) for i in indices}
        if not self.hybrid:
            raise ValueError("a text-only prompt has no item slots to blank")
        if blank and not 0 <= min(blank) <= max(blank) < len(self.history):
            raise ValueError(f"history slot indices must be in 0..{len(self.history) - 1}, got {sorted(blank)}")
        return dataclasses.replace(self, blank_history=tuple(sorted(blank.union(self.blank_history))))

    @property
    def query_position(self) -> int:
        """Where the next-item head reads the user: the user slot, else the last history slot. Everything up to it is
        the same whatever the candidates, so it scores any candidate set (or the whole catalog) from one pass."""
        return self.user_position if self.user_position is not None else self.history_positions[-1]

    def next_items(self) -> tuple[int, ...]:
        """What each history slot predicts under the dense loss: the next history item, and the target (or
        IGNORE_INDEX when unknown) after the last one."""
        nxt = self.target if self.target is not None else IGNORE_INDEX
        return self.history[1:] + (nxt,)

    def truncated(self) -> Prompt:
        """The prompt cut right after its query position: no candidates, no answer. Its hidden states up to the query
        equal the full prompt's (causal attention), at about a third of the tokens; what dense training reads. The
        candidates stay as data (distillation compares scores over them) but are no longer in the tokens."""
        end = self.query_position + 1
        keep = [k for k, p in enumerate(self.slot_positions) if p < end]
        return dataclasses.replace(self, input_ids=self.input_ids[:end],
                                   slot_positions=tuple(self.slot_positions[k] for k in keep),
                                   slot_items=tuple(self.slot_items[k] for k in keep), target_ids=(),
                                   candidate_positions=())

    def training_ids(self) -> tuple[list[int], list[int]]:
        """``input_ids + target_ids`` and labels with the prompt masked: loss only on the target tokens."""
        ids = list(self.input_ids) + list(self.target_ids)
        labels = [IGNORE_INDEX] * len(self.input_ids) + list(self.target_ids)
        return ids, labels


def safe_title(title: str) -> str:
    """A title as it may appear in a prompt: placeholder strings removed so text can never create a slot."""
    for token in PLACEHOLDER_TOKENS:
        title = title.replace(token, "")
    return " ".join(title.split())


class PromptBuilder:
    """Builds prompts for one catalog and tokenizer (which must already know the placeholder tokens)."""

    def __init__(self, tokenizer, catalog: Catalog, max_length: int | None = None, user_token: bool = False,
                 answer: str = "title") -> None:
        if catalog.domain not in TEMPLATES:
            raise ValueError(f"no prompt templates for domain {catalog.domain!r}; valid: {', '.join(TEMPLATES)}")
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
        ids = tokenizer.convert_tokens_to_ids(list(PLACEHOLDER_TOKENS))
        unk = getattr(tokenizer, "unk_token_id", None)
        if any(i is None or i == unk for i in ids):
            raise ValueError("the tokenizer lacks the placeholder tokens: load it with llara.model.llm.load_base_model")
        self.tokenizer, self.catalog = tokenizer, catalog
        self.templates = TEMPLATES[catalog.domain]
        self.history_id, self.candidate_id, self.placeholder_id, self.user_id = ids
        self.user_token = user_token  # prompts carry a user slot after the history
        self.titles = [safe_title(t) for t in catalog.titles]
        self.max_length = max_length
        self.terminator_id = self._terminator()
        self._answers: dict[int, list[int]] = {}
        self.answer = answer
        # the answer's first token for each letter (" A", " B", ...): what the LM head scores at the answer position
        self.index_ids: tuple[int, ...] = ()
        if self.indexed:
            labels = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in INDEX_LABELS]
            if any(len(ids) != 1 for ids in labels) or len({ids[0] for ids in labels}) != len(labels):
                raise ValueError(f"answer={answer!r} needs a tokenizer that spells each of ' A'..' Z' as one token")
            self.index_ids = tuple(ids[0] for ids in labels)
            self._colon = list(tokenizer(":", add_special_tokens=False)["input_ids"])

    @property
    def indexed(self) -> bool:
        """Whether candidates are listed with letters and the answer starts with one (every answer but ``title``)."""
        return self.answer != "title"

    def text(self, history: tuple[int, ...], candidates: tuple[int, ...], hybrid: bool, template: int = 0,
             titles: bool = True) -> str:
        """The prompt as text. ``titles=False`` (hybrid only) lists every item by its embedding slot alone: the
        "IDs only" ablation, where the behavioural tokens are the only thing that tells the items apart."""
        if not titles and not hybrid:
            raise ValueError("a text-only prompt without titles carries no items: drop titles only from a hybrid prompt")
        hist_tok = HISTORY_TOKEN if hybrid else PLACEHOLDER_TOKEN
        cand_tok = CANDIDATE_TOKEN if hybrid else PLACEHOLDER_TOKEN

        def listed(items: tuple[int, ...], token: str, labels: str = "") -> str:
            if labels and self.answer == "slot-first":  # "<slot> C: title"
                return SEPARATOR.join(f"{token} {label}: {self.titles[i]}" if titles else f"{token} {label}"
                                      for label, i in zip(labels, items))
            entries = [f"{self.titles[i]} {token}" if titles else token for i in items]
            if labels and self.answer in ("index-after", "index-both"):  # "title <slot> C"
                entries = [f"{e} {label}" for label, e in zip(labels, entries)]
            if labels and self.answer in ("index", "index-both"):  # "C: title <slot>"
                entries = [f"{label}: {e}" for label, e in zip(labels, entries)]
            return SEPARATOR.join(entries)

        listed_history = listed(history, hist_tok)
        if self.user_token:
            listed_history += USER_SLOT.format(token=USER_TOKEN if hybrid else PLACEHOLDER_TOKEN)
        labels = INDEX_LABELS if self.indexed else ""
        return self.templates[template].format(history=listed_history, candidates=listed(candidates, cand_tok, labels),
                                               n=len(candidates))

    def build(
        self,
        history: tuple[int, ...] | list[int],
        candidates: tuple[int, ...] | list[int],
        hybrid: bool,
        target: int | None = None,
        template: int | None = None,
        rng: random.Random | None = None,
        titles: bool = True,
    ) -> Prompt:
        """Encode one prompt. ``template=None`` draws a phrasing with ``rng`` (or uses the first without one);
        ``titles=False`` builds the hybrid "IDs only" ablation (see ``text``)."""
        history, candidates = tuple(int(i) for i in history), tuple(int(i) for i in candidates)
        if not history:
            raise ValueError("the history is empty: a prompt needs at least one watched item")
        if len(candidates) < 2:
            raise ValueError(f"need at least 2 candidates, got {len(candidates)}")
        if len(set(candidates)) != len(candidates):
            raise ValueError("candidates contain duplicates")
        if self.indexed and len(candidates) > len(INDEX_LABELS):
            raise ValueError(f"answer={self.answer!r} labels at most {len(INDEX_LABELS)} candidates, got {len(candidates)}")
        self.catalog.check_ids(history, "history item id")
        self.catalog.check_ids(candidates, "candidate item id")
        if target is not None and target not in candidates:
            raise ValueError(f"target {target} ({self.titles[target]!r}) is not among the candidates")
        if template is None:
            template = rng.randrange(len(self.templates)) if rng is not None else 0
        if not 0 <= template < len(self.templates):
            raise ValueError(f"template must be in 0..{len(self.templates) - 1}, got {template}")
        text = self.text(history, candidates, hybrid, template, titles=titles)
        input_ids = tuple(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        positions: tuple[int, ...] = ()
        items: tuple[int, ...] = ()
        user_pos: int | None = None
        n_user = int(self.user_token)
        if hybrid:
            hist_pos = [p for p, t in enumerate(input_ids) if t == self.history_id]
            cand_pos = [p for p, t in enumerate(input_ids) if t == self.candidate_id]
            users = [p for p, t in enumerate(input_ids) if t == self.user_id]
            # One slot per item, in order: the invariant the splice relies on.
            assert len(hist_pos) == len(history) and len(cand_pos) == len(candidates), "slot count != item count"
            if len(users) != n_user:
                raise ValueError(f"the prompt has {len(users)} user slots, expected {n_user}")
            positions, items = tuple(hist_pos + cand_pos), history + candidates
            user_pos = users[0] if users else None
        else:
            marks = [p for p, t in enumerate(input_ids) if t == self.placeholder_id]
            assert len(marks) == len(history) + n_user + len(candidates), "placeholder count != item count"
            hist_pos, cand_pos = marks[: len(history)], marks[len(history) + n_user :]
            user_pos = marks[len(history)] if n_user else None
        target_ids: tuple[int, ...] = ()
        if target is not None:
            target_ids = tuple(self._answer(target, candidates))
        if self.max_length is not None and len(input_ids) + len(target_ids) > self.max_length:
            over = len(input_ids) + len(target_ids) - self.max_length
            raise ValueError(
                f"the prompt is {len(input_ids) + len(target_ids)} tokens, {over} more than the model's context of "
                f"{self.max_length}: use fewer or shorter history items"
            )
        return Prompt(text, input_ids, positions, items, hybrid, history, candidates, template, target, target_ids,
                      candidate_positions=tuple(cand_pos), history_positions=tuple(hist_pos), user_position=user_pos,
                      titles=titles, indexed=self.indexed)

    def with_answer(self, answer: str) -> PromptBuilder:
        """This builder (same tokenizer, catalog, context and user slot) with another answer format."""
        if answer == self.answer:
            return self
        return PromptBuilder(self.tokenizer, self.catalog, self.max_length, self.user_token, answer=answer)

    def answer_for(self, prompt: Prompt, item: int) -> list[int]:
        """Token ids of the answer naming candidate ``item`` of ``prompt``: ``answer_ids(item)``, or for an indexed
        prompt its letter first (`` C: title`` + terminator)."""
        if prompt.indexed != self.indexed:
            raise ValueError("the prompt was built for another answer format than this builder's")
        return self._answer(item, prompt.candidates)

    def _answer(self, item: int, candidates: tuple[int, ...]) -> list[int]:
        if not self.indexed:
            return self.answer_ids(item)
        if item not in candidates:
            raise ValueError(f"item {item} is not among the prompt's candidates")
        return [self.index_ids[candidates.index(item)], *self._colon, *self.answer_ids(item)]

    def answer_ids(self, item: int) -> list[int]:
        """Token ids of the answer: ``" <title>"`` then one terminator token (the newline, or EOS).

        The title is tokenized with its leading space (it follows "Answer:"); the terminator is appended as a token
        of its own so training targets, ranking and constrained decoding all see the same sequence, and a title
        that is a prefix of another ("Batman" / "Batman Returns") still ends at a distinct token. Cached per item:
        ranking and constrained decoding ask for the same 20 answers on every request.
        """
        if item not in self._answers:
            ids = self.tokenizer(" " + self.titles[item], add_special_tokens=False)["input_ids"]
            self._answers[item] = list(ids) + [self.terminator_id]
        return list(self._answers[item])

    def _terminator(self) -> int:
        newline = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
        if len(newline) == 1:
            return int(newline[0])
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a single newline token nor an EOS token to end answers")
        return int(self.tokenizer.eos_token_id)


class AnswerTrie:
    """Prefix trie over candidate answers' token ids, for constrained decoding."""

    def __init__(self, answers: dict[int, list[int]]) -> None:
        seen: dict[tuple[int, ...], int] = {}
        for item, ids in answers.items():
            if tuple(ids) in seen:
                raise ValueError(f"candidates {seen[tuple(ids)]} and {item} tokenize to the same answer")
            seen[tuple(ids)] = item
        self.answers = answers  # item -> token ids, each ending with the terminator

    def consistent(self, prefix: list[int]) -> list[int]:
        """Items whose answer starts with ``prefix``."""
        n = len(prefix)
        return [item for item, ids in self.answers.items() if ids[:n] == prefix]

    def next_tokens(self, prefix: list[int]) -> list[int]:
        n = len(prefix)
        return sorted({ids[n] for item, ids in self.answers.items() if ids[:n] == prefix and len(ids) > n})
