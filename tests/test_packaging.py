"""The base install serves the distributed roles without torch; the locks pin what is installed.

pyproject.toml's base dependencies are what `twotier api`, `worker`, `beat` and `migrate` need;
the local model is the `local` extra, and a command that needs it says so in one line.
requirements/server.lock (the image) and requirements/dev.lock (CI) are pip-compile's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from services.llm import server_limits
from services.llm.local_extra import LOCAL_PACKAGES
from services.llm.server_limits import ModelServerUnfit, check_model_servers
from services.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
NOT_ON_A_SERVER = {*LOCAL_PACKAGES, "triton"}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match is not None, requirement
    return normalised(match.group(1))


def pinned(lock: str) -> dict[str, str]:
    """name -> version of every `name==version` line of a lock file."""
    text = (ROOT / "requirements" / lock).read_text()
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, flags=re.MULTILINE)
    return {normalised(name): version for name, version in found}


def test_base_dependencies_leave_the_local_model_to_its_extra() -> None:
    base = {requirement_name(r) for r in PROJECT["dependencies"]}
    assert base.isdisjoint(LOCAL_PACKAGES)
    assert {"celery", "fastapi", "prometheus-client", "psycopg", "alembic"} <= base
    assert {requirement_name(r) for r in EXTRAS["local"]} == set(LOCAL_PACKAGES)
    assert "torch==2.13.0" in EXTRAS["local"]  # the CPU build on disk; no CUDA download
    assert any(r.startswith("twotier[local,eval]") for r in EXTRAS["dev"])


def test_server_lock_pins_every_base_dependency_and_no_torch() -> None:
    lock = pinned("server.lock")
    for requirement in PROJECT["dependencies"]:
        assert requirement_name(requirement) in lock, requirement
    assert not {name for name in lock if name in NOT_ON_A_SERVER or name.startswith("nvidia-")}


def test_dev_lock_pins_every_extra_and_the_cpu_torch() -> None:
    lock = pinned("dev.lock")
    for requirement in PROJECT["dependencies"] + [r for e in EXTRAS.values() for r in e]:
        if requirement_name(requirement) != "twotier":  # the extras naming each other
            assert requirement_name(requirement) in lock, requirement
    assert lock["torch"].split("+")[0] == "2.13.0"
    assert not [name for name in lock if name == "triton" or name.startswith("nvidia-")]
    assert " @ " not in (ROOT / "requirements" / "dev.lock").read_text()  # no local path


def test_locks_say_how_to_regenerate_them() -> None:
    for lock, extra in (("server.lock", ""), ("dev.lock", "--extra=dev ")):
        header = (ROOT / "requirements" / lock).read_text().split("\n\n", 1)[0]
        assert f"#    pip-compile {extra}" in header, lock
        assert f"--output-file=requirements/{lock}" in header, lock


def test_server_entry_points_import_no_torch() -> None:
    probe = (
        "import sys\n"
        "import services.cli.server_roles, services.cli.admin, services.api.app, workers.app\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _without_the_local_extra(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """Run `twotier ARGS` as if the local extra were not installed (each of its packages set to
    None in sys.modules: not found, and not importable)."""
    probe = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({list(LOCAL_PACKAGES)!r}))\n"
        "from services.cli import main\n"
        f"main({args!r}, prog_name='twotier')\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_")}
    environment["TWOTIER_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True, text=True, check=False, cwd=ROOT, env=environment, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("args", [["serve"], ["model-server"], ["models", "pull"]])
def test_a_command_that_needs_the_local_extra_says_what_to_install(
    args: list[str], tmp_path: Path
) -> None:
    result = _without_the_local_extra(args, tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"twotier {' '.join(args)} runs the local model" in line
    assert "pip install 'twotier[local]'" in line
    assert "pip install -e '.[local]'" in line


def test_a_worker_on_a_local_tier_without_the_extra_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_limits, "missing_local_packages", lambda: ["torch", "gguf"])
    settings = Settings(small={"backend": "local"}, large={"backend": "local"})
    with pytest.raises(ModelServerUnfit, match=r"TWOTIER_SMALL__BACKEND is local.*torch, gguf"):
        check_model_servers(settings, tiers=["small"], tasks_at_once=1)
