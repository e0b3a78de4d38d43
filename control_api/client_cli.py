"""The client half of ``pipeline-do``: one subcommand per operation, over HTTP.

    pipeline-do create -f definition.json
    pipeline-do start clicks
    pipeline-do ingest clicks events.ndjson
    pipeline-do monitor clicks
    pipeline-do logs clicks --follow
    pipeline-do stop clicks

Each talks to a running server: ``--url`` / ``PIPELINE_DO_URL`` (default
http://127.0.0.1:8080) and ``--api-key`` / ``PIPELINE_DO_API_KEY``. Replies
print as JSON on stdout; errors print ``error: CODE: message`` on stderr and
exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["add_client_commands"]


def _client(args: argparse.Namespace) -> Any:
    from control_api.client import Client

    return Client(args.url, args.api_key)


def _print(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _create(args: argparse.Namespace) -> Any:
    with open(args.file, encoding="utf-8") if args.file != "-" else sys.stdin as f:
        definition = json.load(f)
    if args.name:
        definition["name"] = args.name
    return _client(args).create(definition)


def _ingest(args: argparse.Namespace) -> Any:
    """Send an NDJSON file in chunks over the fast path, with a progress bar."""
    from tqdm import tqdm

    from control_api.client import iter_ndjson_chunks

    client = _client(args)
    path = args.events
    total = os.path.getsize(path) if path != "-" else None
    run = uuid.uuid4().hex[:12]
    accepted = 0
    rejected: list[dict[str, Any]] = []
    first_event = 0
    with open(path, "rb") if path != "-" else sys.stdin.buffer as stream, \
            tqdm(total=total, unit="B", unit_scale=True, desc=f"ingest {args.pipeline}",
                 disable=args.quiet, file=sys.stderr) as bar:
        for number, (body, events, consumed) in enumerate(
                iter_ndjson_chunks(stream, max_events=args.batch_events,
                                   max_bytes=args.batch_bytes)):
            # A retried chunk carries the same key: the server never ingests it twice.
            result = client.ingest_ndjson(args.pipeline, body,
                                          idempotency_key=f"cli-{run}-{number}")
            accepted += result["accepted"]
            rejected.extend({**r, "index": r["index"] + first_event} for r in result["rejected"])
            first_event += events
            bar.update(consumed)
            bar.set_postfix(accepted=accepted, rejected=len(rejected))
    return {"accepted": accepted, "rejected": rejected}


def _monitor(args: argparse.Namespace) -> Any:
    client = _client(args)
    if not args.watch:
        return client.monitor(args.pipeline, args.window)
    while True:
        _print(client.monitor(args.pipeline, args.window))
        time.sleep(args.interval)


def _logs(args: argparse.Namespace) -> Any:
    client = _client(args)
    if not args.follow:
        for entry in client.logs(args.pipeline, since=args.since, level=args.level,
                                 limit=args.limit):
            _print_log(entry)
        return None
    for entry in client.follow_logs(args.pipeline, since=args.since, level=args.level,
                                    poll_seconds=args.interval):
        _print_log(entry)
    return None


def _print_log(entry: dict[str, Any]) -> None:
    epoch = f" epoch={entry['epoch']}" if entry.get("epoch") is not None else ""
    print(f"{entry['timestamp']} {entry['level'].upper():7}{epoch} {entry['message']}",
          flush=True)


def _webhooks(args: argparse.Namespace) -> Any:
    client = _client(args)
    if args.webhooks_command == "create":
        return client.create_webhook(args.target, args.event, args.secret)
    if args.webhooks_command == "list":
        return client.list_webhooks()
    if args.webhooks_command == "deliveries":
        return client.webhook_deliveries(args.webhook_id, args.limit)
    return client.delete_webhook(args.webhook_id)


def _run(command: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from control_api.client import ApiClientError

        try:
            result = command(args)
        except ApiClientError as err:
            print(f"error: {err.code}: {err.message}", file=sys.stderr)
            if err.details:
                print(f"details: {json.dumps(err.details)}", file=sys.stderr)
            return 1
        except OSError as err:  # unreachable server, unreadable file
            print(f"error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        if result is not None:
            _print(result)
        return 0
    return run


def add_client_commands(sub: Any) -> None:
    """Register the client subcommands on ``pipeline-do``'s subparsers."""
    from control_api.webhooks.events import EVENT_TYPES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help="server URL (default $PIPELINE_DO_URL or http://127.0.0.1:8080)")
    common.add_argument("--api-key", default=None, help="API key (default $PIPELINE_DO_API_KEY)")

    def command(name: str, help_text: str, func: Callable[[argparse.Namespace], Any],
                *, pipeline: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, parents=[common])
        if pipeline:
            parser.add_argument("pipeline", help="pipeline name or id (pl_...)")
        parser.set_defaults(func=_run(func))
        return parser

    create = command("create", "create a pipeline from a JSON definition", _create,
                     pipeline=False)
    create.add_argument("-f", "--file", required=True, help="definition JSON file ('-': stdin)")
    create.add_argument("--name", help="override the definition's name")
    command("get", "show a pipeline with its counters", lambda a: _client(a).get(a.pipeline))
    command("list", "list pipelines", lambda a: _client(a).list_pipelines(), pipeline=False)
    command("delete", "delete a pipeline (its files stay)", lambda a: _client(a).delete(a.pipeline))
    command("start", "start (or restart) a pipeline", lambda a: _client(a).start(a.pipeline))
    command("pause", "pause: ingest keeps buffering, no files", lambda a: _client(a).pause(a.pipeline))
    command("resume", "resume a paused pipeline", lambda a: _client(a).resume(a.pipeline))
    stop = command("stop", "flush every buffered event, then stop",
                   lambda a: _client(a).stop(a.pipeline, a.timeout_ms))
    stop.add_argument("--timeout-ms", type=int, default=None)

    ingest = command("ingest", "send an NDJSON file of events", _ingest)
    ingest.add_argument("events", help="NDJSON file ('-': stdin)")
    ingest.add_argument("--batch-events", type=int, default=10_000)
    ingest.add_argument("--batch-bytes", type=int, default=4 * 1024 * 1024)
    ingest.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    transform = command("transform", "replace the SQL (from the next epoch) or dry-run it",
                        lambda a: _client(a).transform(a.pipeline, a.sql, dry_run=a.dry_run,
                                                       limit=a.limit))
    transform.add_argument("--sql", required=True)
    transform.add_argument("--dry-run", action="store_true")
    transform.add_argument("--limit", type=int, default=None)

    monitor = command("monitor", "counters, throughput and latency", _monitor)
    monitor.add_argument("--window", type=float, default=60)
    monitor.add_argument("--watch", action="store_true", help="print again every --interval s")
    monitor.add_argument("--interval", type=float, default=2.0)

    logs = command("logs", "job and API logs", _logs)
    logs.add_argument("--since", default=None, help="ISO-8601 time")
    logs.add_argument("--level", choices=("debug", "info", "warning", "error"), default=None)
    logs.add_argument("--limit", type=int, default=100)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    logs.add_argument("--interval", type=float, default=1.0)

    webhooks = sub.add_parser("webhooks", help="manage webhooks")
    webhooks_sub = webhooks.add_subparsers(dest="webhooks_command", required=True)
    wh_create = webhooks_sub.add_parser("create", parents=[common])
    wh_create.add_argument("target", metavar="URL")
    wh_create.add_argument("--event", action="append", required=True, choices=EVENT_TYPES,
                           help="event type; repeat for more")
    wh_create.add_argument("--secret", default=None)
    webhooks_sub.add_parser("list", parents=[common])
    wh_delete = webhooks_sub.add_parser("delete", parents=[common])
    wh_delete.add_argument("webhook_id")
    wh_deliveries = webhooks_sub.add_parser("deliveries", parents=[common])
    wh_deliveries.add_argument("webhook_id")
    wh_deliveries.add_argument("--limit", type=int, default=50)
    webhooks.set_defaults(func=_run(_webhooks))
