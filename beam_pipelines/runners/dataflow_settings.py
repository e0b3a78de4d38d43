"""Where a pipeline's Dataflow job runs: settings from ``runner.options``, then the environment.

=====================  ===========================================  ========
``runner.options.``    environment variable                         required
=====================  ===========================================  ========
project                PIPELINE_DO_DATAFLOW_PROJECT                 yes
region                 PIPELINE_DO_DATAFLOW_REGION                  yes
temp_location          PIPELINE_DO_DATAFLOW_TEMP_LOCATION (gs://)   yes
staging_location       PIPELINE_DO_DATAFLOW_STAGING_LOCATION        yes
sdk_container_image    PIPELINE_DO_DATAFLOW_SDK_CONTAINER_IMAGE     yes
dataflow_endpoint      PIPELINE_DO_DATAFLOW_ENDPOINT                no
service_account_email  PIPELINE_DO_DATAFLOW_SERVICE_ACCOUNT_EMAIL   no
subnetwork             PIPELINE_DO_DATAFLOW_SUBNETWORK              no
machine_type           PIPELINE_DO_DATAFLOW_MACHINE_TYPE            no
max_num_workers        PIPELINE_DO_DATAFLOW_MAX_NUM_WORKERS         no
flex_template          PIPELINE_DO_DATAFLOW_FLEX_TEMPLATE (gs://)   no
=====================  ===========================================  ========

Each setting but ``flex_template`` becomes Beam's flag of the same name.
``sdk_container_image`` is required because Beam's stock worker image has
neither pipeline.do nor DuckDB: the workers run ``templates/dataflow``'s image.
``flex_template`` (the spec file ``gcloud dataflow flex-template build``
wrote) switches launch and update from the DataflowRunner in this process to
a Flex Template launch of ``templates/dataflow``.

Beam's Dataflow client speaks plain-http REST, unauthenticated
(``--no_auth``), only to an endpoint whose host is ``localhost`` (a recording
or emulating server): such an endpoint is the one case where calls go without
Google credentials; any other endpoint must be https and is called with them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from beam_pipelines.errors import DefinitionError
from beam_pipelines.runners.dataflow_api import JobLocation
from beam_pipelines.settings import DATAFLOW_ENV, engine_option, missing_setting

__all__ = ["DataflowSettings", "env_location", "resolve_settings"]

# The required settings, and what each is in the refusal of a missing one.
_NEEDS = {"project": "a Google Cloud project", "region": "a region",
          "temp_location": "a gs:// temp location", "staging_location": "a gs:// staging location",
          "sdk_container_image": "a worker image with pipeline.do (templates/dataflow's)"}
_REQUIRED = tuple(_NEEDS)
_OPTIONAL = ("dataflow_endpoint", "service_account_email", "subnetwork", "machine_type",
             "max_num_workers", "flex_template")

_PROJECT = re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z][-a-z0-9]{0,62}[0-9]$")
_GCS_URI = re.compile(r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](?:/.*)?$")
_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "project": (_PROJECT, "a Google Cloud project id such as 'my-project-123'"),
    "region": (_REGION, "a Dataflow region such as 'us-central1'"),
    "temp_location": (_GCS_URI, "a gs://bucket/path URI"),
    "staging_location": (_GCS_URI, "a gs://bucket/path URI"),
    "flex_template": (_GCS_URI, "the gs://bucket/path of a Flex Template spec"),
}


def env_var(key: str) -> str:
    """The environment variable of setting ``key`` (``beam_pipelines.settings.DATAFLOW_ENV``)."""
    return DATAFLOW_ENV[key]


@dataclass(frozen=True)
class DataflowSettings:
    """The resolved settings of one pipeline's job."""

    project: str
    region: str
    temp_location: str
    staging_location: str
    sdk_container_image: str
    endpoint: str | None = None
    extras: Mapping[str, str] = field(default_factory=dict)  # optional Beam flags, by name
    flex_template: str | None = None

    @property
    def location(self) -> JobLocation:
        return JobLocation(self.project, self.region, self.endpoint)

    @property
    def no_auth(self) -> bool:
        """Only a localhost endpoint is called without Google credentials (see module doc)."""
        return self.location.no_auth

    def beam_flags(self, job_name: str) -> list[str]:
        """Beam's command-line options for a streaming job named ``job_name`` here."""
        flags = ["--runner=DataflowRunner", "--streaming", f"--job_name={job_name}",
                 f"--project={self.project}", f"--region={self.region}",
                 f"--temp_location={self.temp_location}",
                 f"--staging_location={self.staging_location}",
                 f"--sdk_container_image={self.sdk_container_image}"]
        if self.endpoint:
            flags.append(f"--dataflow_endpoint={self.endpoint}")
        if self.no_auth:
            flags.append("--no_auth")
        flags += [f"--{key}={value}" for key, value in sorted(self.extras.items())]
        return flags


    def flex_environment(self) -> dict[str, Any]:
        """The Flex Template launch's ``environment`` (``FlexTemplateRuntimeEnvironment``)."""
        env: dict[str, Any] = {"tempLocation": self.temp_location,
                               "stagingLocation": self.staging_location,
                               "sdkContainerImage": self.sdk_container_image,
                               "enableStreamingEngine": True}
        for key, name in _FLEX_ENVIRONMENT.items():
            if key in self.extras:
                value = self.extras[key]
                env[name] = int(value) if key == "max_num_workers" else value
        return env


