"""The ``twotier`` command: the click group and ``main``; each command lives in the module of
its theme (server_roles: the server processes; admin: migrations, tenants, models; evaluate: the
evaluation; ask: the client of a running server).

A command's module is imported when that command runs (or when help lists it), not with this
package: ``python -m services.cli.healthcheck`` and every command load only what they need.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from services.llm.local_extra import LocalExtraMissing

# Each command's name -> "module:attribute" of its click command.
COMMANDS = {
    "api": "services.cli.server_roles:api",
    "ask": "services.cli.ask:ask",
    "beat": "services.cli.server_roles:beat",
    "eval": "services.cli.evaluate:evaluate",
    "eval-live": "services.cli.evaluate:evaluate_live",
    "migrate": "services.cli.admin:migrate",
    "model-server": "services.cli.server_roles:model_server",
    "models": "services.cli.admin:models",
    "serve": "services.cli.server_roles:serve",
    "tenants": "services.cli.admin:tenants",
    "worker": "services.cli.server_roles:worker",
}


class TwotierGroup(click.Group):
    """Loads each command from its module on first use, and reports a command that needs the
    `local` extra, run without it, as one line (exit 1)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = COMMANDS[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LocalExtraMissing as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=TwotierGroup)
def main() -> None:
    """twotier: a small model answers every query; unsure ones escalate to a large model."""
