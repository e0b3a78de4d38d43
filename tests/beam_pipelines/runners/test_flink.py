"""FlinkEngine's lifecycle on a real Flink 1.20 cluster started by the tests (marker ``flink``).

Beam's Flink job server is published only on Maven Central, unreachable
here, so the Beam job itself cannot be submitted: the lifecycle (stop with
savepoint, resume with state restored, drain, cancel, update, the state
mapping) runs on a small Java streaming job compiled here against the
cluster's ``flink-dist`` jar (tests/flink_job). It counts its elements in
keyed state and appends each count to ``<out>/<tag>.txt``, so a resumed job
shows whether its state came back. ``launch`` and ``update`` run for real
too, with the Beam submission swapped for one that runs that jar under the
job's name from the options ``launch`` built; what the Beam submission
itself gets (its pipeline options, the job server's command line) is
checked separately.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pytest

from beam_pipelines.errors import ConflictError
from beam_pipelines.runners.base import JobHandle, JobRequest, JobState
from beam_pipelines.runners.flink import FlinkEngine, cluster_location
from beam_pipelines.runners.flink_rest import FlinkRest
from beam_pipelines.runners.flink_submit import FlinkSettings
from tests.flink_cluster import FlinkCluster, build_job_jar
from tests.flink_cluster import flink_cluster as flink_cluster  # the session fixture
from tests.servers import free_port

pytestmark = pytest.mark.flink

ENTRY = "pipelinedo.testjob.CounterJob"
JOB_SOURCES = Path(__file__).resolve().parents[2] / "flink_job" / "src"
WAIT_S = 60.0


class NullTransport:
    """The Kafka transport is another module's; these tests never publish."""

    def ensure(self, pipeline_id: str) -> None:
        raise AssertionError("not used")

    def publish(self, pipeline_id: str, data: bytes, attributes: Any, timeout_s: float) -> None:
        raise AssertionError("not used")

    def remove(self, pipeline_id: str) -> None:
        raise AssertionError("not used")


@pytest.fixture(scope="module")
def counter_jar(flink_cluster: FlinkCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_job_jar(flink_cluster, JOB_SOURCES, tmp_path_factory.mktemp("job"),
                         "counter-job.jar")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


@pytest.fixture
def engine(flink_cluster: FlinkCluster) -> Iterator[FlinkEngine]:
    engine = FlinkEngine(NullTransport(), env={}, timeout_s=30.0, savepoint_timeout_s=60.0)
    yield engine
    # Free the slots of whatever a failed test left running.
    rest = FlinkRest(flink_cluster.rest_url)
    for job in rest.jobs():
        if job["state"] == "RUNNING":
            rest.cancel(job["jid"])


def counts(out_dir: Path, tag: str) -> list[tuple[int, int]]:
    """The job's ``(count, value)`` lines under ``tag`` (the last may be half written)."""
    path = out_dir / f"{tag}.txt"
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]
    return [(int(c), int(v)) for c, v in (line.split() for line in lines)]


def wait_counts(out_dir: Path, tag: str, at_least: int) -> list[tuple[int, int]]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        seen = counts(out_dir, tag)
        if len(seen) >= at_least:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"the job wrote {len(counts(out_dir, tag))} counts under {tag!r}, "
                         f"not {at_least}, within {WAIT_S:.0f}s")


def submit(engine: FlinkEngine, cluster: FlinkCluster, jar: Path, out_dir: Path, tag: str,
           name: str, savepoint: str | None = None, *, seen: int = 1) -> JobHandle:
    """The counter job ``name`` (counting under ``tag``), once it has written ``seen`` counts."""
    handle = engine.submit_jar(cluster.rest_url, str(jar), ENTRY,
                               ["--out", str(out_dir), "--tag", tag, "--name", name],
                               job_name=name, savepoint_dir=f"file://{cluster.savepoint_dir}",
                               savepoint=savepoint)
    wait_counts(out_dir, tag, seen)
    return handle


