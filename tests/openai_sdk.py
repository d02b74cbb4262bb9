"""The API over HTTP with some settings, and OpenAI's SDK pointed at it (the OpenAI-compatible
routes' tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import openai

from services.api.app import create_app
from tests.conftest import settings_in_env
from tests.server_thread import ServerThread
from workers.celery_dispatcher import CeleryDispatcher


@contextmanager
def api_with(settings: dict[str, str]) -> Iterator[ServerThread]:
    """The API, built while ``settings`` are in the environment; they are undone after."""
    with settings_in_env(settings):
        server = ServerThread(create_app(CeleryDispatcher())).start()
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def sdk_clients(api: ServerThread) -> Iterator[Callable[[str], openai.OpenAI]]:
    """OpenAI's client for an API key, pointed at ``api`` (every one closed after)."""
    clients: list[openai.OpenAI] = []

    def client_of(api_key: str) -> openai.OpenAI:
        clients.append(openai.OpenAI(base_url=f"{api.url}/v1", api_key=api_key, timeout=60))
        return clients[-1]

    try:
        yield client_of
    finally:
        for client in clients:
            client.close()
