"""pipeline.do's Dataflow Flex Template launcher: builds a pipeline's streaming job and submits it.

Google's launcher container runs this file (FLEX_TEMPLATE_PYTHON_PY_FILE) with
``--job_spec=gs://...`` (this template's one parameter, see metadata.json) and
the job's Beam options. The work is ``beam_pipelines.runners.dataflow_job``:
the same code the control plane's DataflowRunner path runs.
"""

from beam_pipelines.runners.dataflow_job import launcher_main

if __name__ == "__main__":
    launcher_main()