def local_path(location: str) -> Path:
    """A savepoint location (``file:/tmp/...``) as a local path."""
    parsed = urlparse(location)
    assert parsed.scheme == "file", location
    return Path(parsed.path)


# -- the lifecycle on the real cluster ---------------------------------------------

def test_pause_writes_a_savepoint_and_resume_restores_the_state(
        engine: FlinkEngine, flink_cluster: FlinkCluster, counter_jar: Path,
        out_dir: Path) -> None:
    first = submit(engine, flink_cluster, counter_jar, out_dir, "first", "pause-resume", seen=30)
    assert engine.view(first).state == JobState.RUNNING

    paused = engine.pause(first)

    assert paused.job_id == first.job_id and paused.savepoint
    savepoint = local_path(paused.savepoint)
    assert savepoint.is_dir() and (savepoint / "_metadata").is_file()
    assert savepoint.parent == flink_cluster.savepoint_dir / "pause-resume"
    view = engine.view(paused)
    assert view.state == JobState.DRAINED  # Flink FINISHED
    assert view.message == "Flink job state FINISHED"
    before = counts(out_dir, "first")

    resumed = submit(engine, flink_cluster, counter_jar, out_dir, "second", "pause-resume",
                     savepoint=paused.savepoint)
    after = wait_counts(out_dir, "second", 5)

    # The counter continues from the savepoint's state, and the source from its position:
    # exactly where the stopped job's last element left them.
    assert after[0] == (before[-1][0] + 1, before[-1][1] + 1)
    assert [count for count, _ in after[:5]] == list(range(after[0][0], after[0][0] + 5))
    engine.cancel(resumed)
    assert engine.view(resumed).state == JobState.CANCELLED


def test_drain_ends_the_job_finished(engine: FlinkEngine, flink_cluster: FlinkCluster,
                                     counter_jar: Path, out_dir: Path) -> None:
    handle = submit(engine, flink_cluster, counter_jar, out_dir, "drained", "drain", seen=10)

    engine.drain(handle)

    view = engine.view(handle)
    assert view.state == JobState.DRAINED
    assert view.state in JobState.TERMINAL
    assert FlinkRest(flink_cluster.rest_url).job(handle.job_id)["state"] == "FINISHED"


def test_cancel_ends_the_job_cancelled_and_a_second_cancel_is_fine(
        engine: FlinkEngine, flink_cluster: FlinkCluster, counter_jar: Path,
        out_dir: Path) -> None:
    handle = submit(engine, flink_cluster, counter_jar, out_dir, "cancelled", "cancel")

    engine.cancel(handle)
    engine.cancel(handle)

    view = engine.view(handle)
    assert view.state == JobState.CANCELLED
    assert FlinkRest(flink_cluster.rest_url).job(handle.job_id)["state"] == "CANCELED"
    assert view.metrics["uptime_seconds"] > 0


def test_view_of_a_job_the_cluster_does_not_know(engine: FlinkEngine,
                                                 flink_cluster: FlinkCluster) -> None:
    view = engine.view(JobHandle(job_id="0" * 32, job_name="gone",
                                 location=cluster_location(flink_cluster.rest_url, None)))

    assert view.state == JobState.UNKNOWN
    assert view.metrics == {}


def test_a_fresh_engine_reaches_the_job_on_its_own_cluster(
        engine: FlinkEngine, flink_cluster: FlinkCluster, counter_jar: Path,
        out_dir: Path) -> None:
    """Another process (the watcher in serve, a restarted server) has only the catalog's
    handle, and its environment names a cluster where nothing answers, and no savepoint dir."""
    first = submit(engine, flink_cluster, counter_jar, out_dir, "moved", "fresh-engine", seen=5)
    assert first.location is not None and json.loads(first.location) == {
        "rest_url": flink_cluster.rest_url,
        "savepoint_dir": f"file://{flink_cluster.savepoint_dir}"}
    elsewhere = {"PIPELINE_DO_FLINK_REST_URL": f"http://127.0.0.1:{free_port()}"}

    fresh = FlinkEngine(NullTransport(), env=elsewhere, timeout_s=30.0, savepoint_timeout_s=60.0)
    assert fresh.view(first).state == JobState.RUNNING
    paused = fresh.pause(first)
    assert paused.location == first.location
    # the savepoint went to the handle's directory, not the cluster's default one
    assert local_path(str(paused.savepoint)).parent == flink_cluster.savepoint_dir / "fresh-engine"
    assert FlinkEngine(NullTransport(), env={}).view(paused).state == JobState.DRAINED

    second = submit(engine, flink_cluster, counter_jar, out_dir, "again", "fresh-engine",
                    savepoint=paused.savepoint)
    FlinkEngine(NullTransport(), env=elsewhere, timeout_s=30.0).cancel(second)
    assert FlinkRest(flink_cluster.rest_url).job(second.job_id)["state"] == "CANCELED"


