"""The warehouse server's pure parts: reading statements, decoding bodies, splitting params."""

from __future__ import annotations

import gzip
import zlib

import lz4.frame
import pytest
import zstandard

from undertow.infra.clickhouse_http import (
    ClickHouseException,
    QueryResult,
    content_type_for,
    decode_body,
    parse_multipart,
    parse_statement,
    split_params,
)


@pytest.mark.parametrize(
    ("sql", "keyword", "output_format"),
    [
        (b"SELECT 1", "SELECT", None),
        (b"select 1 format JSONEachRow", "SELECT", "JSONEachRow"),
        (b"SELECT 1\n FORMAT Native;", "SELECT", "Native"),
        (b"SELECT 1 FORMAT JSON SETTINGS max_threads = 1", "SELECT", "JSON"),
        (b"SELECT format FROM t", "SELECT", None),
        (b"SELECT * FROM format(JSONEachRow, '{\"a\": 1}')", "SELECT", None),
        (b"SELECT 'FORMAT CSV' -- FORMAT TSV", "SELECT", None),
        (b"  /* hi */ (SELECT 1) FORMAT CSV", "(", "CSV"),
        (b"WITH 1 AS x SELECT x", "WITH", None),
        (b"SHOW TABLES", "SHOW", None),
    ],
)
def test_statement_kind_and_output_format(
    sql: bytes, keyword: str, output_format: str | None
) -> None:
    statement = parse_statement(sql)
    assert (statement.keyword, statement.output_format) == (keyword, output_format)
    assert statement.sql == sql and statement.insert_format is None


def test_insert_data_follows_its_format_clause() -> None:
    statement = parse_statement(b'INSERT INTO db.t (a, `format`) FORMAT JSONEachRow {"a": 1}\n')
    assert statement.sql == b"INSERT INTO db.t (a, `format`)"
    assert statement.insert_format == "JSONEachRow"
    assert statement.data == b'{"a": 1}\n'


@pytest.mark.parametrize(
    ("sql", "data"),
    [
        (b"INSERT INTO t FORMAT TSV\n1\tx\n", b"1\tx\n"),
        (b"INSERT INTO t FORMAT TSV  \r\n\n1\n", b"\n1\n"),  # blanks and one line break only
        (b"INSERT INTO t FORMAT RowBinary\n\x00\x01;\xff", b"\x00\x01;\xff"),  # binary, any bytes
        (b"INSERT INTO t FORMAT CSV", b""),
    ],
)
def test_insert_data_starts_after_one_line_break(sql: bytes, data: bytes) -> None:
    assert parse_statement(sql).data == data


def test_insert_edge_cases() -> None:
    named_format = parse_statement(b"INSERT INTO format FORMAT CSV\n1\n")
    assert (named_format.sql, named_format.insert_format) == (b"INSERT INTO format", "CSV")
    settings = parse_statement(b"INSERT INTO t SETTINGS async_insert=0 FORMAT Native\n\x01")
    assert settings.sql == b"INSERT INTO t SETTINGS async_insert=0"
    values = parse_statement(b"INSERT INTO t VALUES (1, 'FORMAT CSV'); ")
    assert values.insert_format is None and values.keyword == "INSERT"
    select = parse_statement(b"INSERT INTO t SELECT * FROM input('a UInt8') FORMAT CSV\n1\n")
    assert select.insert_select and select.insert_format == "CSV" and select.data == b"1\n"
    assert select.input_call is not None
    start, args_start, args_end, end = select.input_call
    assert select.sql[start:end] == b"input('a UInt8')"
    assert select.sql[args_start:args_end] == b"'a UInt8'"
    plain = parse_statement(b"INSERT INTO t SELECT 1")
    assert plain.insert_format is None


@pytest.mark.parametrize("sql", [b"", b"  \n-- nothing\n", b"/* */"])
def test_an_empty_query_is_a_syntax_error(sql: bytes) -> None:
    with pytest.raises(ClickHouseException) as error:
        parse_statement(sql)
    assert error.value.code == 62 and error.value.http_status == 400


