"""The sequences the local model decodes together, and their shared KV cache.

The cache holds one row per sequence, left-padded to the longest: a sequence of ``n`` tokens
in a cache of ``L`` columns has zeros in its first ``L - n`` columns, which the attention mask
hides, and its next token takes position ``n``, as it would alone. Sequences prefilled together
(services/llm/prefill.py) join between steps (their cache padded on the left to the batch's, or
the batch's to theirs);
sequences that finish leave, and the columns that only padding still fills are cut off. With
no padding (one sequence, or all of one length) the step runs without a mask, exactly as a
sequence decoded alone.

This is what transformers' ``DynamicCache`` with plain ``DynamicLayer`` layers (full
attention, e.g. Llama, Qwen, SmolLM) supports; a model whose cache has other kinds of layer
(sliding windows, linear attention) is decoded one sequence at a time.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

Row = TypeVar("Row")


def can_batch(model: Any) -> bool:
    """Whether the model's cache is one whose rows can be padded, joined and dropped."""
    cache = DynamicCache(config=model.config)
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class DecodeBatch(Generic[Row]):
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self._lengths: list[int] = []  # each row's real tokens in the cache
        self._cache: Any = None

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, rows: list[Row], cache: Any, *, lengths: list[int]) -> None:
        """Add sequences prefilled together: ``cache`` holds one row for each of ``rows``,
        left-padded as this batch's, the ``lengths`` their real tokens."""
        if self._cache is None:
            self._cache = cache
        else:
            width = max(self._width(), *lengths)
            for layer, joining in zip(self._cache.layers, cache.layers, strict=True):
                layer.keys = torch.cat(
                    [_pad_left(layer.keys, width), _pad_left(joining.keys, width)]
                )
                layer.values = torch.cat(
                    [_pad_left(layer.values, width), _pad_left(joining.values, width)]
                )
        self.rows.extend(rows)
        self._lengths.extend(lengths)

    def step(self, model: Any, next_tokens: list[int]) -> torch.Tensor:
        """Run one forward pass over every row's next token; returns the logits, one row each."""
        width = self._width()
        lengths = torch.tensor(self._lengths)
        inputs: dict[str, Any] = {}
        if any(length != width for length in self._lengths):
            columns = torch.arange(width + 1)
            inputs["attention_mask"] = (columns >= (width - lengths).unsqueeze(1)).long()
            inputs["position_ids"] = lengths.unsqueeze(1)
        output = model(
            torch.tensor(next_tokens).unsqueeze(1), cache=self._cache, use_cache=True, **inputs
        )
        self._cache = output.cache
        self._lengths = [length + 1 for length in self._lengths]
        logits: torch.Tensor = output.logits[:, -1]
        return logits

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at the indices ``keep`` (in order); cut columns left empty."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self._lengths = [self._lengths[i] for i in keep]
        if not keep:
            self._cache = None
            return
        self._cache.batch_select_indices(torch.tensor(keep))
        unused = self._width() - max(self._lengths)
        if unused > 0:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, unused:]
                layer.values = layer.values[:, :, unused:]

    def _width(self) -> int:
        return int(self._cache.layers[0].keys.shape[-2])


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """``states`` ([batch, heads, length, dim]) with zero columns before it, ``width`` long."""
    missing = width - states.shape[-2]
    return F.pad(states, (0, 0, missing, 0)) if missing > 0 else states