_FLEX_ENVIRONMENT = {"service_account_email": "serviceAccountEmail", "subnetwork": "subnetwork",
                     "machine_type": "machineType", "max_num_workers": "maxWorkers"}


def resolve_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> DataflowSettings:
    """``runner.options`` first, then ``env``; ``DefinitionError`` names the first bad setting
    (and lists every missing one in ``details['missing']``)."""
    values: dict[str, str] = {}
    for key in (*_REQUIRED, *_OPTIONAL):
        value = engine_option(options, env, key, env_var(key),
                              whole_number=key == "max_num_workers")
        if value is not None:
            values[key] = value
    missing = [key for key in _REQUIRED if key not in values]
    if missing:
        raise missing_setting("Dataflow", missing[0], env_var(missing[0]), _NEEDS[missing[0]],
                              missing=[f"runner.options.{k}" for k in missing])
    for key, (pattern, allowed) in _RULES.items():
        if key in values and not pattern.match(values[key]):
            raise DefinitionError(f"runner.options.{key}", f"runner.options.{key} "
                                  f"{values[key]!r} is not {allowed}")
    endpoint = values.pop("dataflow_endpoint", None)
    flex_template = values.pop("flex_template", None)
    if endpoint is not None:
        _check_endpoint(endpoint)
    if "max_num_workers" in values and not _positive_int(values["max_num_workers"]):
        raise DefinitionError("runner.options.max_num_workers", "runner.options.max_num_workers "
                              f"{values['max_num_workers']!r} is not a whole number >= 1")
    return DataflowSettings(project=values.pop("project"), region=values.pop("region"),
                            temp_location=values.pop("temp_location"),
                            staging_location=values.pop("staging_location"),
                            sdk_container_image=values.pop("sdk_container_image"),
                            endpoint=endpoint,
                            extras=values, flex_template=flex_template)


def env_location(env: Mapping[str, str]) -> JobLocation:
    """The environment's project, region and endpoint: where a job recorded without its
    location is addressed (the other settings matter only to a launch)."""
    values = {key: str(env.get(env_var(key), "")).strip()
              for key in ("project", "region", "dataflow_endpoint")}
    for key in ("project", "region"):
        if not values[key]:
            raise DefinitionError(f"runner.options.{key}", "a Dataflow job recorded without "
                                  f"its location is addressed with {env_var(key)}: set it")
        pattern, allowed = _RULES[key]
        if not pattern.match(values[key]):
            raise DefinitionError(f"runner.options.{key}", f"{env_var(key)} "
                                  f"{values[key]!r} is not {allowed}")
    endpoint = values["dataflow_endpoint"] or None
    if endpoint is not None:
        _check_endpoint(endpoint)
    return JobLocation(values["project"], values["region"], endpoint)


def _check_endpoint(endpoint: str) -> None:
    url = urlsplit(endpoint)
    if url.scheme == "https" and url.hostname:
        return
    if url.scheme == "http" and url.hostname == "localhost":
        return
    raise DefinitionError("runner.options.dataflow_endpoint", "runner.options.dataflow_endpoint "
                          "must be an https:// URL (http:// only for a localhost test server), "
                          f"not {endpoint[:100]!r}")


def _positive_int(text: str) -> bool:
    return text.isdigit() and int(text) >= 1
