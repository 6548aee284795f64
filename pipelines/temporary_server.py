"""The temporary Prefect API of a `loopline run`, stopped however the run ends.

Without `PREFECT_API_URL`, Prefect starts a local API for the flow (a uvicorn subprocess,
~240 MB) and stops it from an `atexit` hook. Python's default SIGTERM ends the process without
running exit hooks, so every run ended by a `timeout`, systemd or a cancelled CI job left
its server running for good. A run therefore:

- turns SIGTERM into `SystemExit`, so the exit hooks run (Ctrl-C already raises
  KeyboardInterrupt, which does the same);
- starts the server itself before the flow, as the same `SubprocessASGIServer` instance
  Prefect's client then uses, and records the server's pid beside its own in the state
  folder;
- stops, at its start, a recorded server whose run is gone: a SIGKILL runs no hook at all.

A new project's server starts on a database already migrated (`seed_database`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from sqlalchemy.engine import make_url

from loopline.paths import ProjectPaths

SERVER_APP = "prefect.server.api.server:create_app"  # in the server's command line


def records_folder(paths: ProjectPaths) -> Path:
    return paths.prefect_home / "temporary-servers"


def exit_on_sigterm() -> None:
    """Make SIGTERM end the process as an uncaught `SystemExit` does, exit hooks included.

    During a flow run Prefect's engine puts its own handler on top; once it has recorded the
    crash it hands the signal back to this one.
    """

    asked: list[int] = []

    def leave(signum, frame) -> None:
        if not asked:
            asked.append(signum)
            # Run first of the exit hooks (they run last-registered first): from then on a
            # SIGTERM must not cut them short (they stop the server).
            atexit.register(signal.signal, signum, signal.SIG_IGN)
            threading.Thread(target=_ask_again, args=(signum,), daemon=True).start()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


ASK_AGAIN_S = 5.0


def _ask_again(signum: int) -> None:
    """Signal this process again every `ASK_AGAIN_S` until it exits. A signal handled while
    a finalizer runs has its `SystemExit` swallowed ("Exception ignored in ..."), and the
    run went on training as if never asked to stop; once the exit hooks run, the signal is
    ignored."""
    while True:
        time.sleep(ASK_AGAIN_S)
        os.kill(os.getpid(), signum)


def start_temporary_api(paths: ProjectPaths) -> str | None:
    """Start the run's temporary Prefect API and record it; returns its URL, or None when a
    Prefect server is configured (`PREFECT_API_URL`). Prefect's own exit hook stops it."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_API_URL

    exit_on_sigterm()
    if PREFECT_API_URL.value():
        return None
    seed_database(PREFECT_API_DATABASE_CONNECTION_URL.value(), user_cache())
    record = records_folder(paths) / f"{os.getpid()}.json"
    # Registered before Prefect's hook (in `start`), so it runs after the server stopped.
    atexit.register(record.unlink, missing_ok=True)

    class RecordedServer(SubprocessASGIServer):
        """Prefect's temporary server, recorded the moment its process exists: `start`
        waits for the API to answer (seconds on a busy machine), and a run killed in
        between must not leave a server nobody knows of. Prefect keeps one instance per
        port in the class's `_instances` (shared with this subclass), so its client finds
        this one (prefect 3.x: `_run_uvicorn_command` spawns the process)."""

        def _run_uvicorn_command(self):
            process = super()._run_uvicorn_command()
            _write_record(record, psutil.Process(process.pid))
            return process

    server = RecordedServer()  # the instance Prefect's client looks up
    server.start()
    return server.api_url


def user_cache() -> Path:
    """Loopline's folder in the user's cache (`XDG_CACHE_HOME`, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loopline"


def seed_database(database_url: str, cache: Path) -> bool:
    """Start a new project's local API on a database already migrated; True when seeded.

    Prefect migrates a new SQLite file on the server's first start: the same migrations for
    every project, about 10 of a first run's 25 s to its flow run here (2 cores). The
    migrated, empty file is made once per Prefect version in `cache` and copied. Another
    database (PostgreSQL), one that exists, or a template that cannot be made: untouched,
    and Prefect migrates as before.
    """
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return False
    target = Path(url.database)
    if target.exists():
        return False
    template = _migrated_template(cache)
    if template is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.copyfile(template, partial)
    try:
        os.link(partial, target)  # only where none exists: a server may have just made one
    except FileExistsError:
        return False
    finally:
        partial.unlink()
    return True


def _migrated_template(cache: Path) -> Path | None:
    """An empty database at Prefect's newest migration (`prefect server database upgrade`),
    written under a name of its own and renamed whole, so a reader never sees it half-made."""
    import prefect

    template = cache / f"prefect-{prefect.__version__}.db"
    if template.exists():
        return template
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{template.stem}.{os.getpid()}.partial"
    environment = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{partial}",
    }
    command = [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"]
    try:
        done = subprocess.run(command, env=environment, capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        return None
    partial.replace(template)
    return template


def _write_record(record: Path, server: psutil.Process) -> None:
    owner = psutil.Process()
    found = {
        "owner": owner.pid,
        "owner_started": owner.create_time(),
        "server": server.pid,
        "server_started": server.create_time(),
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_suffix(".partial")  # never read half-written: not a *.json
    partial.write_text(json.dumps(found))
    partial.replace(record)


def stop_orphans(paths: ProjectPaths) -> list[int]:
    """Stop the temporary servers of runs that are gone; returns their pids."""
    stopped = []
    for record in sorted(records_folder(paths).glob("*.json")):
        try:
            found = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if _running(found["owner"], found["owner_started"]) is not None:
            continue  # a run in progress: its server is in use
        server = _running(found["server"], found["server_started"])
        if server is not None and _is_prefect_server(server):
            _stop(server)
            stopped.append(server.pid)
        record.unlink(missing_ok=True)
    return stopped


def _running(pid: int, started: float) -> psutil.Process | None:
    """The process `pid` if it is still the one that started at `started` (pids are reused)."""
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 0.01:
            return None
        return None if _ended(process) else process
    except psutil.Error:
        return None


def _ended(process: psutil.Process) -> bool:
    # An orphan's parent is init, which may leave it a zombie for a while: ended all the same.
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _is_prefect_server(process: psutil.Process) -> bool:
    try:
        return SERVER_APP in process.cmdline()
    except psutil.Error:
        return False


def _stop(process: psutil.Process, grace_s: float = 5.0) -> None:
    """SIGTERM (uvicorn shuts down cleanly), SIGKILL after `grace_s`."""
    try:
        process.terminate()
        deadline = time.monotonic() + grace_s
        while not _ended(process):
            if time.monotonic() > deadline:
                process.kill()
                return
            time.sleep(0.1)
    except psutil.NoSuchProcess:
        pass
