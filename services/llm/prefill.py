"""Prefill for the local model's decoder: the prompts that join the running batch together run
in one forward pass, packed end to end into a single row.

On a CPU a forward pass over one short prompt costs much more than its share of the work:
every weight is read for a few dozen tokens, and each of the model's small operations has its
fixed cost. Packed, the prompts that arrive between two decoding steps share one pass; a mask
keeps each prompt to its own tokens (and to the shared prefix below), and each prompt's tokens
take the positions they would have alone, so each prompt's cache and logits are its own. Only
the logits that are used are computed: each prompt's last position (its first generated token)
and, when the caller asks for the prompt's log-probs, every position of that prompt.

Every prompt wrapped in the model's chat template starts with the same tokens (the system turn,
the user turn's opening): their keys and values are computed once (``PromptPrefix``) and each
prefill runs only the rest of its prompt, with the same log-probs as a full prefill.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch

# The most prompt tokens packed into one pass: the mask (and the attention each token pays
# over the others' columns) grows with the square of it; a longer prompt runs on its own.
MAX_PACKED_TOKENS = 512


@dataclass(frozen=True)
class PromptPrefix:
    """The tokens every prompt starts with, run once: their cache, each one's log-prob given
    those before it, and the logits that follow them."""

    ids: list[int]
    cache: Any
    logprobs: list[float]
    next_logits: torch.Tensor

    @classmethod
    def run(cls, model: Any, ids: list[int]) -> PromptPrefix:
        output = model(torch.tensor([ids]), use_cache=True)
        logits = output.logits[0]
        return cls(ids, output.cache, prompt_logprobs(ids, logits), logits[-1])

    def starts(self, input_ids: list[int]) -> bool:
        """Whether ``input_ids`` is this prefix and at least one token more."""
        return len(input_ids) > len(self.ids) and input_ids[: len(self.ids)] == self.ids


@dataclass
class Prefilled:
    """Prompts run together: their cache (one row each, left-padded to the longest, as
    services/llm/decode_batch.py keeps it), the logits after each one's last token, and each
    one's prompt log-probs (empty unless asked for)."""

    cache: Any
    lengths: list[int]
    next_logits: torch.Tensor
    prompt_logprobs: list[list[float]]
    prefix_reused: int


def packs(prompts: list[list[int]], prefix: PromptPrefix | None) -> list[list[int]]:
    """The indices of ``prompts`` in groups to prefill together, in order: each group's tokens
    (after the shared prefix) within ``MAX_PACKED_TOKENS``, or one prompt alone."""
    groups: list[list[int]] = []
    tokens = MAX_PACKED_TOKENS
    for index, ids in enumerate(prompts):
        own = len(ids) - len(prefix.ids) if prefix is not None and prefix.starts(ids) else len(ids)
        if not groups or tokens + own > MAX_PACKED_TOKENS:
            groups.append([])
            tokens = 0
        groups[-1].append(index)
        tokens += own
    return groups


def prefill(
    model: Any, prompts: list[list[int]], *, prefix: PromptPrefix | None, logprobs: list[bool]
) -> Prefilled:
    """Run ``prompts`` (none empty) in one forward pass; ``logprobs[i]``: whether prompt ``i``'s
    own log-probs are wanted (they cost the logits of all its positions)."""
    if any(not ids for ids in prompts):
        raise ValueError("an empty prompt has nothing to prefill")
    uses_prefix = [prefix is not None and prefix.starts(ids) for ids in prompts]
    used_prefix = prefix if any(uses_prefix) else None
    shared = len(used_prefix.ids) if used_prefix is not None else 0
    segments = [
        ids[shared:] if used else ids for ids, used in zip(prompts, uses_prefix, strict=True)
    ]
    starts = list(itertools.accumulate((len(s) for s in segments[:-1]), initial=0))
    keep = [
        position
        for segment, start, wanted in zip(segments, starts, logprobs, strict=True)
        for position in (
            range(start, start + len(segment)) if wanted else [start + len(segment) - 1]
        )
    ]
    packing = _packing(segments, uses_prefix, shared, model.dtype) if len(prompts) > 1 else {}
    output = model(
        torch.tensor([[token for segment in segments for token in segment]]),
        cache=copy.deepcopy(used_prefix.cache) if used_prefix is not None else None,
        use_cache=True,
        logits_to_keep=torch.tensor(keep),
        **packing,
    )
    kept = {position: row for row, position in enumerate(keep)}
    logits = output.logits[0]
    next_logits = logits[
        [kept[start + len(s) - 1] for start, s in zip(starts, segments, strict=True)]
    ]
    asked: list[list[float]] = []
    for segment, start, used, wanted in zip(segments, starts, uses_prefix, logprobs, strict=True):
        own = logits[kept[start] : kept[start] + len(segment)] if wanted else None
        asked.append(_logprobs(segment, own, used_prefix if used else None))
    if len(prompts) > 1:
        _unpack(output.cache, segments, starts, uses_prefix, shared)
    lengths = [len(ids) for ids in prompts]
    return Prefilled(output.cache, lengths, next_logits, asked, sum(uses_prefix))


