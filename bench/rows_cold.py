"""Cold start of each built handler, BEFORE the upgrade (Python 3.11, Powertools with the X-Ray SDK) and AFTER
(the current ``.aws-sam/build`` on Python 3.13), and the built layer's size.

Each figure is the wall time of a fresh ``python -S -c "import app"`` with only the artifact on the path and
a Lambda-like environment (``LAMBDA_TASK_ROOT`` set, tracing not disabled: the deployed functions have
``Tracing: Active``). The builds alternate within each round so both see the same noise, and each is also
given as a multiple of importing boto3 alone from its own layer on its own interpreter.

Two bytecode states, neither touching the artifacts (``PYTHONPYCACHEPREFIX`` points at a scratch tree):
- *bytecode cached*: a warm-up run compiled everything; the pure cost of importing.
- *compiled from source*: the standard library's bytecode is cached, the artifact's is not, as on Lambda:
  ``sam build`` ships no ``.pyc`` and ``/var/task`` and ``/opt`` are read-only.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.rows_common import du_bytes, megabytes, ratio, table, top_entries

FUNCTIONS = {
    "OnDemandCheckFunction": "on-demand-check",
    "UserUpdatesFunction": "user-updates",
    "ScheduledBackfillFunction": "scheduled-backfill",
}
BASELINE = "boto3"
COLD_RUNS = 7
TOP_PACKAGES = 5


def pyenv_python(version: str) -> Path | None:
    """``$(pyenv root)/versions/<version>/bin/python<major.minor>`` when installed."""
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        root = str(Path.home() / ".pyenv")
    candidate = Path(root) / "versions" / version / "bin" / f"python{version.rsplit('.', 1)[0]}"
    return candidate if candidate.exists() else None


@dataclass
class Build:
    """One ``sam build`` output and the interpreter of its runtime."""

    label: str
    path: Path
    python: Path
    prefix: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="btc-bench-pyc-")))

    def __post_init__(self) -> None:
        # The bytecode tree mirrors absolute paths: resolved, so the warm-up removes exactly the artifact's.
        self.path = self.path.resolve()

    @property
    def layer(self) -> Path:
        return self.path / "SharedLayer" / "python"

    def code_dir(self, target: str) -> Path:
        return self.layer if target == BASELINE else self.path / target

    def import_seconds(self, target: str, *, from_source: bool) -> float:
        """One fresh interpreter importing the handler (or boto3 alone): wall seconds."""
        return self._run(target, "source" if from_source else "cached", write=not from_source)

    def warm_up(self, targets: list[str]) -> None:
        """Fill both bytecode trees, then remove the artifact's part of the from-source one."""
        for target in targets:
            for tree in ("cached", "source"):
                self._run(target, tree, write=True)
        shutil.rmtree(self.prefix / "source" / self.path.resolve().relative_to("/"), ignore_errors=True)

    def _run(self, target: str, tree: str, *, write: bool) -> float:
        code = self.code_dir(target)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(self.layer) if target == BASELINE else f"{code}:{self.layer}",
            "PYTHONPYCACHEPREFIX": str(self.prefix / tree),
            "LAMBDA_TASK_ROOT": str(code),
            "AWS_LAMBDA_FUNCTION_NAME": target,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "POWERTOOLS_SERVICE_NAME": FUNCTIONS.get(target, "bench"),
            "POWERTOOLS_METRICS_NAMESPACE": "BytemarkTicketCache/bench",
        }
        if not write:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        module = BASELINE if target == BASELINE else "app"
        started = time.perf_counter()
        # -S: no site-packages, so only the artifact (and the standard library) can be imported.
        subprocess.run(
            [str(self.python), "-S", "-c", f"import {module}"],
            env=env,
            cwd=code,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started

    def cleanup(self) -> None:
        shutil.rmtree(self.prefix, ignore_errors=True)

    def describe(self) -> str:
        """``Python 3.11.7, Powertools 3.4.1, X-Ray SDK 2.15.0`` (from the layer's dist-info folders)."""
        versions = dict(
            info.name.removesuffix(".dist-info").lower().split("-", 1)
            for info in self.layer.glob("*.dist-info")
        )
        xray = versions.get("aws_xray_sdk")
        powertools = versions.get("aws_lambda_powertools", "?")
        sdk = f"X-Ray SDK {xray}" if xray else "no X-Ray SDK"
        return f"Python {self.python.parent.parent.name}, Powertools {powertools}, {sdk}"

    def layer_sizes(self) -> tuple[int, list[tuple[str, int]]]:
        """Bytes of the SharedLayer folder and its largest top-level packages."""
        entries = {item.name: du_bytes(item) for item in self.layer.iterdir() if item.name != "__pycache__"}
        return du_bytes(self.path / "SharedLayer"), top_entries(entries, TOP_PACKAGES)


def bench_cold_start(after_path: Path, before_path: Path | None) -> list[str]:
    """The cold-start tables and the layer sizes."""
    if not (after_path / "SharedLayer" / "python").exists():
        return ["### Cold starts", "", "Skipped: no `sam build` output (run `make build`)."]
    after_python = pyenv_python("3.13.0")
    builds = [Build("after", after_path, after_python or Path(sys.executable))]
    notes = []
    if before_path is not None:
        before_python = pyenv_python("3.11.7")
        if before_python is None:
            notes.append("BEFORE skipped: no Python 3.11.7 under `pyenv root`.")
        elif not (before_path / "SharedLayer" / "python").exists():
            notes.append(f"BEFORE skipped: no build at {before_path}.")
        else:
            builds.insert(0, Build("before", before_path, before_python))
    targets = [*FUNCTIONS, BASELINE]
    samples: dict[tuple[str, str, bool], list[float]] = {}
    try:
        for build in builds:
            build.warm_up(targets)
        for from_source in (False, True):
            for _ in range(COLD_RUNS):
                for target in targets:
                    for build in builds:  # alternated: both builds share each moment's noise
                        key = (build.label, target, from_source)
                        samples.setdefault(key, []).append(
                            build.import_seconds(target, from_source=from_source)
                        )
    finally:
        for build in builds:
            build.cleanup()
    medians = {key: statistics.median(values) * 1000 for key, values in samples.items()}
    labels = [build.label for build in builds]
    lines = [
        "### Cold start: each built handler, BEFORE vs AFTER the upgrade",
        "",
        *(f"- {build.label.upper()}: `{build.path}` — {build.describe()}" for build in builds),
        *(f"- {note}" for note in notes),
        "",
        "A fresh `python -S -c 'import app'` per figure, only the artifact on the path, a Lambda-like "
        f"environment; median of {COLD_RUNS} runs each, the builds alternated. `/ boto3`: the same over "
        "importing boto3 alone from that build's layer on that build's Python.",
    ]
    for from_source, title in ((True, "compiled from source (as on Lambda)"), (False, "bytecode cached")):
        header = ["handler"]
        for label in labels:
            header += [f"{label} ms", f"{label} / boto3"]
        if len(labels) == 2:
            header.append("after / before")
        rows = []
        for target in targets:
            row = [f"{target}/app.py" if target != BASELINE else "baseline: `import boto3`"]
            for label in labels:
                took, base = medians[(label, target, from_source)], medians[(label, BASELINE, from_source)]
                row += [f"{took:.0f}", ratio(took, base)]
            if len(labels) == 2:
                row.append(
                    ratio(medians[("after", target, from_source)], medians[("before", target, from_source)])
                )
            rows.append(row)
        lines += ["", f"*{title}*", "", *table(header, rows, right=range(1, len(header)))]
    lines += ["", *layer_table(builds)]
    return lines


def layer_table(builds: list[Build]) -> list[str]:
    """``du -sb`` of each SharedLayer folder (without bytecode caches) and its five largest packages."""
    sizes = {build.label: build.layer_sizes() for build in builds}
    header = ["", *(f"{build.label} ({build.python.name})" for build in builds)]
    rows = [["SharedLayer (du -sb, no `__pycache__`)", *(megabytes(sizes[b.label][0]) for b in builds)]]
    for rank in range(TOP_PACKAGES):
        row = [f"largest #{rank + 1}"]
        for build in builds:
            name, size = sizes[build.label][1][rank]
            row.append(f"{name} {megabytes(size)}")
        rows.append(row)
    if len(builds) == 2:
        rows.append(["after / before", "", ratio(sizes["after"][0], sizes["before"][0])])
    return ["*The built layer*", "", *table(header, rows)]
