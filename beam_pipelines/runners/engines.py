"""The distributed engines a server has, each with its transport: one literal table.

=========  ==========================================  ==============================
type       engine                                      transport
=========  ==========================================  ==============================
dataflow   ``runners.dataflow.DataflowEngine``          Pub/Sub in
                                                       ``PIPELINE_DO_DATAFLOW_PROJECT``
flink      ``runners.flink.FlinkEngine``                Kafka at
                                                       ``PIPELINE_DO_KAFKA_BOOTSTRAP``
=========  ==========================================  ==============================

An engine is built as ``EngineClass(transport=...)``, imported only here and
only when a server is set up, so the API's processes never import Beam's
Dataflow or Flink machinery for a server that runs only direct pipelines. An
engine whose module is missing is left out: its pipelines are refused at
``start`` (``RunnerRegistry.run``) and keep their events in the local runner.
Settings missing here are reported per pipeline, at ``start`` (``Engine.check``)
and at the first publish, naming the variable.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from beam_pipelines.catalog.store import Store
from beam_pipelines.runners.base import Engine, RunnerEvents, Transport
from beam_pipelines.runners.distributed import DistributedRunner
from beam_pipelines.settings import DataPlaneSettings, data_plane_settings
from beam_pipelines.storage.sealing import SecretBox

__all__ = ["ENGINES", "distributed_engines", "distributed_runners"]

_log = logging.getLogger(__name__)


def _pubsub(settings: DataPlaneSettings) -> Transport:
    from beam_pipelines.runners.transports.pubsub import PubSubTransport

    return PubSubTransport(settings.dataflow_project)


def _kafka(settings: DataPlaneSettings) -> Transport:
    from beam_pipelines.runners.transports.kafka import KafkaTransport

    return KafkaTransport(settings.kafka_bootstrap)


#: runner.type → (module, engine class, transport factory)
ENGINES: dict[str, tuple[str, str, Callable[[DataPlaneSettings], Transport]]] = {
    "dataflow": ("beam_pipelines.runners.dataflow", "DataflowEngine", _pubsub),
    "flink": ("beam_pipelines.runners.flink", "FlinkEngine", _kafka),
}


def distributed_engines(settings: DataPlaneSettings | None = None) -> dict[str, Engine]:
    """Every engine of ``ENGINES`` whose module this installation has."""
    settings = settings or data_plane_settings()
    engines: dict[str, Engine] = {}
    for runner_type, (module_name, class_name, transport) in ENGINES.items():
        try:
            engine_class = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            _log.info("runner %s is not available: %s", runner_type, err)
            continue
        engines[runner_type] = engine_class(transport=transport(settings))
    return engines


def distributed_runners(store: Store, data_dir: str, *, events: RunnerEvents | None = None,
                        secret_box: SecretBox | None = None,
                        engines: dict[str, Engine] | None = None) -> dict[str, DistributedRunner]:
    """A ``DistributedRunner`` per available engine, for ``RunnerRegistry``."""
    engines = distributed_engines() if engines is None else engines
    return {runner_type: DistributedRunner(store, data_dir, engine, events=events,
                                           secret_box=secret_box)
            for runner_type, engine in engines.items()}
