"""Packaging for pipeline.do: ``pip install -e '.[dev]'``."""

from setuptools import find_packages, setup

setup(
    name="pipeline-do",
    version="0.1.0",
    description="Stream events over HTTP, transform them with SQL, land them as Parquet.",
    python_requires=">=3.10",
    packages=find_packages(include=["beam_pipelines*", "control_api*", "transforms*"]),
    include_package_data=True,
    package_data={"control_api": ["openapi.json"],
                  "control_api.console": ["templates/*.html", "static/*", "static/*/*"]},
    install_requires=[
        "apache-beam>=2.77,<2.78",
        "duckdb>=1.2",
        "pyarrow>=17,<26",
        "numpy>=1.24",
        "flask>=3.0",
        "sqlalchemy>=2.0",
        "gunicorn>=25.1",  # --no-control-socket
        "requests>=2.31",
        "prometheus-client>=0.20",
        "tqdm>=4.66",
        "zstandard>=0.22",
        "cryptography>=42",  # sink secrets at rest (Fernet)
    ],
    extras_require={
        # google-cloud-pubsub: the Dataflow pipelines' transport (runners.transports.pubsub)
        "gcp": ["google-cloud-storage>=2.14", "google-cloud-pubsub>=2.44",
                "apache-beam[gcp]>=2.77,<2.78"],
        "aws": ["boto3>=1.34", "apache-beam[aws]>=2.77,<2.78"],
        # confluent-kafka: the Flink pipelines' transport (runners.transports.kafka)
        "flink": ["confluent-kafka==2.16.1"],
        "iceberg": ["pyiceberg[sql-sqlite,pyarrow]>=0.12,<0.13"],
        "dev": [
            "pytest>=8",
            "ruff>=0.6",
            "mypy>=1.10",
            "gcp-storage-emulator>=2024.8",
            "moto[server]>=5",
            "psutil>=5.9",
            "matplotlib>=3.8",
            "schemathesis>=4.32",
            "hypothesis>=6.100",
            "openapi-spec-validator>=0.7",
            "playwright==1.65.2",  # drives Debian's chromium in tests/console (no browser download)
        ],
    },
    entry_points={"console_scripts": ["pipeline-do=control_api.cli:main"]},
)
