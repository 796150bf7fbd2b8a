"""The installed ``bytemark-cache`` console script, run as a subprocess the way a shell script runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The console script pyproject.toml declares, installed into the venv by scripts/setup.sh.
CONSOLE_SCRIPT = Path(sys.executable).parent / "bytemark-cache"


def console(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI with exactly ``env`` plus PATH: no PYTHONPATH, the installed script must suffice."""
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
