"""``pipeline-do``: run the server, manage keys, and drive a server over HTTP.

``serve`` runs the API under gunicorn and, in this process, the local job
manager (watched by its supervisor, which restarts a broken one) and the
webhook dispatcher: the store is created, an admin key is
made on first start (or ``PIPELINE_DO_API_KEY`` registered), then gunicorn
is started as a child and all run until SIGTERM or SIGINT. The client
subcommands (``create``, ``ingest``, ``monitor``, ``logs``, ...) live in
:mod:`control_api.client_cli`.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client commands start without loading the server's modules
    from beam_pipelines.catalog.store import Store
    from control_api.config import Settings

__all__ = ["main"]


def _store_for(args: argparse.Namespace) -> tuple[Store, Settings]:
    from beam_pipelines.catalog.store import Store
    from control_api import tables
    from control_api.config import load_settings

    settings = load_settings({"DATA_DIR": args.data_dir} if args.data_dir else None)
    os.makedirs(settings.data_dir, exist_ok=True)
    store = Store(settings.database_url)
    tables.create_all(store)
    return store, settings


def _serve(args: argparse.Namespace) -> int:
    from beam_pipelines.catalog.store import Store
    from beam_pipelines.runners.engines import distributed_engines
    from beam_pipelines.runners.job_watcher import JobWatcher
    from beam_pipelines.runners.local.scheduler import JobManager
    from beam_pipelines.runners.local.supervisor import ManagerSupervisor
    from control_api.auth import create_key, ensure_key, has_keys
    from control_api.webhooks.dispatcher import WebhookDispatcher
    from control_api.webhooks.outbox import Outbox

    listener = _bind(args.host, args.port)  # before anything starts: a taken port ends here
    store, settings = _store_for(args)
    if settings.api_key:
        ensure_key(store, settings.api_key, "admin")
    elif not has_keys(store):
        key = create_key(store, "admin")
        print("Created an admin API key. It is shown only this once; keep it safe:", flush=True)
        print(key, flush=True)
    store.dispose()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not _seal_secrets(settings):
        return 2
    _raise_open_file_limit()
    outbox = Outbox(Store(settings.database_url))

    def start_manager() -> JobManager:
        manager = JobManager(settings.database_url, settings.data_dir, workers=args.job_workers,
                             events=outbox)
        manager.start()
        return manager

    supervisor = ManagerSupervisor(start_manager, settings.data_dir)
    supervisor.start()
    dispatcher = WebhookDispatcher(
        Store(settings.database_url), settings.data_dir,
        allow_private=settings.webhook_allow_private,
        retry_base_seconds=settings.webhook_retry_seconds,
        ingested_interval=settings.webhook_ingested_interval)
    dispatcher.start()
    # Dataflow and Flink jobs change state by themselves: a watcher asks their engines.
    engines = distributed_engines()
    watcher = JobWatcher(Store(settings.database_url), engines, outbox) if engines else None
    if watcher is not None:
        watcher.start()

    env = dict(os.environ, PIPELINE_DO_DATA_DIR=settings.data_dir,
               PIPELINE_DO_DATABASE_URL=settings.database_url, PIPELINE_DO_RUN_JOB_MANAGER="1")
    env.pop("PIPELINE_DO_API_KEY", None)  # registered above; workers need not see it
    # gunicorn serves the socket bound above (fd://), so the address it answers on is
    # the one this process checked, with no window for another process to take it.
    command = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{listener.fileno()}",
               "--workers", str(args.workers),
               "--threads", str(args.threads),
               "--worker-class", "gthread", "--timeout", "120", "--graceful-timeout", "30",
               # gunicorn >= 25.1 opens a management socket (reload, shutdown, worker
               # count) at one per-user path shared by every server on the host.
               "--no-control-socket",
               *(["--access-logfile", "-"] if args.access_log else []),
               "control_api:create_app()"]
    server = subprocess.Popen(command, env=env, pass_fds=(listener.fileno(),))
    address = listener.getsockname()
    listener.close()
    done = threading.Event()

    def _shutdown(_signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    if _answering(address, server, done):
        print(f"pipeline.do listening on http://{args.host}:{args.port} "
              f"(data dir {settings.data_dir})", flush=True)
    while not done.is_set() and server.poll() is None:
        done.wait(0.5)
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    dispatcher.close()
    if watcher is not None:
        watcher.close()
    supervisor.close()
    return 0 if done.is_set() else (server.returncode or 1)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket for ``host:port``, or exit at once if it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as err:
        raise SystemExit(f"error: cannot listen on {host}: {err.strerror or err}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As gunicorn would: reuse a port left in TIME_WAIT, but not one in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise SystemExit(f"error: port {port} on {host} is in use") from None
        raise SystemExit(f"error: cannot listen on port {port} on {host}: "
                         f"{err.strerror or err}") from None
    return sock  # not inheritable: only gunicorn gets it (pass_fds), never a forked helper


def _answering(address: tuple[Any, ...], server: subprocess.Popen[bytes],
               done: threading.Event, timeout: float = 120.0) -> bool:
    """Wait until the API answers on the bound ``address``; False if gunicorn
    exited or a signal came first. Connections queue on the bound socket until
    a worker takes them, so this waits for the first answer, not for the bind."""
    host, port = address[0], address[1]
    target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    deadline = time.monotonic() + timeout
    while not done.is_set() and server.poll() is None and time.monotonic() < deadline:
        connection = http.client.HTTPConnection(target, port, timeout=5)
        try:
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            return True  # any status: /healthz may report the job manager unhealthy
        except (OSError, http.client.HTTPException):
            done.wait(0.2)
        finally:
            connection.close()
    if server.poll() is None and not done.is_set():
        logging.getLogger(__name__).warning("the API did not answer on port %s within %.0fs",
                                            port, timeout)
    return False


def _seal_secrets(settings: Settings) -> bool:
    """Load (or make) the secret key, seal secrets stored in plain text, and say which
    pipelines' secrets the key cannot open. False: the key itself is malformed."""
    from beam_pipelines.catalog.store import Store
    from beam_pipelines.storage.sealing import (
        SECRET_KEY_ENV,
        SecretBox,
        SecretKeyError,
        seal_stored_definitions,
        unreadable_pipelines,
    )

    log = logging.getLogger(__name__)
    try:
        box = SecretBox.for_data_dir(settings.data_dir, settings.secret_key)
    except SecretKeyError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return False
    store = Store(settings.database_url)
    try:
        sealed = seal_stored_definitions(store, box)
        if sealed:
            log.info("sealed the plain-text sink secrets of %d stored pipeline(s)", sealed)
        unreadable = unreadable_pipelines(store, box)
    finally:
        store.dispose()
    if unreadable:
        # Serve anyway: the other pipelines work, and these fail with this reason.
        log.error("%s (or the data dir's secret.key) does not open the stored sink secrets of "
                  "%s: their epochs fail until the key they were sealed with is set",
                  SECRET_KEY_ENV, ", ".join(unreadable))
    return True


