"""The distributed engines read their settings alike (``beam_pipelines.settings``):
``runner.options`` first, the server's variable second, and the same refusals by name."""

from __future__ import annotations

from typing import Any

import pytest

from beam_pipelines.errors import DefinitionError
from beam_pipelines.runners import dataflow_settings, flink_submit
from beam_pipelines.settings import DATAFLOW_ENV, FLINK_ENV, engine_option

DATAFLOW = {"PIPELINE_DO_DATAFLOW_PROJECT": "my-project-123",
            "PIPELINE_DO_DATAFLOW_REGION": "us-central1",
            "PIPELINE_DO_DATAFLOW_TEMP_LOCATION": "gs://bucket/tmp",
            "PIPELINE_DO_DATAFLOW_STAGING_LOCATION": "gs://bucket/staging",
            "PIPELINE_DO_DATAFLOW_SDK_CONTAINER_IMAGE": "gcr.io/p/pipeline-do:1"}
FLINK = {"PIPELINE_DO_FLINK_REST_URL": "http://flink:8081",
         "PIPELINE_DO_FLINK_SAVEPOINT_DIR": "s3://b/savepoints",
         "PIPELINE_DO_KAFKA_BOOTSTRAP": "kafka:9092",
         "PIPELINE_DO_FLINK_JOB_SERVER_JAR": "/opt/job-server.jar"}


def test_the_option_wins_over_the_variable_and_both_are_stripped() -> None:
    env = {"PIPELINE_DO_X": " from-env "}

    assert engine_option({"x": " given "}, env, "x", "PIPELINE_DO_X") == "given"
    assert engine_option({}, env, "x", "PIPELINE_DO_X") == "from-env"
    assert engine_option({}, {"PIPELINE_DO_X": "  "}, "x", "PIPELINE_DO_X") is None
    assert engine_option({}, env, "x") is None  # an option with no variable


@pytest.mark.parametrize("value", ["", "  ", 5, True, ["a"]])
def test_a_given_option_must_be_non_empty_text(value: Any) -> None:
    with pytest.raises(DefinitionError) as caught:
        engine_option({"x": value}, {"PIPELINE_DO_X": "env"}, "x", "PIPELINE_DO_X")

    assert caught.value.field == "runner.options.x"
    assert caught.value.message == "runner.options.x must be a non-empty string"


def test_a_whole_number_option_may_be_an_integer() -> None:
    assert engine_option({"n": 3}, {}, "n", whole_number=True) == "3"
    with pytest.raises(DefinitionError, match="non-empty string or a whole number"):
        engine_option({"n": 2.5}, {}, "n", whole_number=True)


@pytest.mark.parametrize(("resolve", "env", "names", "engine"), [
    (dataflow_settings.resolve_settings, DATAFLOW, DATAFLOW_ENV, "Dataflow"),
    (flink_submit.resolve_settings, FLINK, FLINK_ENV, "Flink"),
])
def test_both_engines_refuse_a_missing_or_blank_setting_in_the_same_words(
        resolve: Any, env: dict[str, str], names: dict[str, str], engine: str) -> None:
    for name in env:
        key = next(k for k, v in names.items() if v == name)
        for without in ({k: v for k, v in env.items() if k != name}, {**env, name: " "}):
            with pytest.raises(DefinitionError) as caught:
                resolve({}, without)

            assert caught.value.field == f"runner.options.{key}"
            assert caught.value.message.startswith(f"{engine} needs ")
            assert caught.value.message.endswith(f": set runner.options.{key} or {name}") or \
                f": set runner.options.{key} or {name} (or " in caught.value.message

        with pytest.raises(DefinitionError, match=f"runner.options.{key} must be a non-empty"):
            resolve({key: ""}, env)
