"""The local stack's settings: ``local/defaults.env``, each value overridden by an exported variable.

One reader for the stack, the demo, the benchmarks, the emulator and the tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULTS_FILE = Path(__file__).resolve().parent / "defaults.env"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments and blank lines ignored), parsed, never executed."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        if not separator or not key.strip().isidentifier():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        values[key.strip()] = value.strip()
    return values


def local_settings(path: Path = DEFAULTS_FILE, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The settings of an env file (the embedded defaults unless told), exported variables winning."""
    return {key: environ.get(key, value) for key, value in read_env_file(path).items()}
