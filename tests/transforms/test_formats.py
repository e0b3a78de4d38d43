"""The format registry: names, compressions and extensions, and the errors naming them."""

from __future__ import annotations

import pytest

from transforms.formats import FILE_FORMATS, file_extension, file_format


def test_every_format_defaults_to_one_of_its_own_compressions() -> None:
    assert list(FILE_FORMATS) == ["parquet", "jsonl", "csv"]
    for name, found in FILE_FORMATS.items():
        assert found.name == name and found.default_compression in found.compressions


def test_extensions_follow_the_compression() -> None:
    assert file_extension("parquet", "gzip") == "parquet"
    assert file_extension("jsonl") == "jsonl.gz" and file_extension("jsonl", "none") == "jsonl"
    assert file_extension("csv", "gzip") == "csv.gz"


@pytest.mark.parametrize(("name", "compression", "message"), [
    ("orc", None, "unknown format 'orc': allowed parquet, jsonl, csv"),
    (["parquet"], None, "unknown format ['parquet']: allowed parquet, jsonl, csv"),
    ("csv", "zstd", "unknown compression 'zstd' for csv: allowed gzip, none"),
])
def test_an_unknown_name_fails_with_the_allowed_names(name: object, compression: object,
                                                      message: str) -> None:
    with pytest.raises(ValueError) as caught:
        file_format(name, compression)
    assert str(caught.value) == message


def test_a_null_compression_is_not_the_default() -> None:
    with pytest.raises(ValueError, match="unknown compression None for parquet"):
        FILE_FORMATS["parquet"].check_compression(None)
    assert FILE_FORMATS["parquet"].check_compression("lz4") == "lz4"
