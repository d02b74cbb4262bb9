"""Whether the `local` extra (torch and the libraries that load the local model) is installed.

The base install serves the distributed roles (api, worker, beat, migrate) against TGI or
OpenAI-compatible servers and has no torch. Whatever runs the model in this process checks here
first, so that a missing extra reads as one line saying what to install, not an ImportError.
"""

from __future__ import annotations

import importlib.util

LOCAL_PACKAGES = ("torch", "transformers", "accelerate", "gguf")
INSTALL_LOCAL = "pip install 'twotier[local]' (in a checkout: pip install -e '.[local]')"


class LocalExtraMissing(RuntimeError):
    """The local model's packages are not installed; the message says what to install."""


def missing_local_packages() -> list[str]:
    """The packages of the `local` extra that cannot be imported here (located, not imported)."""
    return [name for name in LOCAL_PACKAGES if importlib.util.find_spec(name) is None]


def require_local_extra(needed_by: str) -> None:
    """Raise LocalExtraMissing naming ``needed_by`` unless the `local` extra is installed."""
    missing = missing_local_packages()
    if missing:
        raise LocalExtraMissing(
            f"{needed_by} runs the local model, which needs the `local` extra "
            f"({', '.join(missing)} not installed): {INSTALL_LOCAL}"
        )
