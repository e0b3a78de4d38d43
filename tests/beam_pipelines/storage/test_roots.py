"""Local sinks write only under their roots, whatever the path says; files carry the pipeline id.

Paths are generated (``..`` and ``.`` segments, repeated and trailing
slashes, ``file://`` or plain, symlinks inside and out) and every decision
is checked against the real filesystem: an accepted sink's real path is
inside a root, a refused one's is not.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_pipelines.catalog.store import Store, default_database_url
from beam_pipelines.errors import DefinitionError, StorageError
from beam_pipelines.model.definition import parse_definition
from beam_pipelines.model.layout import part_file_name
from beam_pipelines.runners.local.buffer import EventBuffer, buffer_path
from beam_pipelines.runners.local.epochs import plan_epoch, run_epoch
from beam_pipelines.service import PipelineService
from beam_pipelines.storage.roots import allowed_local_roots, parse_local_roots
from tests.live import query


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """A root with a symlink to outside it, one to inside it, and an outside dir."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "deep" / "er").mkdir(parents=True)
    outside.mkdir()
    (root / "out-link").symlink_to(outside)
    (root / "etc-link").symlink_to("/etc")
    (root / "in-link").symlink_to(root / "deep")
    (root / "chain").symlink_to(root / "out-link")
    return {"root": root, "outside": outside}


def _parse(uri: str, roots: tuple[str, ...]) -> str:
    d = parse_definition({"name": "p", "sink": {"uri": uri}}, default_sink_uri="/x/{name}",
                         local_sink_roots=roots)
    return d.sink.uri


def _inside(path: str, root: Path) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root + os.sep)


