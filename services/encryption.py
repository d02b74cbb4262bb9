"""Secrets at rest: webhook signing secrets are stored encrypted with Fernet (AES-128-CBC and
HMAC-SHA256, from the ``cryptography`` package), so a copy of the database or of a backup
does not let anyone sign webhooks as the service.

The keys come from ``TWOTIER_SECRETS_KEYS``, a list used as one ``MultiFernet``: the first key
encrypts, every key decrypts. A key is rotated without downtime by putting the new key first
and keeping the old one until ``reencrypt_secrets`` has rewritten every row. The embedded
default may leave the setting unset: it then generates a key once and keeps it in ``home``
(mode 0600) beside its database; every other deployment must set it (services/settings/
stops the process at start otherwise). A process's entry point names its keys once
(``use_keys``, which services.db.open_database calls); the columns use them from then on.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from services.settings import Settings

KEY_FILE_NAME = "secrets-key"


class SecretUnreadable(RuntimeError):
    """A stored secret that no key of ``TWOTIER_SECRETS_KEYS`` decrypts."""


_keys_in_use: tuple[str, ...] | None = None


class NoSecretsKeys(RuntimeError):
    """A secret was read or written before the process's entry point named its keys."""


def use_keys(settings: Settings) -> None:
    """Encrypt and decrypt with ``settings``' keys in this process from now on."""
    global _keys_in_use  # noqa: PLW0603 - one set per process, named by its entry point
    _keys_in_use = _keys(settings)


def encrypt_text(plaintext: str, settings: Settings | None = None) -> str:
    return _fernet(_keys_for(settings)).encrypt(plaintext.encode()).decode()


def decrypt_text(token: str, settings: Settings | None = None) -> str:
    try:
        return _fernet(_keys_for(settings)).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable(
            "a stored webhook secret cannot be decrypted with any key of TWOTIER_SECRETS_KEYS; "
            "keep the key it was encrypted with in the list"
        ) from exc


def reencrypt_text(token: str, settings: Settings | None = None) -> str:
    """The token encrypted again with the first key (after a key rotation)."""
    return _fernet(_keys_for(settings)).rotate(token.encode()).decode()


def generate_key() -> str:
    return Fernet.generate_key().decode()


class EncryptedText(TypeDecorator[str]):
    """A string column stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else encrypt_text(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else decrypt_text(value)


class EncryptedJSON(TypeDecorator[list[dict[str, Any]]]):
    """A list of JSON objects stored as one Fernet token; an empty list is stored as NULL.
    Assign a new list to change it: changes inside the list are not tracked."""

    impl = Text
    cache_ok = True

    def process_bind_param(
        self, value: list[dict[str, Any]] | None, dialect: Dialect
    ) -> str | None:
        return encrypt_text(json.dumps(value)) if value else None

    def process_result_value(
        self, value: str | None, dialect: Dialect
    ) -> list[dict[str, Any]] | None:
        if value is None:
            return []
        loaded: list[dict[str, Any]] = json.loads(decrypt_text(value))
        return loaded


def _keys_for(settings: Settings | None) -> tuple[str, ...]:
    """``settings``' keys when given, else those the process named."""
    if settings is not None:
        return _keys(settings)
    if _keys_in_use is None:
        raise NoSecretsKeys("no secrets keys named: the process's entry point calls use_keys")
    return _keys_in_use


def _keys(settings: Settings) -> tuple[str, ...]:
    if settings.secrets_keys:
        return tuple(key.get_secret_value() for key in settings.secrets_keys)
    return (_embedded_key(settings.home / KEY_FILE_NAME),)


@lru_cache(maxsize=4)
def _embedded_key(path: Path) -> str:
    """The embedded default's own key, generated on first use and readable by its owner only.
    Written to a private temporary file first and linked into place, so a reader never sees
    a half-written key and two first uses agree on one key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as key_file:
            key_file.write(generate_key() + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process was first: its key it is
        finally:
            temporary.unlink()
    return path.read_text().strip()


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])
