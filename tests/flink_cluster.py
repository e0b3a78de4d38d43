"""A real Flink session cluster (one JobManager, one TaskManager) on 127.0.0.1 for tests.

The distribution comes from PyPI only (``scripts/flink_home.sh``, run by
``make flink-home``): ``apache-flink``'s scripts and configuration plus
``apache-flink-libraries``' jars, unpacked into ``.flink/`` outside the venv
(their pinned apache-beam conflicts with ours).

Each daemon runs in the foreground (``bin/jobmanager.sh start-foreground``,
which ``exec``s the JVM) in its own process group, with a configuration
generated into a temp directory: REST and RPC on free loopback ports, two
task slots, small memory, savepoints under the temp directory. ``stop()``
kills the two process groups; ``PR_SET_PDEATHSIG`` kills them if pytest dies.

``FLINK_HOME`` (env) overrides where the distribution is looked for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import yaml

from tests.servers import _PRCTL, _die_with_parent, free_port, stop_process_group

__all__ = ["FLINK_VERSION", "FlinkCluster", "build_job_jar", "flink_cluster", "flink_home",
           "java_missing"]

FLINK_VERSION = "1.20.3"  # the version scripts/flink_home.sh pins
_REPO = Path(__file__).resolve().parent.parent
_STARTUP_TIMEOUT = 90.0


def flink_home() -> Path:
    """The unpacked distribution: ``$FLINK_HOME``, else the repo's ``.flink/``, made if missing."""
    configured = os.environ.get("FLINK_HOME")
    if configured:
        return Path(configured)
    home = _REPO / ".flink" / f"flink-{FLINK_VERSION}"
    if not (home / "lib" / f"flink-dist-{FLINK_VERSION}.jar").exists():
        # `make test` has run it already; a bare `pytest -m flink` provisions it here.
        subprocess.run([str(_REPO / "scripts" / "flink_home.sh"), str(home)], cwd=_REPO,
                       check=True, timeout=600, stdout=subprocess.DEVNULL)
    return home


def java_missing() -> str | None:
    """Why the Flink tests cannot run on this machine, or None when they can."""
    missing = [tool for tool in ("java", "javac", "jar") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (the Flink tests need a JDK 17)" if missing else None


class FlinkCluster:
    """A JobManager + TaskManager on loopback; a context manager."""

    def __init__(self, home: Path | None = None, slots: int = 2) -> None:
        self.home = home or flink_home()
        self.slots = slots
        self.workdir = Path(tempfile.mkdtemp(prefix="flink-cluster-"))
        self.savepoint_dir = self.workdir / "savepoints"
        self.rest_port = 0
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def dist_jar(self) -> Path:
        """``flink-dist``: what a job is compiled against (DataStream API, state, sources)."""
        return self.home / "lib" / f"flink-dist-{FLINK_VERSION}.jar"

    def _write_config(self) -> Path:
        conf = self.workdir / "conf"
        conf.mkdir()
        for name in ("log4j-console.properties", "logback-console.xml"):
            shutil.copy(self.home / "conf" / name, conf / name)
        defaults = yaml.safe_load((self.home / "conf" / "config.yaml").read_text())
        config: dict[str, Any] = {
            # Java 17 needs the distribution's --add-opens list.
            "env.java.opts.all": defaults["env"]["java"]["opts"]["all"],
            "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": free_port(),
            "jobmanager.bind-host": "127.0.0.1",
            "jobmanager.memory.process.size": "768m",
            "taskmanager.host": "127.0.0.1",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.numberOfTaskSlots": self.slots,
            "taskmanager.memory.process.size": "1024m",
            "taskmanager.memory.managed.size": "64m",
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
            "rest.port": self.rest_port,
            "parallelism.default": 1,
            "state.savepoints.dir": f"file://{self.savepoint_dir}",
            "state.checkpoints.dir": f"file://{self.workdir / 'checkpoints'}",
            "web.upload.dir": str(self.workdir / "uploads"),
            "io.tmp.dirs": str(self.workdir / "tmp"),
            # A failed test job must fail, not restart for ever.
            "restart-strategy.type": "none",
        }
        (conf / "config.yaml").write_text(yaml.safe_dump(config))
        for sub in ("uploads", "tmp", "log", "pid"):
            (self.workdir / sub).mkdir(exist_ok=True)
        return conf

    def _spawn(self, script: str, conf: Path) -> None:
        env = {**os.environ, "FLINK_CONF_DIR": str(conf), "FLINK_LOG_DIR": str(self.workdir / "log"),
               "FLINK_PID_DIR": str(self.workdir / "pid"), "FLINK_HOME": str(self.home)}
        log = open(self.workdir / "log" / f"{script}.out", "wb")  # noqa: SIM115 - the child owns it
        try:
            self._procs.append(subprocess.Popen(
                [str(self.home / "bin" / script), "start-foreground"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # own process group: stop() kills only it
                preexec_fn=_die_with_parent if _PRCTL is not None else None))
        finally:
            log.close()

    def start(self, timeout: float = _STARTUP_TIMEOUT) -> Self:
        self.rest_port = free_port()
        conf = self._write_config()
        self._spawn("jobmanager.sh", conf)
        self._spawn("taskmanager.sh", conf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"Flink exited with {proc.returncode}: {self.tail_log()}")
            overview = self._overview()
            if overview and overview.get("slots-available", 0) >= self.slots:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"Flink did not offer {self.slots} slots within {timeout:.0f}s: "
                           f"{self.tail_log()}")

    def _overview(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.rest_url}/overview", timeout=2) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, ValueError):
            return None

    def tail_log(self) -> str:
        text = []
        for path in sorted((self.workdir / "log").glob("*.out")):
            text.append(f"{path.name}: {path.read_text(errors='replace')[-1500:]}")
        return "\n".join(text)

    def stop(self) -> None:
        procs, self._procs = self._procs, []
        for proc in procs:
            stop_process_group(proc, 15.0)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def flink_cluster() -> Iterator[FlinkCluster]:
    """One cluster for the session's Flink tests (skipped only when no JDK is installed)."""
    reason = java_missing()
    if reason:
        pytest.skip(reason)
    with FlinkCluster() as cluster:
        yield cluster


def build_job_jar(cluster: FlinkCluster, source_dir: Path, out_dir: Path, name: str) -> Path:
    """Compile the Java sources under ``source_dir`` against ``flink-dist``; the jar."""
    classes = out_dir / "classes"
    sources = sorted(str(p) for p in source_dir.rglob("*.java"))
    subprocess.run(["javac", "-nowarn", "--release", "11", "-cp", str(cluster.dist_jar),
                    "-d", str(classes), *sources], check=True, timeout=120,
                   capture_output=True)
    jar = out_dir / name
    subprocess.run(["jar", "--create", "--file", str(jar), "-C", str(classes), "."], check=True,
                   timeout=60, capture_output=True)
    return jar


if __name__ == "__main__":  # a manual check: start, print the overview, stop
    with FlinkCluster() as cluster:
        print(cluster.rest_url, cluster._overview())
