"""Webhook callbacks per the Standard Webhooks specification.

An event is written to the outbox (a message and one delivery per target URL) in the
transaction that caused it, so a crash after the query finished loses no callback. Deliveries
are attempted by the ``webhooks`` workers, retried on a schedule, and end as dead letters that
the tenant can list and replay.
"""
