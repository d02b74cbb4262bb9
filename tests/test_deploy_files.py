"""The deployment files are valid and wire what DESIGN.md describes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic import command

from services.migrate import alembic_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_names_every_service_with_healthy_start_order() -> None:
    services = compose()["services"]
    assert set(services) >= {
        "postgres", "redis", "migrate", "api", "worker-small", "worker-large", "tgi-small",
        "tgi-large",
    }  # fmt: skip
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker-small", "worker-large"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert "small" in " ".join(services["worker-small"]["command"])
    assert "large" in " ".join(services["worker-large"]["command"])
    environment = services["api"]["environment"]
    assert environment["TWOTIER_SMALL__BACKEND"] == environment["TWOTIER_LARGE__BACKEND"] == "tgi"
    assert environment["TWOTIER_SMALL__URL"] == "http://tgi-small:80"
    assert environment["TWOTIER_BROKER_URL"].startswith("redis://")


def test_tgi_services_are_quantised_expose_top_n_tokens_and_reserve_gpus() -> None:
    services = compose()["services"]
    small, large = services["tgi-small"], services["tgi-large"]
    assert "--quantize=bitsandbytes-nf4" in small["command"]
    for tgi in (small, large):
        assert "--max-top-n-tokens=5" in tgi["command"]
        [device] = tgi["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose")
def test_compose_file_validates_with_docker_compose() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_migrations_create_exactly_the_schema_the_models_describe() -> None:
    command.check(alembic_config())  # raises if the models differ from the migrated database
