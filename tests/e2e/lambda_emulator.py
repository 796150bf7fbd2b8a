"""End-to-end harness: the artifacts of ``sam build``, the local settings, and one emulator per function.

The runner itself is ``local/emulator.py`` (shared with the local stack); this module adds what the tests
need around it: finding or producing the build, reading each function's handler, timeout and memory from
the built template, checking that the local services answer, and an import probe that shows where a
built function's modules really come from.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from emulator import BuiltFunction, LambdaEmulator, read_env_file

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO_ROOT / ".aws-sam" / "build"
EVENTS_DIR = REPO_ROOT / "events"
LAYER_ID = "SharedLayer"
FUNCTION_IDS = ("OnDemandCheckFunction", "UserUpdatesFunction", "ScheduledBackfillFunction")
QUIET_SAM_ENV = {
    "SAM_CLI_TELEMETRY": "0",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PROBE_MODULE = "btc_import_probe"
PROBE_SOURCE = textwrap.dedent(
    '''
    """Reports where modules are imported from inside the emulated runtime (e2e tests only)."""
    import importlib
    import sys


    def lambda_handler(event, context):
        files = {name: importlib.import_module(name).__file__ for name in event["modules"]}
        return {"files": files, "sys_path": list(sys.path)}
    '''
)


@dataclass(frozen=True)
class FunctionConfig:
    """What the built template says about one function (Globals applied)."""

    handler: str
    timeout_seconds: int
    memory_mb: int


def missing_artifacts(build_dir: Path = BUILD_DIR) -> list[Path]:
    """The parts of a complete build that are absent (empty when the build is usable)."""
    expected = [build_dir / "template.yaml", build_dir / LAYER_ID / "python" / "bytemark_cache"]
    expected += [build_dir / function_id for function_id in FUNCTION_IDS]
    return [path for path in expected if not path.exists()]


def find_sam() -> str | None:
    """The SAM CLI: ``$SAM_CLI``, the project's ``.sam-venv``, then ``PATH``."""
    candidates = [os.environ.get("SAM_CLI", ""), str(REPO_ROOT / ".sam-venv" / "bin" / "sam"), "sam"]
    for candidate in candidates:
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def run_sam_build(sam: str) -> subprocess.CompletedProcess[str]:
    """``sam build`` in the repository with SAM's telemetry and AWS lookups switched off."""
    env = {**os.environ, **QUIET_SAM_ENV}
    return subprocess.run(
        [sam, "build"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def function_config(function_id: str, build_dir: Path = BUILD_DIR) -> FunctionConfig:
    """Handler, timeout and memory of ``function_id`` from the built template (long-form YAML)."""
    built: dict[str, Any] = yaml.safe_load((build_dir / "template.yaml").read_text())
    defaults = built.get("Globals", {}).get("Function", {})
    properties = built["Resources"][function_id]["Properties"]

    def setting(name: str, fallback: Any) -> Any:
        return properties.get(name, defaults.get(name, fallback))

    return FunctionConfig(
        handler=str(setting("Handler", "app.lambda_handler")),
        timeout_seconds=int(setting("Timeout", 3)),
        memory_mb=int(setting("MemorySize", 128)),
    )


def local_settings() -> dict[str, str]:
    """``local/defaults.env`` with exported variables winning, as everywhere in the local stack."""
    settings = read_env_file(REPO_ROOT / "local" / "defaults.env")
    settings.update({key: os.environ[key] for key in settings if key in os.environ})
    return settings


def unreachable_services(settings: Mapping[str, str]) -> list[str]:
    """The local services the functions need that do not accept a TCP connection right now."""
    targets = {
        "MongoDB (MONGODB_URI)": _address(settings.get("MONGODB_URI", ""), 27017),
        "MySQL (MYSQL_HOST/MYSQL_PORT)": (
            settings.get("MYSQL_HOST", ""),
            int(settings.get("MYSQL_PORT", "3306")),
        ),
        "moto (AWS_ENDPOINT_URL)": _address(settings.get("AWS_ENDPOINT_URL", ""), 80),
        "Bytemark simulator (BYTEMARK_API_URL)": _address(settings.get("BYTEMARK_API_URL", ""), 80),
    }
    down = []
    for name, (host, port) in targets.items():
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass
        except OSError:
            down.append(f"{name} at {host}:{port}")
    return down


def _address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url.split(",")[0])  # a MongoDB seed list: the first host is enough for a probe
    return parts.hostname or "", parts.port or default_port


class EmulatorPool:
    """One emulator per built function, started on first use and kept for the session."""

    def __init__(self, settings: Mapping[str, str], build_dir: Path = BUILD_DIR) -> None:
        self.settings = dict(settings)
        self.build_dir = build_dir
        self._running: dict[str, LambdaEmulator] = {}

    def built(self, function_id: str) -> BuiltFunction:
        """The artifact folders of ``function_id``."""
        config = function_config(function_id, self.build_dir)
        return BuiltFunction.from_build(
            function_id, self.build_dir, layer_id=LAYER_ID, handler=config.handler
        )

    def emulator(self, function_id: str) -> LambdaEmulator:
        """The running emulator of ``function_id`` (started now if needed)."""
        if function_id not in self._running:
            config = function_config(function_id, self.build_dir)
            emulator = LambdaEmulator(
                self.built(function_id),
                self.settings,
                timeout_seconds=config.timeout_seconds,
                memory_mb=config.memory_mb,
            )
            emulator.start()
            self._running[function_id] = emulator
        return self._running[function_id]

    def invoke(self, function_id: str, event: Any) -> dict[str, Any]:
        """Invoke ``function_id`` with ``event`` and return its JSON object answer."""
        return self.emulator(function_id).invoke(event)

    def probe_imports(self, function_id: str, modules: list[str], probe_dir: Path) -> dict[str, Any]:
        """Where ``modules`` are imported from in ``function_id``'s emulated runtime.

        Runs a throw-away emulator configured exactly like the function's (same code folder, layer,
        working directory and settings) whose handler is a probe placed *after* them on the path.
        """
        probe_dir.mkdir(parents=True, exist_ok=True)
        (probe_dir / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE)
        built = self.built(function_id)
        probe = BuiltFunction(
            function_id, built.code_dir, built.layer_python_dir, f"{PROBE_MODULE}.lambda_handler"
        )
        with LambdaEmulator(probe, self.settings, extra_paths=[probe_dir]) as emulator:
            return emulator.invoke({"modules": modules})

    def close(self) -> None:
        """Stop every emulator this pool started."""
        running, self._running = self._running, {}
        for emulator in running.values():
            emulator.stop()
