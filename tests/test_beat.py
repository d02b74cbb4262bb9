"""`twotier beat` as an operator starts it on a host: its schedule file goes into TWOTIER_HOME,
not into whatever folder the command was started from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.waiting import wait_for


def test_beat_keeps_its_schedule_in_twotier_home(tmp_path: Path) -> None:
    started_in, home = tmp_path / "cwd", tmp_path / "home"
    started_in.mkdir()
    beat = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "beat"],
        cwd=started_in,
        env={**os.environ, "TWOTIER_HOME": str(home), "PYTHONPATH": str(Path.cwd())},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(
            lambda: any(home.glob("celerybeat-schedule*")),
            timeout=60,
            what="beat's schedule file in TWOTIER_HOME",
        )
    finally:
        beat.terminate()
        beat.wait(timeout=30)
    assert not any(started_in.iterdir())
