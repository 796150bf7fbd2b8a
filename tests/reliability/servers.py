"""Private FerretDB and MariaDB servers the outage suites may kill (the shared ones are never touched).

Each server runs from the same binaries as ``local/services/ferretdb.sh`` and ``mariadb.sh`` (FerretDB from
``$BTC_CACHE_DIR/bin``, ``mariadbd`` from PATH or /usr/sbin), on a free port, with its data under
``.local-data/reliability/<name>``. ``kill()`` is SIGKILL (a crash: nothing flushed), ``start()`` starts it
again on the same port and data, and ``stop()`` ends it for good. Only the processes started here are ever
signalled, by their own pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import pymongo
import pymysql
from pymongo.errors import PyMongoError
from pymysql.constants import CLIENT

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("BTC_DATA_DIR", REPO_ROOT / ".local-data")) / "reliability"
BIN_DIR = Path(os.environ.get("BTC_CACHE_DIR", Path.home() / ".cache" / "btc")) / "bin"
MIGRATIONS_DIR = REPO_ROOT / "local" / "migrations"

APP_USER = "btc_app"
APP_PASSWORD = "btc-reliability-only"
APP_DATABASE = "portal"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerError(RuntimeError):
    """A private server did not start; the message holds the end of its log."""


class PrivateServer:
    """One child process with a log file, started and signalled by pid."""

    name = "server"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.log_path = directory / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.started_at: list[float] = []
        self.killed_at: list[float] = []

    # -- what a subclass gives ---------------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """Everything before the first start (a data directory)."""

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60.0) -> float:
        """Start the server and wait until it answers; the seconds that took."""
        assert not self.running(), f"{self.name} is already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self._log = self.log_path.open("ab")
        self._log.write(f"\n===== {time.strftime('%FT%TZ', time.gmtime())} starting {self.name}\n".encode())
        self._log.flush()
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            if self.ready():
                self.started_at.append(time.monotonic())
                return time.monotonic() - started
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.name} did not answer within {timeout:.0f}s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: the server dies mid-flight, nothing flushed."""
        assert self.process is not None
        self.killed_at.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._close_log()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._close_log()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class PrivateFerretDB(PrivateServer):
    """FerretDB on SQLite files, as local/services/ferretdb.sh runs it."""

    name = "ferretdb"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        binary = shutil.which("ferretdb") or str(BIN_DIR / "ferretdb")
        return [
            binary,
            "--handler=sqlite",
            f"--sqlite-url=file:{self.directory / 'data'}/",
            f"--state-dir={self.directory / 'state'}",
            f"--listen-addr=127.0.0.1:{self.port}",
            "--debug-addr=-",
            "--telemetry=disable",
            "--log-level=warn",
        ]

    def prepare(self) -> None:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        (self.directory / "state").mkdir(parents=True, exist_ok=True)

    def ready(self) -> bool:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.uri, serverSelectionTimeoutMS=300, connectTimeoutMS=300
        )
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()


class PrivateMariaDB(PrivateServer):
    """mariadbd with its own datadir, socket and port (``--no-defaults``), as local/services/mariadb.sh
    runs it; the application user and database are made on first start."""

    name = "mariadb"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        super().__init__(directory, port)
        self.datadir = directory / "data"
        self.socket_path = directory / "mysqld.sock"
        self.run_user = self._run_user()
        self._bootstrapped = False

    def command(self) -> list[str]:
        binary = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        return [
            binary,
            "--no-defaults",
            f"--user={self.run_user}",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.directory / 'mysqld.pid'}",
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=2",
            "--skip-log-bin",
        ]

    def connect_args(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": APP_USER, "password": APP_PASSWORD}

    def prepare(self) -> None:
        if os.geteuid() == 0 and self.run_user != "root":
            shutil.chown(self.directory, self.run_user, self.run_user)
        if not (self.datadir / "mysql").is_dir():
            shutil.rmtree(self.datadir, ignore_errors=True)
            subprocess.run(
                [
                    "mariadb-install-db",
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--user={self.run_user}",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        if os.geteuid() == 0 and self.run_user != "root":
            subprocess.run(["chown", "-R", f"{self.run_user}:", str(self.directory)], check=True)
        # A crash leaves the pid file and socket behind; the process is gone, so they go too.
        for leftover in (self.directory / "mysqld.pid", self.socket_path):
            leftover.unlink(missing_ok=True)

    def ready(self) -> bool:
        if not self._bootstrapped:
            if not self.socket_path.exists():
                return False
            if self._admin_sql("SELECT 1").returncode != 0:
                return False
            self._bootstrap()
            self._bootstrapped = True
        try:
            connection = pymysql.connect(**self.connect_args(), database=APP_DATABASE, connect_timeout=1)
        except pymysql.MySQLError:
            return False
        connection.close()
        return True

    def _bootstrap(self) -> None:
        password = APP_PASSWORD.replace("'", "''")
        statements = [
            f"CREATE DATABASE IF NOT EXISTS `{APP_DATABASE}` "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            *(
                f"CREATE USER IF NOT EXISTS '{APP_USER}'@'{host}' IDENTIFIED BY '{password}'"
                for host in ("127.0.0.1", "localhost")
            ),
            *(
                f"GRANT ALL PRIVILEGES ON `{APP_DATABASE}`.* TO '{APP_USER}'@'{host}'"
                for host in ("127.0.0.1", "localhost")
            ),
        ]
        result = self._admin_sql(";\n".join(statements))
        if result.returncode != 0:
            raise ServerError(f"mariadb bootstrap failed: {result.stderr.decode(errors='replace')}")
        connection = pymysql.connect(
            **self.connect_args(), database=APP_DATABASE, autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS
        )
        try:
            with connection.cursor() as cursor:
                for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
                    cursor.execute(path.read_text(encoding="utf-8"))
                    while cursor.nextset():
                        pass
        finally:
            connection.close()

    def _admin_sql(self, sql: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                "--protocol=SOCKET",
                "--host=localhost",
                f"--socket={self.socket_path}",
                f"--user={_os_user()}",
                "--batch",
                "-e",
                sql,
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )

    @staticmethod
    def _run_user() -> str:
        if os.geteuid() != 0:
            return _os_user()
        try:
            import pwd

            pwd.getpwnam("mysql")
        except KeyError:
            return "root"
        return "mysql"


def _os_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
