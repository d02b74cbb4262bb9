"""A scope's recent decisions, and whether its traffic has drifted away from the long run.

The paper's history H is every margin a scope has seen. Real traffic shifts (a new prompt
template, a model upgrade), and the all-history quantile then follows the new margins only
slowly. Each scope therefore also keeps its last N margins with each one's decision, in a ring
stored in the scope row (bounded: N float64 margins, N float32 target rates, N bits):

- ``TWOTIER_THRESHOLD_HISTORY=window`` reads the threshold from the ring, the exact p-quantile of
  the last N margins; the default ``all`` keeps the paper's rule;
- in either mode the ring measures drift: the realised escalation rate of the last N decisions
  against the mean target they aimed at, and the population stability index (PSI) of the last N
  margins against the scope's long-run sketch.

The ring is rebuilt from ``margin_history`` when it is missing or sized differently; its
decisions are then unknown, and the realised rate waits for N new ones.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from datasketches import kll_doubles_sketch

HistoryMode = Literal["all", "window"]
DriftState = Literal["ok", "drift"]

PSI_BINS = 10  # the long run's deciles
PSI_FLOOR = 1e-4  # a share of 0 in a bin counts as this much (PSI's usual smoothing)
_HEADER = struct.Struct("<4q")  # size, newest seq, decisions known, margins held


@dataclass(frozen=True)
class DriftLimits:
    """When a scope's recent traffic counts as drifted (and when it counts as settled again)."""

    rate_tolerance: float = 0.1  # |realised - target| escalation rate over the window
    psi: float = 0.25  # PSI of the window against the long run (0.25: a major shift)

    def drifted(self, reading: DriftReading) -> bool:
        return reading.rate_gap > self.rate_tolerance or reading.psi > self.psi

    def settled(self, reading: DriftReading) -> bool:
        """Back below half of both limits: the alert clears (no flapping at the edge)."""
        return reading.rate_gap <= self.rate_tolerance / 2 and reading.psi <= self.psi / 2


@dataclass(frozen=True)
class DriftReading:
    realised_escalation_rate: float
    target_escalation_rate: float  # the mean target over the same decisions
    psi: float

    @property
    def rate_gap(self) -> float:
        return abs(self.realised_escalation_rate - self.target_escalation_rate)


class RecentDecisions:
    """The last ``size`` margins of a scope; margin number ``seq`` sits in slot (seq - 1) % size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.margins = np.zeros(size, dtype=np.float64)
        self.targets = np.zeros(size, dtype=np.float32)
        self.escalated = np.zeros(size, dtype=bool)
        self.newest_seq = 0
        self.decided = 0  # the newest margins whose decisions are known, at most size
        self.held = 0  # margins held, at most size

    # -- storage -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        header = _HEADER.pack(self.size, self.newest_seq, self.decided, self.held)
        return b"".join(
            (
                header,
                self.margins.tobytes(),
                self.targets.tobytes(),
                np.packbits(self.escalated).tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, size: int) -> RecentDecisions | None:
        """The stored ring, or None if it holds another window size than ``size``."""
        stored_size, newest_seq, decided, held = _HEADER.unpack_from(data)
        if stored_size != size:
            return None
        ring = cls(size)
        offset = _HEADER.size
        ring.margins = np.frombuffer(data, np.float64, size, offset).copy()
        offset += 8 * size
        ring.targets = np.frombuffer(data, np.float32, size, offset).copy()
        offset += 4 * size
        bits = np.frombuffer(data, np.uint8, (size + 7) // 8, offset)
        ring.escalated = np.unpackbits(bits, count=size).astype(bool)
        ring.newest_seq, ring.decided, ring.held = newest_seq, decided, held
        return ring

    @classmethod
    def of_history(cls, size: int, newest: list[tuple[int, float]]) -> RecentDecisions:
        """A ring rebuilt from stored (seq, margin) pairs, with no decision known."""
        ring = cls(size)
        for seq, margin in sorted(newest)[-size:]:
            ring.add_margin(seq, margin)
        ring.decided = 0
        return ring

    # -- updates -----------------------------------------------------------------------------
    def add_margin(self, seq: int, margin: float) -> None:
        if seq != self.newest_seq + 1 and self.held:
            raise ValueError(f"margin {seq} does not follow {self.newest_seq}")
        self.margins[(seq - 1) % self.size] = margin
        self.newest_seq = seq
        self.held = min(self.held + 1, self.size)
        self.decided = min(self.decided, self.size - 1)  # the new slot's decision is not known

    def record_decision(self, *, escalated: bool, target_escalation_rate: float) -> None:
        """The decision on the newest margin."""
        slot = (self.newest_seq - 1) % self.size
        self.escalated[slot] = escalated
        self.targets[slot] = target_escalation_rate
        self.decided = min(self.decided + 1, self.size)

    # -- readings ----------------------------------------------------------------------------
    def window(self) -> npt.NDArray[np.float64]:
        """The margins held (the last min(|H|, size)), in no particular order."""
        return self.margins if self.held == self.size else self.margins[: self.held]

    def full_since(self, warmup: int) -> bool:
        """Whether the window holds ``size`` known decisions, all made after the warm-up."""
        return self.decided == self.size and self.newest_seq - self.size >= warmup

    def reading(self, sketch: kll_doubles_sketch) -> DriftReading:
        """Realised vs target escalation rate over the window, and its PSI against ``sketch``."""
        return DriftReading(
            realised_escalation_rate=float(self.escalated.mean()),
            target_escalation_rate=float(self.targets.mean()),
            psi=population_stability(self.window(), sketch),
        )


def population_stability(recent: npt.NDArray[np.float64], sketch: kll_doubles_sketch) -> float:
    """PSI = sum over the long run's deciles of (a - e) * ln(a / e), with e the long run's share
    of a bin (from the sketch's ranks, so ties are honoured) and a the recent window's share."""
    edges = np.unique(np.asarray(sketch.get_quantiles(np.linspace(0, 1, PSI_BINS + 1)[1:-1])))
    expected = np.diff(
        np.concatenate(([0.0], [sketch.get_rank(edge, True) for edge in edges], [1.0]))
    )
    counts = np.bincount(np.searchsorted(edges, recent, side="left"), minlength=len(edges) + 1)
    actual = counts / max(len(recent), 1)
    expected, actual = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))
