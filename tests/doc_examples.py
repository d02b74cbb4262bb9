"""The shell examples of README.md and docs/*.md: found, told apart, and made ready to run.

A fenced block's info string says what the example does. ``bash``: it talks to a running twotier
(or runs a ``twotier`` command beside it) and tests/test_doc_examples.py runs it as written.
``sh``: it installs, starts or deploys something (pip, ``twotier serve``, Docker Compose,
kubectl) and is not run. An example that talks to the service in any other fence, or an ``sh``
block that talks to it without starting anything, is a mistake the tests report, so that a new
example cannot be skipped unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

RUN = "bash"
NOT_RUN = "sh"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.MULTILINE | re.DOTALL)
# The service as the examples address it: the embedded default's address, or `twotier ask`.
SERVICE_ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")
TALKS_TO_SERVICE = re.compile(rf"{SERVICE_ADDRESS.pattern}|\btwotier ask\b")
STARTS_SOMETHING = re.compile(
    r"\btwotier (?:serve|api|worker|beat|model-server)\b|\bdocker\b|\bkubectl\b|\bhelm\b"
    r"|\bkind create\b|\bminikube\b|\bpip install\b"
)
PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>")
# Where the examples send webhooks; the tests put a receiver of their own in its place.
WEBHOOK_RECEIVER = "https://example.com"

# Runs each example with `set -euo pipefail`, and curl failing on any 4xx or 5xx answer.
PRELUDE = """set -euo pipefail
curl() { command curl --fail-with-body --show-error --max-time 60 "$@" || return; echo; }
"""


@dataclass(frozen=True)
class Example:
    document: Path
    line: int
    fence: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def talks_to_service(self) -> bool:
        return bool(TALKS_TO_SERVICE.search(_commands(self.text)))

    @property
    def starts_something(self) -> bool:
        return bool(STARTS_SOMETHING.search(_commands(self.text)))


def examples() -> list[Example]:
    """Every fenced block of the documents, in document order."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Example(document, line, match.group(1).strip(), match.group(2)))
    return found


def examples_to_run() -> list[Example]:
    return [example for example in examples() if example.fence == RUN]


def misfenced(found: list[Example]) -> list[str]:
    """The examples whose fence does not say what they do."""
    problems = []
    for example in found:
        if example.fence == RUN and example.starts_something:
            problems.append(f"{example.where}: starts or installs something; fence it `sh`")
        elif example.fence == NOT_RUN and example.talks_to_service and not example.starts_something:
            problems.append(f"{example.where}: talks to the service; fence it `bash` to be run")
        elif example.fence not in {RUN, NOT_RUN} and example.talks_to_service:
            problems.append(f"{example.where}: fence `{example.fence}`; say `bash` or `sh`")
    return problems


def filled(example: Example, *, address: str, values: Mapping[str, str]) -> str:
    """The example's script, the service's address and the placeholders put in from the run.

    ``address`` is ``host:port`` of the server under test; ``values`` maps each ``<placeholder>``
    and the webhook receiver's address to what the run made. A placeholder the run cannot fill
    fails, naming it, rather than being sent as written."""
    script = SERVICE_ADDRESS.sub(address, example.text)
    for placeholder, value in values.items():
        script = script.replace(placeholder, value)
    unfilled = sorted(set(PLACEHOLDER.findall(_commands(script))))
    if unfilled:
        raise AssertionError(f"{example.where}: no value for {', '.join(unfilled)}")
    return PRELUDE + script


def _commands(script: str) -> str:
    """The script without its comment lines (which show answers, not commands)."""
    return "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
