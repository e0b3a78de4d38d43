"""``GET /metrics``: the monitor counters in Prometheus text format.

Values are read from the store and the pipelines' buffers at scrape time,
never kept in process memory, so any gunicorn worker answers with the
same, complete numbers. Needs a key with scope ``read`` (or ``admin``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from beam_pipelines.catalog.store import PipelineRow
from beam_pipelines.errors import NotFoundError
from beam_pipelines.model.lifecycle import STATUSES
from beam_pipelines.service import PipelineService
from control_api import context
from control_api.auth import require_scope
from control_api.gate import admit
from control_api.tables import WebhookDelivery

__all__ = ["StoreCollector", "bp", "init_app"]

bp = Blueprint("metrics", __name__)

_LABELS = ["pipeline", "pipeline_id"]
# monitor key → (metric name, help, kind)
_COUNTERS = {
    "events_in": ("pipeline_do_events_in", "Accepted events.", "counter"),
    "events_rejected": ("pipeline_do_events_rejected", "Rejected records.", "counter"),
    "events_out": ("pipeline_do_events_out", "Rows written to the sink after the SQL.", "counter"),
    "bytes_in": ("pipeline_do_bytes_in", "Accepted bytes.", "counter"),
    "bytes_out": ("pipeline_do_bytes_out", "Bytes written to the sink.", "counter"),
    "files_written": ("pipeline_do_files_written", "Files committed to the sink.", "counter"),
    "epochs": ("pipeline_do_epochs", "Committed epochs.", "counter"),
    "errors": ("pipeline_do_errors", "Failed epoch attempts.", "counter"),
    "backlog_events": ("pipeline_do_backlog_events", "Accepted events not yet committed.",
                       "gauge"),
}


class StoreCollector(Collector):
    """Collects every pipeline's monitor block at scrape time."""

    def __init__(self, service: PipelineService, window_seconds: float = 60.0) -> None:
        self.service = service
        self.window_seconds = window_seconds

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Any] = {
            key: (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, doc, labels=_LABELS)
            for key, (name, doc, kind) in _COUNTERS.items()}
        status = GaugeMetricFamily("pipeline_do_pipeline_status",
                                   "1 for the pipeline's current status.",
                                   labels=[*_LABELS, "status"])
        last_commit = GaugeMetricFamily("pipeline_do_last_commit_timestamp_seconds",
                                        "Unix time of the last committed epoch.", labels=_LABELS)
        throughput = GaugeMetricFamily(
            "pipeline_do_throughput_events_per_second",
            f"Events per second over the last {self.window_seconds:g} s.",
            labels=[*_LABELS, "direction"])
        latency = GaugeMetricFamily(
            "pipeline_do_commit_latency_milliseconds",
            f"Ingest ack to sink commit, over the last {self.window_seconds:g} s.",
            labels=[*_LABELS, "quantile"])
        store = self.service.store
        with store.reading() as s:
            pipelines = s.execute(select(PipelineRow.id, PipelineRow.name, PipelineRow.status,
                                         PipelineRow.last_commit_at)
                                  .order_by(PipelineRow.created_at)).all()
            deliveries = s.execute(select(WebhookDelivery.status, func.count())
                                   .group_by(WebhookDelivery.status)).all()
        for pipeline_id, name, current, committed_at in pipelines:
            try:
                snapshot = self.service.monitor(pipeline_id, self.window_seconds)
            except NotFoundError:
                continue  # deleted while we looked
            labels = [name, pipeline_id]
            for key, family in families.items():
                if snapshot[key] is not None:  # null: a distributed job cannot report it
                    family.add_metric(labels, float(snapshot[key]))
            for state in STATUSES:
                status.add_metric([*labels, state], 1.0 if state == current else 0.0)
            if committed_at is not None:
                last_commit.add_metric(labels, committed_at)
            throughput.add_metric([*labels, "in"], snapshot["throughput"]["in_eps"])
            if snapshot["throughput"]["out_eps"] is not None:
                throughput.add_metric([*labels, "out"], snapshot["throughput"]["out_eps"])
            for mark, quantile in (("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99")):
                value = snapshot["latency_ms"][mark]
                if value is not None:
                    latency.add_metric([*labels, quantile], value)
        yield from families.values()
        yield from (status, last_commit, throughput, latency)
        pipelines_total = GaugeMetricFamily("pipeline_do_pipelines", "Pipelines by status.",
                                            labels=["status"])
        for state in STATUSES:
            pipelines_total.add_metric([state], sum(1 for p in pipelines if p[2] == state))
        yield pipelines_total
        webhook = GaugeMetricFamily("pipeline_do_webhook_deliveries",
                                    "Webhook deliveries by status.", labels=["status"])
        counts = dict(deliveries)
        for state in ("pending", "delivered", "failed"):
            webhook.add_metric([state], counts.get(state, 0))
        yield webhook


@bp.get("/metrics")
def metrics():  # type: ignore[no-untyped-def]
    require_scope(admit(), "read", "metrics")
    registry: CollectorRegistry = current_app.extensions["pdo_metrics_registry"]
    return Response(generate_latest(registry), mimetype=None,
                    headers={"Content-Type": CONTENT_TYPE_LATEST})


def init_app(app: Flask) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(context.of(app).service))
    app.extensions["pdo_metrics_registry"] = registry
    app.register_blueprint(bp)
