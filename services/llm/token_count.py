"""Prompt token counts when a model server reports none: an estimate that rarely undercounts.

Servers report what they ran in different places (TGI: the ``x-prompt-tokens`` header of
``/generate``; OpenAI-compatible servers: ``usage.prompt_tokens``); some report nothing. The
ledger must never charge 0 tokens for a non-empty prompt, so those calls are charged this
estimate and marked ``input_tokens_estimated``.

Why this estimate and not bytes / 4: measured against the SmolLM2 tokenizer (a byte-level BPE
like GPT-2, Llama 3 and Qwen), bytes / 4 charges digit strings 0.27x, CJK 0.41x and code
0.67x of their real count. BPE pieces follow the pre-tokenizer: a run of letters is one to a
few tokens, every digit and punctuation mark is usually its own token, and characters outside
ASCII take one token per one or two UTF-8 bytes. Counting pieces that way gives, on the same
texts, 0.91x (digits) to 1.6x (Cyrillic) of the real count, 1.1-1.3x on English prose, Python
and JSON. It never exceeds the prompt's UTF-8 byte count, which the budget's worst case
reserves, so an estimated call never costs more than was reserved for it.
"""

from __future__ import annotations

import math
import re

# Letter runs, single digits, runs of 2+ whitespace, single ASCII punctuation, non-ASCII runs.
_PIECES = re.compile(r"[A-Za-z]+|[0-9]|\s{2,}|[!-/:-@\[-`{-~]|[^\x00-\x7f]+")
LETTERS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """An upper-leaning estimate of the tokens a BPE tokenizer makes of ``text`` (>= 1 if any)."""
    if not text:
        return 0
    count = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        if piece.isascii() and piece.isalpha():
            count += math.ceil(len(piece) / LETTERS_PER_TOKEN)
        elif not piece.isascii():
            count += math.ceil(len(piece.encode()) * 2 / 3)
        else:  # a digit, a punctuation mark or a run of whitespace
            count += 1
    return max(count, 1)
