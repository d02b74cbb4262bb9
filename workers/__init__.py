"""Celery app and thin tasks: each parses ids and calls one service function."""
