"""Run a function built by ``sam build`` under the AWS Lambda Runtime Interface Emulator (no Docker).

The emulator (``aws-lambda-rie``) plays the Lambda service: it starts the runtime (``python -m awslambdaric``)
on the first invocation, serves it the Runtime API and answers
``POST /2015-03-31/functions/function/invocations``. :class:`LambdaEmulator` starts one emulator per function,
with what Lambda would give that function and nothing more:

- the working directory and ``LAMBDA_TASK_ROOT`` are the built function folder (``/var/task`` in Lambda);
- ``PYTHONPATH`` is that folder plus the layer's ``python/`` folder (``/opt/python``), so ``bytemark_cache``
  and its dependencies are imported from the build artifacts, never from the repository;
- the environment is a clean one (``PATH``, locale, ``TZ``, a private ``HOME`` so no developer AWS profile
  leaks in) plus exactly the settings the caller passes.

The interpreter is the one running this module (the project virtualenv), which provides ``awslambdaric``;
the artifact's folders come first on ``sys.path``, so the layer's pinned packages win over the venv's.

Command line (the stand-in for ``sam local invoke``, which needs Docker)::

    python local/emulator.py OnDemandCheckFunction events/apigw_get_tickets.json --env-file local/defaults.env
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from local_env import local_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUILD_DIR = REPO_ROOT / ".aws-sam" / "build"
DEFAULT_LAYER_ID = "SharedLayer"
DEFAULT_HANDLER = "app.lambda_handler"
RIE_VERSION = "v0.0.0-20261030222936-bef5c4ba774d"
RIE_MODULE = "github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
_ERROR_KEYS = frozenset({"errorMessage", "errorType", "requestId", "stackTrace"})


class EmulatorError(RuntimeError):
    """The emulator could not be found, started, or reached, or answered something unusable."""


class FunctionError(EmulatorError):
    """The function raised (Lambda's unhandled-error answer) or timed out."""

    def __init__(self, error_type: str, error_message: str, stack_trace: Sequence[str] = ()) -> None:
        self.error_type = error_type
        self.error_message = error_message
        self.stack_trace = list(stack_trace)
        detail = "".join(self.stack_trace)
        super().__init__(f"{error_type}: {error_message}" + (f"\n{detail}" if detail else ""))


@dataclass(frozen=True)
class BuiltFunction:
    """One function folder of a ``sam build`` and the layer folder it runs with."""

    logical_id: str
    code_dir: Path
    layer_python_dir: Path
    handler: str = DEFAULT_HANDLER

    @classmethod
    def from_build(
        cls,
        logical_id: str,
        build_dir: Path = DEFAULT_BUILD_DIR,
        *,
        layer_id: str = DEFAULT_LAYER_ID,
        handler: str = DEFAULT_HANDLER,
    ) -> BuiltFunction:
        """Locate ``<build_dir>/<logical_id>`` and ``<build_dir>/<layer_id>/python``; raise if missing."""
        code_dir = build_dir / logical_id
        layer_python_dir = build_dir / layer_id / "python"
        missing = [str(path) for path in (code_dir, layer_python_dir) if not path.is_dir()]
        module_file = code_dir / (handler.rpartition(".")[0].replace(".", "/") + ".py")
        if not missing and not module_file.is_file():
            missing.append(str(module_file))
        if missing:
            raise EmulatorError(
                f"build artifacts missing: {', '.join(missing)} (run `sam build` in {REPO_ROOT})"
            )
        return cls(logical_id, code_dir.resolve(), layer_python_dir.resolve(), handler)


def cache_dir() -> Path:
    """Where the project keeps downloaded tools (``$BTC_CACHE_DIR``, default ``~/.cache/btc``)."""
    configured = os.environ.get("BTC_CACHE_DIR", "").strip()
    return Path(configured) if configured else Path.home() / ".cache" / "btc"


def find_rie() -> Path:
    """The ``aws-lambda-rie`` binary: ``$AWS_LAMBDA_RIE``, the project cache, then ``PATH``."""
    candidates: list[Path] = []
    configured = os.environ.get("AWS_LAMBDA_RIE", "").strip()
    if configured:
        candidates.append(Path(configured))
    candidates.append(cache_dir() / "bin" / "aws-lambda-rie")
    on_path = shutil.which("aws-lambda-rie")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmulatorError(
        "aws-lambda-rie not found (looked at "
        + ", ".join(str(path) for path in candidates)
        + f"); install it with: GOBIN={cache_dir() / 'bin'} go install {RIE_MODULE}@{RIE_VERSION}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def runtime_environment(
    function: BuiltFunction,
    settings: Mapping[str, str],
    *,
    home: Path,
    function_name: str,
    timeout_seconds: int,
    memory_mb: int,
    extra_paths: Sequence[Path] = (),
) -> dict[str, str]:
    """The complete environment of the emulator and the runtime it starts (nothing inherited)."""
    python_path = [function.code_dir, function.layer_python_dir, *extra_paths]
    region = settings.get("AWS_REGION") or settings.get("AWS_DEFAULT_REGION") or "us-east-1"
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": "UTC",  # Lambda runs in UTC; the day-pass rule must not depend on the developer's zone
        "HOME": str(home),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # keep the artifacts as sam build left them
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        # No ~/.aws of the developer: credentials and endpoints come from ``settings`` only.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        # What `sam local` sets: Powertools then skips X-Ray (there is no daemon here).
        "AWS_SAM_LOCAL": "true",
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(timeout_seconds),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        **dict(settings),
    }
    # Set last so no setting can point the runtime back at the repository's sources.
    env["LAMBDA_TASK_ROOT"] = str(function.code_dir)
    env["PYTHONPATH"] = os.pathsep.join(str(path) for path in python_path)
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONSTARTUP", None)
    return env


