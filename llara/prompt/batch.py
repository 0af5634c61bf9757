"""A batch of prompts as padded tensors: token ids, the positions of embedding slots, and what each position the
losses read should predict. Shared by the model, training, evaluation and attribution."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..constants import IGNORE_INDEX
from .prompts import Prompt


@dataclass
class Batch:
    """Padded tensors for a list of prompts. Slots are given as flat ``(row, column, item)`` triples."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T), counted over real tokens only, so left padding does not shift them
    slot_rows: torch.Tensor  # (S,)
    slot_cols: torch.Tensor  # (S,)
    slot_items: torch.Tensor  # (S,)
    labels: torch.Tensor | None = None  # (B, T), IGNORE_INDEX on prompt and padding
    cand_cols: torch.Tensor | None = None  # (B, C) position of the token after each candidate title
    cand_targets: torch.Tensor | None = None  # (B,) index of the target among the candidates (training)
    # next-item scoring (llara.model.next_item): where the head reads, and what each read position should predict
    next_rows: torch.Tensor | None = None  # (H,) history slots, then the user slot where there is one
    next_cols: torch.Tensor | None = None  # (H,)
    next_items: torch.Tensor | None = None  # (H,) the item that followed, IGNORE_INDEX where unknown
    query_cols: torch.Tensor | None = None  # (B,) each prompt's query position (user slot, else last history slot)
    targets: torch.Tensor | None = None  # (B,) target item ids, IGNORE_INDEX where unknown
    candidates: torch.Tensor | None = None  # (B, C) candidate item ids, when every prompt lists the same number
    histories: tuple[tuple[int, ...], ...] = ()  # (B,) for the recommender (user token, residual, distillation)
    user_rows: torch.Tensor | None = None  # (U,) prompts with a hybrid user slot
    user_cols: torch.Tensor | None = None  # (U,)
    slot_blank: torch.Tensor | None = None  # (S,) bool: the slot carries the neutral vector (a removed part)
    user_blank: torch.Tensor | None = None  # (U,) bool


def collate(prompts: list[Prompt], pad_id: int, with_targets: bool = False, padding_side: str = "left",
            device: torch.device | str | None = None) -> Batch:
    """Pad prompts (with their target tokens when training) into one batch, every tensor created on ``device``
    (the model's; default CPU), so nothing downstream has to move it."""
    if not prompts:
        raise ValueError("no prompts to collate")
    seqs, labels = [], []
    for p in prompts:
        ids, lab = p.training_ids() if with_targets else (list(p.input_ids), [IGNORE_INDEX] * len(p.input_ids))
        seqs.append(ids)
        labels.append(lab)
    width = max(len(s) for s in seqs)
    # padded as Python lists first: one tensor per field, created once on the device (no per-row copies)
    offsets = [width - len(s) if padding_side == "left" else 0 for s in seqs]
    ids_rows, lab_rows, mask_rows = [], [], []
    rows, cols, items, blank = [], [], [], []
    for b, (s, lab, p, o) in enumerate(zip(seqs, labels, prompts, offsets)):
        after = width - o - len(s)
        ids_rows.append([pad_id] * o + list(s) + [pad_id] * after)
        lab_rows.append([IGNORE_INDEX] * o + list(lab) + [IGNORE_INDEX] * after)
        mask_rows.append([0] * o + [1] * len(s) + [0] * after)
        rows += [b] * len(p.slot_positions)
        cols += [o + c for c in p.slot_positions]
        items += list(p.slot_items)
        # hybrid slots list the history first (see PromptBuilder.build), so slot k < len(history) is history item k
        blank += [p.blank_items or k in p.blank_history for k in range(len(p.slot_positions))]
    as_long = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    mask = as_long(mask_rows)  # (B, T)
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    cand_cols = cand_targets = None
    if len({len(p.candidate_positions) for p in prompts}) == 1 and prompts[0].candidate_positions:
        cand_cols = as_long([[o + c for c in p.candidate_positions] for o, p in zip(offsets, prompts)])
        if with_targets and all(p.target is not None for p in prompts):
            cand_targets = as_long([p.candidates.index(p.target) for p in prompts])
    next_rows, next_cols, next_items, user_rows, user_cols, user_blank = [], [], [], [], [], []
    for b, (o, p) in enumerate(zip(offsets, prompts)):
        reads = list(p.history_positions) + ([p.user_position] if p.user_position is not None else [])
        nxt = list(p.next_items()) + ([p.next_items()[-1]] if p.user_position is not None else [])
        next_rows += [b] * len(reads)
        next_cols += [o + c for c in reads]
        next_items += nxt if with_targets else [IGNORE_INDEX] * len(reads)
        if p.hybrid and p.user_position is not None:
            user_rows.append(b)
            user_cols.append(o + p.user_position)
            user_blank.append(p.blank_user)
    has_history = all(p.history_positions for p in prompts)
    targets = as_long([p.target if with_targets and p.target is not None else IGNORE_INDEX for p in prompts])
    same_c = len({len(p.candidates) for p in prompts}) == 1 and len(prompts[0].candidates) > 0
    return Batch(as_long(ids_rows), mask, position_ids, as_long(rows), as_long(cols), as_long(items),
                 as_long(lab_rows) if with_targets else None, cand_cols, cand_targets, as_long(next_rows),
                 as_long(next_cols), as_long(next_items),
                 as_long([o + p.query_position for o, p in zip(offsets, prompts)]) if has_history else None, targets,
                 as_long([list(p.candidates) for p in prompts]) if same_c else None,
                 tuple(p.history for p in prompts), as_long(user_rows), as_long(user_cols),
                 torch.tensor(blank, dtype=torch.bool, device=device) if any(blank) else None,
                 torch.tensor(user_blank, dtype=torch.bool, device=device) if any(user_blank) else None)
