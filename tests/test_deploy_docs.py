"""docs/deploy.md lists every setting, the Grafana dashboard queries only metrics that exist, and
the deployment files name only settings that exist."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from services import metrics
from services.settings import Settings, TierSettings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs/deploy.md"
DASHBOARD = ROOT / "deploy/grafana/twotier.json"
# Metrics of the model servers that the dashboard and the autoscaler read (TGI's names, which
# `twotier model-server` serves too).
TGI_METRICS = {"tgi_queue_size"}


def settings_variables() -> set[str]:
    """Every environment variable the Settings model reads."""
    names = set()
    for name, field in Settings.model_fields.items():
        if isinstance(field.default, TierSettings):
            names |= {f"TWOTIER_{name.upper()}__{tier_field.upper()}"
                      for tier_field in TierSettings.model_fields}  # fmt: skip
        else:
            names.add(f"TWOTIER_{name.upper()}")
    return names


def documented_variables() -> set[str]:
    """The settings table's first column, with TWOTIER_{SMALL,LARGE}__X spelled out."""
    table = DOCS.read_text().split("\n## Settings\n", 1)[1]
    names = set()
    for cell in re.findall(r"^\| `(TWOTIER_[A-Z0-9_{},]+)`", table, flags=re.MULTILINE):
        parts = re.split(r"\{([A-Z,]+)\}", cell)
        choices = [part.split(",") if i % 2 else [part] for i, part in enumerate(parts)]
        names |= {"".join(combination) for combination in itertools.product(*choices)}
    return names


def test_docs_list_every_setting_and_no_other() -> None:
    assert documented_variables() == settings_variables()


def test_deployment_files_name_only_settings_that_exist() -> None:
    known = settings_variables()
    texts = [(ROOT / "docker-compose.yml").read_text()]
    texts += [path.read_text() for path in (ROOT / "k8s").rglob("*.yaml")]
    used = {name for text in texts for name in re.findall(r"\bTWOTIER_[A-Z0-9_]+", text)}
    assert used <= known, used - known


def defined_metrics() -> set[str]:
    """Metric family names the api and the workers expose (the scrape-time ones included)."""
    names = {family.name for family in REGISTRY.collect()}
    names |= {
        family.name for family in metrics.QueueDepthCollector("redis://127.0.0.1:1").collect()
    }
    names |= {family.name for family in metrics.UnfinishedQueriesCollector().collect()}
    return {name for name in names if name.startswith("twotier_")} | TGI_METRICS


def test_dashboard_panels_query_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = defined_metrics()
    shown = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\b(?:twotier|tgi)_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            for name in names:
                family = re.sub(r"_(bucket|count|sum|total)$", "", name)
                assert family in known, f"{panel['title']}: {name}"
                shown.add(family)
    # Every metric of the api and the workers has a panel.
    assert known - {"twotier_threshold_version"} <= shown, known - shown


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "twotier"
    assert dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"]) == ("datasource", "datasource")


def test_compose_and_k8s_agree_on_the_model_server_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    base = (ROOT / "k8s/base/kustomization.yaml").read_text()
    assert compose["x-twotier"]["environment"]["TWOTIER_SMALL__URL"] in base
    assert compose["x-twotier"]["environment"]["TWOTIER_LARGE__URL"] in base


def test_the_one_host_recipe_starts_every_role_with_ports_of_their_own() -> None:
    recipe = DOCS.read_text().split("\n## Several processes on one host", 1)[1].split("\n## ", 1)[0]
    workers = re.findall(
        r"TWOTIER_WORKER_METRICS_PORT=([0-9]+) twotier worker --queues (\S+)", recipe
    )
    ports = [port for port, _ in workers]
    assert len(ports) == len(set(ports)) >= 4
    queues = [set(names.split(",")) for _, names in workers]
    assert set().union(*queues) == {"small", "large", "webhooks", "maintenance"}
    assert all("maintenance" in names for names in queues if "small" in names)
    for step in ("twotier migrate", "twotier api", "twotier beat", "twotier model-server"):
        assert step in recipe, step
