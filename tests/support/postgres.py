"""A throwaway PostgreSQL cluster (Debian's postgresql) serving on a unix socket.

Root may not run it: the cluster's directory belongs to the ``postgres`` user, and the
server runs as that user through setpriv (which leaves no parent behind).  It listens on
a socket in its own directory only, so it can be stopped and started again at the same
address, as a database that went away and came back.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.support.daemon import Daemon

AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
PORT = 5432  # the socket's name (.s.PGSQL.5432) in a directory of its own: never in use
USER = "tester"
DATABASE = "postgres"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"{name} not installed (Debian package postgresql)")
    return found[-1]


class Postgres(Daemon):
    binary = "postgres"
    package = "postgresql"
    stop_signal = signal.SIGINT  # fast shutdown: clients are cut off, as in a crash

    def __init__(self) -> None:
        # Not under pytest's tmp_path: its directories are root's alone (mode 700).
        super().__init__(Path(tempfile.mkdtemp(prefix="policy-milter-pg-")))
        self.binary = _bin("postgres")
        os.chmod(self.workdir, 0o755)
        shutil.chown(self.workdir, "postgres", "postgres")
        self.data, self.socket_dir = self.workdir / "data", self.workdir / "sock"
        made = subprocess.run([*AS_POSTGRES, _bin("initdb"), "-D", str(self.data), "-U", USER,
                               "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
                               "--no-instructions"], capture_output=True, text=True)
        if made.returncode:
            raise RuntimeError(f"initdb failed:\n{made.stdout}{made.stderr}")
        (self.socket_dir).mkdir()
        shutil.chown(self.socket_dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@/{DATABASE}?host={self.socket_dir}&port={PORT}"

    def _port(self) -> int:
        return PORT

    def _command(self, binary: str) -> list[str]:
        return [*AS_POSTGRES, binary, "-D", str(self.data), "-k", str(self.socket_dir),
                "-p", str(PORT), "-c", "listen_addresses=", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]

    def _ready(self) -> bool:
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