def test_a_handle_recorded_without_a_location_uses_the_environment_and_learns_it(
        engine: FlinkEngine, flink_cluster: FlinkCluster, counter_jar: Path,
        out_dir: Path) -> None:
    launched = submit(engine, flink_cluster, counter_jar, out_dir, "old", "old-row")
    old_row = replace(launched, location=None)  # a catalog row from before locations
    configured = FlinkEngine(NullTransport(), env={
        "PIPELINE_DO_FLINK_REST_URL": flink_cluster.rest_url,
        "PIPELINE_DO_FLINK_SAVEPOINT_DIR": f"file://{flink_cluster.savepoint_dir}"})

    assert configured.view(old_row).state == JobState.RUNNING
    paused = configured.pause(old_row)

    assert paused.location == launched.location
    assert local_path(str(paused.savepoint)).parent == flink_cluster.savepoint_dir / "old-row"


def test_pause_of_a_finished_job_is_refused_without_internals(
        engine: FlinkEngine, flink_cluster: FlinkCluster, counter_jar: Path,
        out_dir: Path) -> None:
    handle = submit(engine, flink_cluster, counter_jar, out_dir, "twice", "stop-twice")
    engine.cancel(handle)

    with pytest.raises(ConflictError) as caught:
        engine.pause(handle)

    assert str(caught.value) == f"cannot stop Flink job {handle.job_id}: it is CANCELED, not RUNNING"


def test_a_savepoint_that_fails_is_reported_without_internals(
        engine: FlinkEngine, flink_cluster: FlinkCluster, counter_jar: Path,
        out_dir: Path) -> None:
    handle = submit(engine, flink_cluster, counter_jar, out_dir, "gone", "stop-gone")
    engine.cancel(handle)
    rest = FlinkRest(flink_cluster.rest_url)

    # Flink takes the stop of a cancelled job (202); only the savepoint's status fails.
    trigger = rest.stop(handle.job_id, drain=False, target_directory=None)
    with pytest.raises(ConflictError) as caught:
        rest.wait_savepoint(handle.job_id, trigger, timeout_s=30)

    assert str(caught.value) == (f"Flink could not take the savepoint of job {handle.job_id}; "
                                 "the Flink JobManager's log has the cause")


# -- launch and update: the Beam submission swapped for the jar, the rest real ------

@pytest.fixture
def job_server_jar(tmp_path: Path) -> Path:
    """A stand-in: the real one is on Maven Central only (and the submission is swapped)."""
    jar = tmp_path / "beam-runners-flink-1.20-job-server.jar"
    jar.write_bytes(b"a stand-in")
    return jar


def request(cluster: FlinkCluster, job_server_jar: Path) -> JobRequest:
    options = {"rest_url": cluster.rest_url, "savepoint_dir": f"file://{cluster.savepoint_dir}",
               "kafka_bootstrap": "127.0.0.1:9092", "job_server_jar": str(job_server_jar)}
    definition = {"name": "orders", "sql": "SELECT * FROM events",
                  "runner": {"type": "flink", "options": options}}
    return JobRequest(pipeline_id="pl_1", job_name="pipeline-do-pl-1", definition=definition,
                      sql="SELECT * FROM events", version=1,
                      input_schema=pa.schema([("a", pa.int64())]))


