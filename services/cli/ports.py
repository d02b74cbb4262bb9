"""Whether a server can listen where it is asked to, told before it spends time starting."""

from __future__ import annotations

import socket

import click


def port_is_free_or_exit(host: str, port: int) -> None:
    """Bind the address as uvicorn will (SO_REUSEADDR), then let it go; one line if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({exc.strerror}): another server (a twotier "
                f"serve already running?) uses it; stop it or pass --port"
            ) from None