class LambdaEmulator:
    """One built function behind its own emulator; ``invoke(event)`` returns what the handler returned.

    The emulator runs one invocation at a time (like one Lambda execution environment); concurrent
    ``invoke`` calls are serialised. Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        function: BuiltFunction,
        settings: Mapping[str, str],
        *,
        function_name: str | None = None,
        timeout_seconds: int = 30,
        memory_mb: int = 512,
        python: str | None = None,
        rie: Path | None = None,
        host: str = "127.0.0.1",
        startup_timeout_seconds: float = 15.0,
        log_path: Path | None = None,
        extra_paths: Sequence[Path] = (),
    ) -> None:
        self.function = function
        self.function_name = function_name or function.logical_id
        self.timeout_seconds = timeout_seconds
        self.memory_mb = memory_mb
        self.host = host
        self.port = 0
        self._settings = dict(settings)
        self._python = python or sys.executable
        self._rie = rie
        self._startup_timeout = startup_timeout_seconds
        self._log_path = log_path
        self._extra_paths = tuple(extra_paths)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._home: tempfile.TemporaryDirectory[str] | None = None
        self._final_log = ""
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The invocation endpoint."""
        return f"http://{self.host}:{self.port}{INVOKE_PATH}"

    @property
    def log_path(self) -> Path | None:
        """File receiving the emulator's and the function's output (None before ``start`` and, for the
        default private log, after ``stop``)."""
        return self._log_path

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the emulator and wait until it accepts connections; raise EmulatorError if it cannot."""
        if self._process is not None:
            return
        rie = self._rie or find_rie()
        self._home = tempfile.TemporaryDirectory(prefix=f"btc-{self.function.logical_id}-home-")
        if self._log_path is None:
            self._log_path = Path(self._home.name) / "emulator.log"
        self._log_file = self._log_path.open("ab")
        env = runtime_environment(
            self.function,
            self._settings,
            home=Path(self._home.name),
            function_name=self.function_name,
            timeout_seconds=self.timeout_seconds,
            memory_mb=self.memory_mb,
            extra_paths=self._extra_paths,
        )
        self.port = free_port(self.host)
        # The Runtime API port must be private too: the emulator's default (9001) is shared by every
        # emulator on the machine, so a second one would fail to start.
        runtime_api_port = free_port(self.host)
        command = [
            str(rie),
            "--runtime-interface-emulator-address",
            f"{self.host}:{self.port}",
            "--runtime-api-address",
            f"{self.host}:{runtime_api_port}",
            "--log-level",
            "warn",
            self._python,
            "-s",
            "-m",
            "awslambdaric",
            self.function.handler,
        ]
        self._process = subprocess.Popen(
            command,
            cwd=self.function.code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the caller's terminal is the caller's to handle
        )
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise EmulatorError(
                    f"aws-lambda-rie for {self.function.logical_id} exited with {self._process.returncode}:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return
            time.sleep(0.05)  # polling interval of a readiness loop with a deadline, not synchronisation
        raise EmulatorError(
            f"aws-lambda-rie for {self.function.logical_id} did not listen on {self.host}:{self.port} "
            f"within {self._startup_timeout:.0f} s:\n" + self.log_tail()
        )

    def invoke(self, event: Any) -> dict[str, Any]:
        """Invoke with ``event``; the handler's JSON object answer, or FunctionError if it raised."""
        result = self.invoke_any(event)
        if not isinstance(result, dict):
            kind = type(result).__name__
            raise EmulatorError(f"{self.function.logical_id} returned {kind}, not a JSON object")
        return result

    def invoke_any(self, event: Any) -> Any:
        """Invoke with ``event``; whatever JSON value the handler returned (FunctionError if it raised)."""
        if self._process is None:
            raise EmulatorError("the emulator is not started")
        body = json.dumps(event).encode()
        # self.url is always http://<host>:<port>/… built here, never a caller-supplied scheme.
        request = urllib.request.Request(  # noqa: S310
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with self._lock:
            try:
                # The emulator enforces the function timeout itself; leave room for a cold start on top.
                with urllib.request.urlopen(request, timeout=self.timeout_seconds + 30) as answer:  # noqa: S310
                    status = answer.status
                    raw = answer.read()
            except urllib.error.HTTPError as exc:
                raise EmulatorError(
                    f"emulator answered HTTP {exc.code}: {exc.read()[:2000]!r}\n" + self.log_tail()
                ) from exc
            except (urllib.error.URLError, OSError) as exc:
                raise EmulatorError(f"emulator unreachable at {self.url}: {exc}\n" + self.log_tail()) from exc
        if status != 200:
            raise EmulatorError(f"emulator answered HTTP {status}: {raw[:2000]!r}")
        text = raw.decode("utf-8")
        if text.startswith("Task timed out after"):
            raise FunctionError("Timeout", text)
        try:
            result = json.loads(text)
        except ValueError as exc:
            raise EmulatorError(f"the function's answer is not JSON: {text[:2000]!r}") from exc
        if isinstance(result, dict) and "errorType" in result and set(result) <= _ERROR_KEYS:
            raise FunctionError(
                str(result.get("errorType")),
                str(result.get("errorMessage", "")),
                [str(line) for line in result.get("stackTrace") or []],
            )
        return result

    def log_text(self) -> str:
        """Everything the emulator and the function have written so far (also after ``stop``)."""
        if self._log_path is None or not self._log_path.exists():
            return self._final_log
        return self._log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log (for error messages)."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the emulator and the runtime it started; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            # The emulator puts the runtime in its own process group; remember it so it cannot outlive us.
            children = list(_child_pids(process.pid))
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            for child in children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._home is not None:
            # A log kept in the private home goes with it: keep its text readable after stop.
            if self._log_path is not None and self._log_path.is_relative_to(self._home.name):
                self._final_log = self.log_text()
                self._log_path = None
            self._home.cleanup()
            self._home = None


def _child_pids(pid: int) -> Iterator[int]:
    """Processes whose parent is ``pid`` (Linux /proc; nothing on systems without it)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may contain spaces, so split after ")".
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                yield int(entry.name)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: invoke one built function with one event file and print the answer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("function", help="logical id in template.yaml, e.g. OnDemandCheckFunction")
    parser.add_argument("event", type=Path, help="event JSON file, e.g. events/apigw_get_tickets.json")
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    parser.add_argument("--env-file", type=Path, default=REPO_ROOT / "local" / "defaults.env")
    parser.add_argument("--timeout", type=int, default=30, help="function timeout in seconds")
    args = parser.parse_args(argv)

    settings = local_settings(args.env_file)
    function = BuiltFunction.from_build(args.function, args.build_dir)
    with LambdaEmulator(function, settings, timeout_seconds=args.timeout) as emulator:
        try:
            result = emulator.invoke_any(json.loads(args.event.read_text()))
        except FunctionError as exc:
            print(str(exc), file=sys.stderr)
            print(emulator.log_tail(), file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