class JarAsBeamJob:
    """Stands in for the Beam submission: runs the counter jar under the options' job name."""

    def __init__(self, jar: Path, out_dir: Path, entries: tuple[str, ...] = (ENTRY, ENTRY)) -> None:
        self.jar, self.out_dir, self.entries = jar, out_dir, entries
        self.submissions: list[list[str]] = []

    def __call__(self, req: JobRequest, settings: FlinkSettings, args: list[str]) -> None:
        self.submissions.append(args)
        options = dict(arg.removeprefix("--").split("=", 1) for arg in args if "=" in arg)
        rest = FlinkRest(settings.rest_url)
        jar_id = rest.upload_jar(str(self.jar))
        entry = self.entries[len(self.submissions) - 1]
        rest.run_jar(jar_id, entry, ["--out", str(self.out_dir), "--tag", f"v{req.version}",
                                     "--name", options["job_name"]],
                     savepoint=options.get("savepoint_path"),
                     allow_non_restored_state="--allow_non_restored_state" in args)


def test_launch_finds_the_job_by_name_and_update_resubmits_from_a_savepoint(
        flink_cluster: FlinkCluster, counter_jar: Path, out_dir: Path,
        job_server_jar: Path) -> None:
    submit_beam = JarAsBeamJob(counter_jar, out_dir)
    engine = FlinkEngine(NullTransport(), env={}, submit_beam=submit_beam)
    first = request(flink_cluster, job_server_jar)

    handle = engine.launch(first)

    assert FlinkRest(flink_cluster.rest_url).job(handle.job_id)["name"] == "pipeline-do-pl-1"
    assert handle.job_name == "pipeline-do-pl-1" and handle.savepoint is None
    assert handle.location == cluster_location(flink_cluster.rest_url,
                                               f"file://{flink_cluster.savepoint_dir}")
    before = wait_counts(out_dir, "v1", 10)

    updated = engine.update(handle, replace(first, sql="SELECT a FROM events", version=2))

    assert updated.job_id != handle.job_id and updated.location == handle.location
    fresh = FlinkEngine(NullTransport(), env={})  # another process: only the handles
    assert fresh.view(handle).state == JobState.DRAINED
    assert fresh.view(updated).state == JobState.RUNNING
    resubmitted = submit_beam.submissions[1]
    savepoint = next(a.split("=", 1)[1] for a in resubmitted if a.startswith("--savepoint_path="))
    assert local_path(savepoint).parent == flink_cluster.savepoint_dir / "pipeline-do-pl-1"
    assert "--allow_non_restored_state" in resubmitted
    assert f"--flink_job_server_jar={job_server_jar}" in resubmitted
    assert "--job_name=pipeline-do-pl-1" in resubmitted and "--streaming" in resubmitted
    after = wait_counts(out_dir, "v2", 1)
    assert after[0][0] > before[-1][0]  # the state came along
    engine.cancel(updated)


def test_an_update_whose_new_job_is_refused_names_the_savepoint(
        flink_cluster: FlinkCluster, counter_jar: Path, out_dir: Path,
        job_server_jar: Path) -> None:
    # The second submission names a class the jar does not have: Flink refuses the run.
    engine = FlinkEngine(NullTransport(), env={}, submit_beam=JarAsBeamJob(
        counter_jar, out_dir, entries=(ENTRY, "pipelinedo.testjob.Missing")))
    first = request(flink_cluster, job_server_jar)
    handle = engine.launch(first)
    wait_counts(out_dir, "v1", 1)

    with pytest.raises(ConflictError) as caught:  # Flink says 500; retrying cannot help
        engine.update(handle, replace(first, version=2))

    savepoint = caught.value.details["savepoint"]
    assert local_path(savepoint).is_dir()
    assert caught.value.message == ("could not run the job: Flink answered HTTP 500 (the previous "
                                    f"job stopped with savepoint {savepoint})")
    assert engine.view(handle).state == JobState.DRAINED
