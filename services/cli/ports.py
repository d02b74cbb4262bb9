"""Whether a server can listen where it is asked to, told before it spends time starting."""

from __future__ import annotations

import socket

import click

# Where prometheus_client's start_http_server listens unless told otherwise.
METRICS_SERVER_HOST = "0.0.0.0"  # noqa: S104


def port_is_free_or_exit(host: str, port: int) -> None:
    """Bind the address as uvicorn will (SO_REUSEADDR), then let it go; one line if taken."""
    if problem := _cannot_listen(host, port):
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({problem}): another server (a twotier "
            f"serve already running?) uses it; stop it or pass --port"
        )


def metrics_port_is_free_or_exit(port: int | None, *, variable: str, host: str) -> None:
    """A metrics port is a setting, since Prometheus scrapes a known address: when another
    process of the host (a second worker started with the same settings) already has it, stop
    with one line that names the setting rather than a traceback from deep in the start."""
    if port is None:
        return
    if problem := _cannot_listen(host, port):
        raise click.ClickException(
            f"{variable}={port} cannot be served on {host} ({problem}): another process on "
            f"this host (another twotier worker or api?) has it; give each process of a host "
            f"its own {variable}, or unset it for no metrics server"
        )


def _cannot_listen(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None
