"""``runners.engines``: which engines a server has, each with its transport from settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from beam_pipelines.catalog.store import Store, default_database_url
from beam_pipelines.runners import engines
from beam_pipelines.runners.distributed import DistributedRunner
from beam_pipelines.runners.transports.kafka import KafkaTransport
from beam_pipelines.runners.transports.pubsub import PubSubTransport
from beam_pipelines.settings import DataPlaneSettings
from tests.beam_pipelines.runners.recording_engine import RecordingEngine

SETTINGS = DataPlaneSettings.from_env({"PIPELINE_DO_DATAFLOW_PROJECT": "proj",
                                       "PIPELINE_DO_KAFKA_BOOTSTRAP": "k1:9092,k2:9092"})


def test_each_engine_gets_its_transport_and_a_missing_module_is_left_out(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    here = "tests.beam_pipelines.runners.recording_engine"
    monkeypatch.setitem(engines.ENGINES, "dataflow",
                        (here, "RecordingEngine", engines.ENGINES["dataflow"][2]))
    monkeypatch.setitem(engines.ENGINES, "flink",
                        (here, "RecordingEngine", engines.ENGINES["flink"][2]))
    monkeypatch.setitem(engines.ENGINES, "spark",
                        ("beam_pipelines.runners.no_such_module", "SparkEngine",
                         engines.ENGINES["flink"][2]))
    found = engines.distributed_engines(SETTINGS)
    assert sorted(found) == ["dataflow", "flink"]
    dataflow, flink = found["dataflow"], found["flink"]
    assert isinstance(dataflow, RecordingEngine) and isinstance(flink, RecordingEngine)
    assert isinstance(dataflow.transport, PubSubTransport)
    assert dataflow.transport.project == "proj"
    assert isinstance(flink.transport, KafkaTransport)
    assert flink.transport.bootstrap == "k1:9092,k2:9092"

    store = Store(default_database_url(str(tmp_path)))
    runners = engines.distributed_runners(store, str(tmp_path), engines=found)
    assert all(isinstance(r, DistributedRunner) and r.engine is found[t]
               for t, r in runners.items())


def test_this_installation_offers_only_the_engines_whose_modules_exist() -> None:
    import importlib.util

    present = {t for t, (module, _, _) in engines.ENGINES.items()
               if importlib.util.find_spec(module) is not None}
    assert set(engines.distributed_engines(SETTINGS)) <= present
