"""Print the requirements of the server image: the project's dependencies without the `local`
extra (torch and the local model's libraries), which api, worker, beat and migrate never import
when the tiers are TGI or OpenAI-compatible servers. pyproject.toml stays the one list.

    python deploy/server_requirements.py [pyproject.toml] > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def server_requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    local = {requirement_name(r) for r in project["optional-dependencies"]["local"]}
    return [r for r in project["dependencies"] if requirement_name(r) not in local]


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("pyproject.toml")
    print("\n".join(server_requirements(path)))
