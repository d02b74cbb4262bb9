"""Container health check: ``python -m services.cli.healthcheck [URL]`` exits 0 if URL
answers 2xx.

The image's HEALTHCHECK runs it against the api (the default command); a worker's check passes
its metrics server's URL. It imports nothing of the application, so it starts fast.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def healthy(url: str, timeout_s: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - our URL
            status: int = response.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError):
        return False


if __name__ == "__main__":
    sys.exit(0 if healthy(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_URL) else 1)
