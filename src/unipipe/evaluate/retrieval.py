"""ROI retrieval: test ROIs query the train ROIs (Acc@1/3/5 and MVAcc@5, as UNI reports)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from unipipe.errors import ConfigError
from unipipe.evaluate.protocols import (
    ProtocolOutput,
    _neighbours,
    _vote,
    center_normalize,
    register_protocol,
)

logger = logging.getLogger(__name__)

__all__ = ["RetrievalParams", "retrieval_hits", "retrieval_protocol"]


@dataclass(frozen=True, kw_only=True)
class RetrievalParams:
    """Retrieval settings (config key ``evaluate.retrieval``).

    Attributes:
        top_k: Acc@K is reported for each K (a hit if any of the K nearest train ROIs
            shares the query's label).
        vote_k: MVAcc@vote_k: the majority label of the vote_k nearest is correct; ties go
            to the class of the nearest tied neighbour. Also the protocol's prediction.
        chunk_rows: query rows per similarity block.
    """

    top_k: tuple[int, ...] = (1, 3, 5)
    vote_k: int = 5
    chunk_rows: int = 4096

    def __post_init__(self) -> None:
        if not self.top_k or min(self.top_k) < 1 or self.vote_k < 1:
            raise ConfigError(f"evaluate.retrieval.top_k / vote_k must be >= 1: {self.top_k}")
        object.__setattr__(self, "top_k", tuple(int(k) for k in self.top_k))


def retrieval_protocol(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    n_classes: int,
    params: RetrievalParams,
    seed: int,
) -> ProtocolOutput:
    """Rank train ROIs by Euclidean distance in the centred, L2-normalised frame.

    ``extra["per_sample"]`` holds per-query hits (``acc_at_<K>``, ``mvacc_at_<vote_k>``)
    from which run_evaluate reports the mean and a bootstrap interval. The labels of the
    queries are not seen here: hits are computed by run_evaluate from ``neighbour_labels``.
    """
    del seed
    tr, te = center_normalize(train_x, test_x)
    k_max = min(max((*params.top_k, params.vote_k)), len(tr))
    idx, _ = _neighbours(tr, te, k_max, params.chunk_rows)
    labels = train_y.astype(np.int64)[idx]  # (N_query, k_max), nearest first
    pred, probs = _vote(labels[:, : params.vote_k], n_classes)
    return ProtocolOutput(
        pred=pred,
        probs=probs,
        extra={"neighbour_labels": labels, "top_k": list(params.top_k), "vote_k": params.vote_k},
    )


def retrieval_hits(output: ProtocolOutput, y_query: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query 0/1 hits: ``acc_at_<K>`` for each K and ``mvacc_at_<vote_k>``."""
    labels = output.extra["neighbour_labels"]
    hits = {}
    for k in output.extra["top_k"]:
        hits[f"acc_at_{k}"] = (labels[:, :k] == y_query[:, None]).any(axis=1).astype(np.float64)
    hits[f"mvacc_at_{output.extra['vote_k']}"] = (output.pred == y_query).astype(np.float64)
    return hits


def _summary(output: ProtocolOutput, y_test: np.ndarray, n_classes: int) -> dict:
    """Per-query hits for run_evaluate (mean + bootstrap CI each)."""
    del n_classes
    return {"extra": {"top_k": output.extra["top_k"], "vote_k": output.extra["vote_k"]},
            "per_sample": retrieval_hits(output, y_test)}  # fmt: skip


register_protocol("retrieval", retrieval_protocol, RetrievalParams, _summary)
