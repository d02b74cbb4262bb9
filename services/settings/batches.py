"""Batches (OpenAI's Batch API): the limits on their files, and how hard the feeder lets a
batch press on the queues that interactive queries share."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BatchSettings(BaseModel):
    """The settings of batches (part of ``Settings``)."""

    batch_file_max_bytes: int = Field(
        default=100 * 2**20,
        ge=1,
        description="The largest file `POST /v1/files` accepts, in bytes (100 MiB).",
    )
    batch_max_requests: int = Field(
        default=50_000, ge=1, description="The most lines (requests) one batch file may hold."
    )
    batch_max_in_flight: int = Field(
        default=32,
        ge=1,
        description="The most batch requests being answered at once, over all batches; "
        "interactive queries keep the rest of the workers' threads and the model servers' slots.",
    )
    batch_feed_below: int = Field(
        default=4,
        ge=1,
        description="The feeder sends batch requests only while fewer messages than this wait "
        "in the small (and large) queue, so an interactive query never waits behind more.",
    )
    batch_feed_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the feeder looks at the batches unprompted (`twotier beat`); "
        "it also runs when a batch is created or cancelled and when a batch query finishes.",
    )