_SEGMENTS = st.sampled_from(["..", ".", "", "p", "deep", "er", "out-link", "etc-link", "in-link",
                             "chain", "etc", "new"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(_SEGMENTS, max_size=8), file_scheme=st.booleans(),
       trailing=st.sampled_from(["", "/", "//"]))
def test_generated_paths_are_accepted_exactly_when_their_real_path_is_inside_the_root(
        tree: dict[str, Path], segments: list[str], file_scheme: bool, trailing: str) -> None:
    root = tree["root"]
    path = str(root) + "/" + "/".join(segments) + trailing
    uri = ("file://" if file_scheme else "") + path
    lexical = os.path.normpath(path)
    try:
        stored = _parse(uri, (str(root),))
    except DefinitionError as err:
        assert err.field == "sink.uri"
        assert err.details["allowed"] == [str(root)]
        assert str(tree["outside"]) not in err.message  # where a symlink led stays unsaid
        assert not _inside(lexical, root), uri
        return
    assert _inside(lexical, root), uri
    assert stored == lexical and ".." not in stored.split("/") and not stored.endswith("/")
    assert _inside(stored, root)


@pytest.mark.parametrize("uri", [
    "/etc", "file:///etc", "/", "file:///", "file:///tmp/x/../../etc", "/tmp/x/../../etc",
    "//etc", "file:////etc/", "/etc/./", "/var/lib/../../etc/cron.d",
])
def test_system_paths_are_refused(uri: str, tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as caught:
        _parse(uri, (str(tmp_path / "lake"),))
    assert caught.value.field == "sink.uri"


@pytest.mark.parametrize("escape", ["%2e%2e", "%2E%2E", "%2e.", ".%2e", "%2f..", "%252e%252e"])
def test_percent_escapes_are_refused_not_decoded(escape: str, tree: dict[str, Path]) -> None:
    root = tree["root"]
    for uri in (f"file://{root}/{escape}/{escape}/etc", f"{root}/{escape}/x"):
        with pytest.raises(DefinitionError, match="percent-escapes") as caught:
            _parse(uri, (str(root),))
        assert caught.value.field == "sink.uri"


def test_a_nul_byte_is_refused(tree: dict[str, Path]) -> None:
    with pytest.raises(DefinitionError, match="NUL"):
        _parse(f"{tree['root']}/a\0b", (str(tree["root"]),))


def test_every_configured_root_is_allowed_and_the_lake_always(tmp_path: Path) -> None:
    other = tmp_path / "other"
    roots = allowed_local_roots(str(tmp_path / "data"), parse_local_roots(f"{other}:/srv/x/"))
    assert roots == (str(tmp_path / "data" / "lake"), str(other), "/srv/x")
    assert _parse(f"file://{other}/a/", roots) == f"{other}/a"
    assert _parse(f"{tmp_path}/data/lake/b", roots) == f"{tmp_path}/data/lake/b"
    with pytest.raises(DefinitionError) as caught:
        _parse(f"{tmp_path}/data/not-lake", roots)
    assert caught.value.details["allowed"] == list(roots)
    assert "PIPELINE_DO_LOCAL_SINK_ROOTS" in caught.value.message


@pytest.mark.parametrize("raw", ["relative/dir", "/ok:rel", "~/lake"])
def test_a_root_list_with_a_relative_path_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match="PIPELINE_DO_LOCAL_SINK_ROOTS"):
        parse_local_roots(raw)


# -- the service and the epoch -----------------------------------------------------------

SCHEMA = [{"name": "n", "type": "int64", "required": True}]


@pytest.fixture
def service(tmp_path: Path) -> PipelineService:
    store = Store(default_database_url(str(tmp_path)))
    store.create_all()
    return PipelineService(store, str(tmp_path), default_sink_uri=str(tmp_path / "lake/{name}"),
                           local_sink_roots=(str(tmp_path / "extra"),))


def _ingest(service: PipelineService, name: str, first: int, count: int) -> None:
    body = "\n".join(f'{{"n": {i}}}' for i in range(first, first + count)).encode()
    assert service.ingest_json_lines(name, body)["accepted"] == count


def _flush(service: PipelineService, data_dir: Path, pipeline_id: str) -> Any:
    buffer = EventBuffer(buffer_path(str(data_dir), pipeline_id))
    try:
        epoch = plan_epoch(service.store, pipeline_id, buffer, flush=True)
    finally:
        buffer.close()
    assert epoch is not None
    return run_epoch(service.store, str(data_dir), pipeline_id, epoch,
                     local_sink_roots=(str(data_dir / "extra"),))


def test_the_service_refuses_a_sink_outside_its_roots(service: PipelineService,
                                                      tmp_path: Path) -> None:
    for uri in ("/etc", f"file://{tmp_path}/lake/../outside", f"{tmp_path}/extra/../x"):
        with pytest.raises(DefinitionError) as caught:
            service.create({"name": "bad", "sink": {"uri": uri}})
        assert caught.value.field == "sink.uri"
    assert service.list_all()["pipelines"] == []
    created = service.create({"name": "good", "sink": {"uri": f"file://{tmp_path}/extra/a/../b/"}})
    assert created["sink"]["uri"] == f"{tmp_path}/extra/b"


def test_an_epoch_refuses_a_sink_that_a_symlink_made_since_leads_outside(
        service: PipelineService, tmp_path: Path) -> None:
    sink, outside = tmp_path / "extra" / "p", tmp_path / "outside"
    pipeline_id = service.create({"name": "p", "schema": SCHEMA, "sink": {"uri": str(sink)}})["id"]
    _ingest(service, "p", 0, 10)
    outside.mkdir()
    sink.parent.mkdir(parents=True, exist_ok=True)
    sink.symlink_to(outside)  # made after create: only the epoch can notice
    with pytest.raises(StorageError) as caught:
        _flush(service, tmp_path, pipeline_id)
    assert "sink.uri" in caught.value.message and "outside" in caught.value.message
    assert str(outside) not in caught.value.message
    assert list(outside.iterdir()) == []
    sink.unlink()
    result = run_epoch(service.store, str(tmp_path), pipeline_id, 1,  # the retry
                       local_sink_roots=(str(tmp_path / "extra"),))
    assert result.rows_out == 10
    assert query(f"SELECT count(*) FROM read_parquet('{sink}/*.parquet')") == [(10,)]


def test_a_name_reused_after_delete_never_writes_over_the_old_files(
        service: PipelineService, tmp_path: Path) -> None:
    lake = tmp_path / "lake" / "reused"
    first = service.create({"name": "reused", "schema": SCHEMA})["id"]
    _ingest(service, "reused", 0, 5)
    _flush(service, tmp_path, first)
    old = {p: Path(p).read_bytes() for p in glob.glob(f"{lake}/*.parquet")}
    assert list(old) == [f"{lake}/{part_file_name(first, 1, 0, 'parquet')}"]
    service.delete("reused")

    second = service.create({"name": "reused", "schema": SCHEMA})["id"]
    assert second != first
    _ingest(service, "reused", 100, 7)
    _flush(service, tmp_path, second)
    assert {p: Path(p).read_bytes() for p in old} == old  # left in place, unchanged
    assert sorted(glob.glob(f"{lake}/*.parquet")) == sorted(
        [*old, f"{lake}/{part_file_name(second, 1, 0, 'parquet')}"])
    assert query(f"SELECT count(*), sum(n) FROM read_parquet('{lake}/*.parquet')") == \
        [(12, sum(range(5)) + sum(range(100, 107)))]


def test_two_pipelines_on_one_sink_keep_their_own_files_and_scratch(
        service: PipelineService, tmp_path: Path) -> None:
    shared = tmp_path / "extra" / "shared"
    ids = [service.create({"name": name, "schema": SCHEMA,
                           "sink": {"uri": str(shared), "partition_by": "dt=%Y"}})["id"]
           for name in ("a", "b")]
    for round_ in range(2):
        for i, name in enumerate(("a", "b")):
            _ingest(service, name, 1000 * i + 10 * round_, 10)
            _flush(service, tmp_path, ids[i])
    names = sorted(os.path.relpath(p, shared)
                   for p in glob.glob(f"{shared}/**/*.parquet", recursive=True))
    year = names[0].split("/")[0]
    assert names == sorted(part_file_name(pipeline_id, epoch, 0, "parquet", year)
                           for pipeline_id in ids for epoch in (1, 2))
    assert query(f"SELECT count(*), count(DISTINCT n) FROM read_parquet('{shared}/**/*.parquet')"
                 ) == [(40, 40)]
    assert not (shared / "_tmp").exists()


def test_a_sqlite_iceberg_catalog_is_a_local_write_held_to_the_same_roots(
        tree: dict[str, Path]) -> None:
    pytest.importorskip("pyiceberg")
    root = tree["root"]

    def parse_catalog(uri: str) -> Any:
        return parse_definition({"name": "p", "sink": {"table": {"name": "t", "catalog_uri": uri}}},
                                default_sink_uri=f"{root}/{{name}}", local_sink_roots=(str(root),))

    for uri in ("sqlite:////etc/catalog.sqlite", f"sqlite:///{root}/../catalog.sqlite",
                f"sqlite+pysqlite:///{root}/out-link/c.sqlite", "sqlite:///relative.sqlite",
                "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(DefinitionError) as caught:
            parse_catalog(uri)
        assert caught.value.field == "sink.table.catalog_uri", uri
    assert parse_catalog(f"sqlite:///{root}/deep/c.sqlite").sink.table is not None
    assert parse_catalog("postgresql://u:pw@127.0.0.1/catalog").sink.table is not None
