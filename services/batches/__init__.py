"""Batches in OpenAI's Batch API shape: files (files.py), a batch's lines read and checked
(lines.py), creating, reading and cancelling batches (store.py), the feeder that sends their
requests as queries while the queues have room and finishes them (feeder.py), and their output
and error files (results.py)."""