# Open files a pipeline holds while events flow (its buffer's SQLite
# connections, WAL and lock file): ~5 in each API worker, ~4 in this process.
_FILES_PER_PIPELINE = 5


def _raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one, for this process and
    every child (gunicorn, epoch workers) it starts.

    Each pipeline that receives events keeps a few files open in every
    process; the common soft limit of 1,024 ran the API workers out of
    descriptors at ~200 pipelines (500s, dropped connections).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        logging.getLogger(__name__).warning("could not raise the open-file limit from %s", soft)
        return
    logging.getLogger(__name__).info("open-file limit %s (was %s): room for about %s pipelines "
                                     "receiving events", hard, soft, hard // _FILES_PER_PIPELINE)


def _keys(args: argparse.Namespace) -> int:
    from control_api.auth import create_key, revoke_key

    store, _settings = _store_for(args)
    try:
        if args.keys_command == "create":
            key = create_key(store, args.scope)
            print(f"Created a key with scope {args.scope}. It is shown only this once:")
            print(key)
            return 0
        count = revoke_key(store, args.prefix)
        print(f"revoked {count} key(s)")
        return 0 if count else 1
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline-do", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API and the local job manager")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--data-dir", default=None, help="default $PIPELINE_DO_DATA_DIR or ./data")
    # 2 x 4 acks the most events per second on 2 cores; --workers 1 --threads 8
    # peaks ~190 MB lower for 6-17% fewer events/s when a core is free
    # (benchmarks/README.md, "Before/after, 2026-12-03, perf2").
    serve.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    serve.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    serve.add_argument("--job-workers", type=int, default=None,
                       help="epoch worker processes (default: one per core)")
    serve.add_argument("--access-log", action="store_true")
    serve.set_defaults(func=_serve)

    keys = sub.add_parser("keys", help="create or revoke API keys")
    keys.add_argument("--data-dir", default=None)
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create")
    create.add_argument("--scope", choices=("admin", "ingest", "read"), default="ingest")
    create.add_argument("--data-dir", dest="data_dir", default=argparse.SUPPRESS)
    revoke = keys_sub.add_parser("revoke")
    revoke.add_argument("prefix")
    revoke.add_argument("--data-dir", dest="data_dir", default=argparse.SUPPRESS)
    keys.set_defaults(func=_keys)

    from control_api.client_cli import add_client_commands

    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