def _logprobs(
    segment: list[int], logits: torch.Tensor | None, prefix: PromptPrefix | None
) -> list[float]:
    """A prompt's log-probs from its segment's ``logits`` (none: not asked for), after the
    prefix's own when the segment follows it."""
    if logits is None:
        return []
    if prefix is None:
        return prompt_logprobs(segment, logits)
    # The logits before each of the segment's tokens: the prefix's last, then the segment's.
    before = torch.cat([prefix.next_logits.unsqueeze(0), logits[:-1]])
    return prefix.logprobs + token_logprobs(before, segment)


def _packing(
    segments: list[list[int]], uses_prefix: list[bool], shared: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The mask and positions that run the packed segments as if each ran alone: a token sees
    the shared prefix (if its prompt starts with it) and its own segment's tokens up to it."""
    sizes = torch.tensor([len(s) for s in segments])
    owner = torch.repeat_interleave(torch.arange(len(segments)), sizes)
    packed = torch.arange(len(owner))
    sees = (owner.unsqueeze(1) == owner.unsqueeze(0)) & (packed.unsqueeze(1) >= packed)
    sees_prefix = torch.tensor(uses_prefix)[owner].unsqueeze(1).expand(-1, shared)
    allowed = torch.cat([sees_prefix, sees], dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    first = torch.cumsum(sizes, 0) - sizes  # each segment's first packed index
    offset = torch.tensor([shared if used else 0 for used in uses_prefix])
    positions = packed - first[owner] + offset[owner]
    return {"attention_mask": mask[None, None], "position_ids": positions.unsqueeze(0)}


def _unpack(
    cache: Any, segments: list[list[int]], starts: list[int], uses_prefix: list[bool], shared: int
) -> None:
    """Turn the packed row's cache (the prefix's columns, then every segment's) into one row
    per prompt, left-padded with zeros to the longest."""
    columns = [
        (list(range(shared)) if used else []) + list(range(shared + start, shared + start + len(s)))
        for s, start, used in zip(segments, starts, uses_prefix, strict=True)
    ]
    width = max(len(c) for c in columns)
    index = torch.tensor([[0] * (width - len(c)) + c for c in columns])
    real = torch.tensor([[False] * (width - len(c)) + [True] * len(c) for c in columns])
    real = real[:, None, :, None]
    for layer in cache.layers:
        layer.keys = _rows(layer.keys, index).where(real, 0.0)
        layer.values = _rows(layer.values, index).where(real, 0.0)


def _rows(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """From ``states`` ([1, heads, columns, dim]) the rows ``index`` ([rows, width]) picks."""
    picked = states[0].index_select(1, index.flatten())  # [heads, rows * width, dim]
    heads, _, dim = picked.shape
    return picked.view(heads, *index.shape, dim).transpose(0, 1)


def prompt_logprobs(input_ids: list[int], logits: torch.Tensor) -> list[float]:
    """Each prompt token's log-prob given the tokens before it (the first has none)."""
    if len(input_ids) < 2:
        return []
    return token_logprobs(logits[:-1], input_ids[1:])


def token_logprobs(logits: torch.Tensor, targets: list[int]) -> list[float]:
    """The log-prob of each target under its row of ``logits``."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked: list[float] = logprobs.gather(1, torch.tensor(targets).unsqueeze(1)).squeeze(1).tolist()
    return picked