def test_one_statement_per_request() -> None:
    assert parse_statement(b"SELECT 1;").keyword == "SELECT"
    assert parse_statement(b"SELECT 1; -- trailing comment").keyword == "SELECT"
    assert parse_statement(b"SELECT ';' AS semi").keyword == "SELECT"
    with pytest.raises(ClickHouseException, match="Multi-statements are not allowed"):
        parse_statement(b"SELECT 1; SELECT 2")
    with pytest.raises(ClickHouseException, match="Multi-statements"):
        parse_statement(b"CREATE TABLE t (a UInt8) ENGINE = Memory; DROP TABLE t")


def test_engine_errors_keep_their_code() -> None:
    text = "Streaming insert finish failed: Code: 27. DB::Exception: Cannot parse. (X) (version 1)"
    error = ClickHouseException.from_engine(RuntimeError(text))
    assert error.code == 27 and str(error).startswith("Code: 27. DB::Exception: Cannot parse.")
    assert error.http_status == 400
    assert ClickHouseException.from_engine(RuntimeError("Code: 60. DB::E")).http_status == 404
    unknown = ClickHouseException.from_engine(RuntimeError("segfault"))
    assert unknown.code == 1002 and unknown.http_status == 500


PAYLOAD = b"INSERT INTO t FORMAT JSONEachRow " + b'{"a": 1}\n' * 1000


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        (None, PAYLOAD),
        ("identity", PAYLOAD),
        ("gzip", gzip.compress(PAYLOAD)),
        ("deflate", zlib.compress(PAYLOAD)),
        ("zstd", zstandard.ZstdCompressor().compress(PAYLOAD[:100])
         + zstandard.ZstdCompressor().compress(PAYLOAD[100:])),
        ("lz4", lz4.frame.compress(PAYLOAD[:100]) + lz4.frame.compress(PAYLOAD[100:])),
    ],
    # named by encoding: a gzip body carries its creation time, and test ids must be the
    # same in every pytest-xdist worker
    ids=["none", "identity", "gzip", "deflate", "zstd", "lz4"],
)  # fmt: skip
def test_compressed_bodies_decode_across_frames(encoding: str | None, body: bytes) -> None:
    assert decode_body(body, encoding) == PAYLOAD


def test_bad_or_unknown_encodings_are_clickhouse_errors() -> None:
    with pytest.raises(ClickHouseException) as bad:
        decode_body(b"not lz4", "lz4")
    assert bad.value.code == 271
    with pytest.raises(ClickHouseException) as unknown:
        decode_body(b"x", "snappy")
    assert unknown.value.code == 89


def test_multipart_fields_carry_query_and_params() -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\n'
        f"SELECT {{x:String}}\r\n--{boundary}\r\n"
        f'Content-Disposition: form-data; name="param_x"\r\n\r\nit\'s\r\n--{boundary}--\r\n'
    ).encode()
    fields = parse_multipart(body, f"multipart/form-data; boundary={boundary}")
    assert fields == {"query": "SELECT {x:String}", "param_x": "it's"}


def test_params_split_into_settings_and_binds() -> None:
    settings, binds = split_params(
        {
            "query": "SELECT 1",
            "database": "undertow",
            "session_id": "s",
            "wait_end_of_query": "1",
            "http_headers_progress_interval_ms": "1000",
            "max_threads": "2",
            "date_time_input_format": "best_effort",
            "param_x": "1",
        }
    )
    assert settings == {"max_threads": "2", "date_time_input_format": "best_effort"}
    assert binds == {"x": "1"}


def test_summary_and_content_types() -> None:
    summary = QueryResult(b"1\n", "TabSeparated", written_rows=3, elapsed_ns=7).summary()
    assert '"written_rows":"3"' in summary and '"elapsed_ns":"7"' in summary
    assert content_type_for("TSVWithNames").startswith("text/tab-separated-values")
    assert content_type_for("JSONEachRow").startswith("application/json")
    assert content_type_for("Native") == "application/octet-stream"


@pytest.mark.parametrize(
    "sql",
    [
        b"INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)",
        b"INSERT INTO t SELECT 1; DROP TABLE t",
        b"SELECT 1; -- fine\nSELECT 2",
    ],
)
def test_a_second_statement_after_an_insert_is_refused(sql: bytes) -> None:
    with pytest.raises(ClickHouseException, match="Multi-statements"):
        parse_statement(sql)
    assert parse_statement(b"INSERT INTO t VALUES (1, ';'), (2, 'x');\n").keyword == "INSERT"
