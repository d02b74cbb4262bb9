"""Batches in OpenAI's Batch API shape: files (files.py), a batch's lines read and checked
(lines.py), creating, reading and cancelling batches (store.py), the feeder that sends their
requests as queries while the queues have room (feeder.py), how a batch ends (finishing.py),
and its output and error files (results.py)."""
