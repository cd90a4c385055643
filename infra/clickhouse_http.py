"""ClickHouse's HTTP interface over one embedded ClickHouse engine (chdb).

No modern ClickHouse server installs from the registries these machines reach, so the local
stack runs the real engine in-process with ``chdb`` and fronts it with a small Starlette app
that speaks enough of ClickHouse's HTTP protocol for unmodified clients: ``clickhouse-connect``
with its default settings (compressed request bodies included) and plain ``curl``. Production
points the same client at a ClickHouse server instead; nothing else changes.

One process owns the chdb data directory and runs every statement on one worker thread, off
the event loop. What the HTTP interface offers here:

* ``GET /ping`` and ``GET /`` answer ``Ok.``; queries come in the ``query`` URL parameter, the
  body, or both (the parameter is the start of the statement and the body continues it, so an
  INSERT's data can follow its ``FORMAT`` clause in the body);
* ``database``, ``default_format``, ``param_<name>`` bound parameters and ClickHouse settings as
  URL parameters (or ``multipart/form-data`` fields, as clickhouse-connect sends large binds);
* request bodies compressed with lz4 (frames), zstd, gzip or deflate; responses are plain;
* errors as ClickHouse sends them: ``X-ClickHouse-Exception-Code`` and a ``Code: N.`` body.

Limits, stated plainly: one shared engine session, so a ``SET`` or ``USE`` statement sent as a
query lasts until something changes it again (ClickHouse scopes them to an HTTP session);
``session_id`` and the like are accepted and ignored; no external-data tables; no
authentication, which is why the server binds to loopback by default.

``undertow.infra.warehouse`` runs it as the local stack's warehouse process.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import re
import socket
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undertow.infra import InfraError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger("undertow.infra.warehouse")  # the process it serves in

DEFAULT_FORMAT = "TabSeparated"

# ClickHouse error codes this module raises itself or maps to HTTP statuses.
SYNTAX_ERROR = 62
NOT_IMPLEMENTED = 48
UNKNOWN_FORMAT = 73
UNKNOWN_SETTING = 115
UNKNOWN_COMPRESSION_METHOD = 89
CANNOT_DECOMPRESS = 271
READONLY = 164
UNKNOWN_EXCEPTION = 1002

# Mirrors ClickHouse's src/Server/HTTP/exceptionCodeToHTTPStatus.cpp, so clients that look at
# the status (and retry 503s) behave as they do against a server.
_HTTP_STATUS_BY_CODE: dict[int, int] = {
    194: 401,  # REQUIRED_PASSWORD
    **dict.fromkeys((192, 193, 516, 512, 497), 403),  # bad user/password/role, ACCESS_DENIED
    **dict.fromkeys(
        # BAD_ARGUMENTS, CANNOT_PARSE_*, SYNTAX_ERROR, INCORRECT_DATA, TYPE_MISMATCH, ...
        (36, 427, 6, 25, 26, 38, 41, 72, 441, 675, 676, 27, 376, 15, 44, 37, 123, 8, 167, 168),
        400,
    ),
    **dict.fromkeys((223, 62, 117, 53, 321), 400),
    **dict.fromkeys((60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511), 404),  # UNKNOWN_*
    229: 413,  # QUERY_IS_TOO_LARGE
    48: 501,  # NOT_IMPLEMENTED
    **dict.fromkeys((209, 76, 439), 503),  # SOCKET_TIMEOUT, CANNOT_OPEN_FILE, CANNOT_SCHEDULE_TASK
    381: 411,  # HTTP_LENGTH_REQUIRED
    159: 408,  # TIMEOUT_EXCEEDED
    779: 415,  # UNSUPPORTED_MEDIA_TYPE
}

# URL parameters that belong to the HTTP protocol or the client, not to the query's settings.
_PROTOCOL_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "enable_http_compression",
        "wait_end_of_query",
        "send_progress_in_http_headers",
        "client_protocol_version",
        "cancel_http_readonly_queries_on_client_close",
        "user",
        "password",
        "quota_key",
        "role",
        "buffer_size",
        "stacktrace",
        "readonly",  # SET readonly would lock the shared session; GET is read-only anyway
    }
)
# Formats chdb's Python layer turns into Python objects; they are not ClickHouse formats.
_PYTHON_ONLY_FORMATS = frozenset({"dataframe", "arrowtable", "datastore", "debug"})
# Statements a GET may run: ClickHouse treats GET as readonly=2 (reads and settings).
_READ_ONLY_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "SET", "USE", "("}
)
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ERROR_CODE = re.compile(r"Code: (\d+)\. ")
_VERSION_TRAILER = re.compile(r"\(version [^)]*\)\s*$")


class ClickHouseException(InfraError):
    """A query failed; carries the ClickHouse error code the HTTP response reports."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def from_engine(cls, exc: BaseException) -> ClickHouseException:
        """Wrap an engine error, keeping its ``Code: N. DB::Exception: ...`` text."""
        text = str(exc)
        start = text.find("Code: ")
        if start > 0:
            text = text[start:]  # chdb may prefix its own words ("Streaming insert ...: ")
        match = _ERROR_CODE.match(text)
        if match is None:
            return cls(UNKNOWN_EXCEPTION, f"Code: {UNKNOWN_EXCEPTION}. DB::Exception: {text}")
        return cls(int(match.group(1)), text.strip())

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS_BY_CODE.get(self.code, 500)


def _exception(code: int, name: str, message: str) -> ClickHouseException:
    return ClickHouseException(code, f"Code: {code}. DB::Exception: {message}. ({name})")


# --------------------------------------------------------------------------------------------
# Reading just enough SQL: statement kind, FORMAT clauses, where INSERT data starts.
# --------------------------------------------------------------------------------------------

_WORD = "word"
_TOKEN = re.compile(
    rb"""
      (?P<ws>\s+)
    | (?P<comment>(?:--|\#!|\#\ )[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<ident>"(?:[^"\\]|\\.)*"|`(?:[^`\\]|\\.)*`)
    | (?P<heredoc>\$(?P<tag>[A-Za-z0-9_]*)\$.*?\$(?P=tag)\$)
    | (?P<word>[A-Za-z0-9_\x80-\xff]+)
    | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: bytes
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.decode("utf-8", "replace").upper() if self.kind == _WORD else ""


def _tokens(buf: bytes) -> Iterator[_Token]:
    """Significant tokens of ``buf`` (whitespace and comments skipped), lazily."""
    for match in _TOKEN.finditer(buf):
        kind = str(match.lastgroup)
        if kind not in ("ws", "comment"):
            yield _Token(kind, match.group(), match.start(), match.end())


@dataclass(frozen=True)
class Statement:
    """One request's SQL, read just far enough to route it.

    ``sql`` is what the engine runs: the whole statement, or for an INSERT whose data follows
    its ``FORMAT`` clause, the statement before ``FORMAT`` (``insert_format`` and ``data`` hold
    the rest). ``output_format`` is the statement's own ``FORMAT`` clause, if any.
    ``input_call`` locates ``input(<structure>)`` in an ``INSERT ... SELECT``: the call's start,
    its arguments' start and end, and the call's end.
    """

    sql: bytes
    keyword: str = ""
    output_format: str | None = None
    format_span: tuple[int, int] | None = None
    insert_format: str | None = None
    data: bytes = b""
    insert_select: bool = False
    input_call: tuple[int, int, int, int] | None = None


def parse_statement(buf: bytes) -> Statement:
    """Split ``buf`` (query parameter plus body) into what :class:`Engine` needs.

    Raises :class:`ClickHouseException` for an empty query or several statements, which the
    HTTP interface refuses as ClickHouse does.
    """
    tokens = _tokens(buf)
    first = next(tokens, None)
    if first is None:
        raise _exception(SYNTAX_ERROR, "SYNTAX_ERROR", "Syntax error: Empty query")
    if first.upper == "INSERT":
        # Read lazily: the data after FORMAT can be megabytes of anything.
        return _parse_insert(buf, tokens)
    toks = [first, *tokens]
    keyword = "(" if first.text == b"(" else first.upper
    depth = 0
    output_format: str | None = None
    format_span: tuple[int, int] | None = None
    for i, token in enumerate(toks):
        following = toks[i + 1] if i + 1 < len(toks) else None
        if token.text == b"(":
            depth += 1
        elif token.text == b")":
            depth -= 1
        elif token.text == b";" and depth <= 0:
            _refuse_more(iter(toks[i + 1 :]))
        elif depth == 0 and token.upper == "FORMAT" and following is not None:
            # FORMAT <name> is the output clause only where it ends the statement.
            after = toks[i + 2] if i + 2 < len(toks) else None
            if following.kind == _WORD and (
                after is None or after.text == b";" or after.upper == "SETTINGS"
            ):
                output_format = following.text.decode()
                format_span = (token.start, following.end)
    return Statement(buf, keyword, output_format=output_format, format_span=format_span)


def _parse_insert(buf: bytes, tokens: Iterator[_Token]) -> Statement:
    """An INSERT: find ``FORMAT <name>`` (data follows it), else read it all as SQL."""
    depth = 0
    insert_select = values = False
    previous: _Token | None = None
    input_start = input_depth = args_start = -1
    input_call: tuple[int, int, int, int] | None = None
    for token in tokens:
        if token.text == b"(":
            depth += 1
            if previous is not None and previous.upper == "INPUT" and input_call is None:
                input_start, input_depth, args_start = previous.start, depth, token.end
        elif token.text == b")":
            if depth == input_depth and input_call is None:
                input_call = (input_start, args_start, token.start, token.end)
            depth -= 1
        elif token.text == b";" and depth <= 0:
            _refuse_more(tokens)
            break
        elif depth == 0 and not values and token.kind == _WORD and _is_keyword(previous):
            word = token.upper
            if word in ("SELECT", "WITH"):
                insert_select = True
            elif word == "VALUES" and not insert_select:
                values = True  # inline VALUES: the engine parses them; only look for a second ;
            elif word == "FORMAT":
                name = next(tokens, None)
                if name is None or name.kind != _WORD:
                    break
                return Statement(
                    sql=buf[: token.start].rstrip(),
                    keyword="INSERT",
                    insert_format=name.text.decode(),
                    data=buf[_data_start(buf, name.end) :],
                    insert_select=insert_select,
                    input_call=input_call if insert_select else None,
                )
        previous = token
    return Statement(buf, "INSERT")


def _refuse_more(tokens: Iterator[_Token]) -> None:
    """After a top-level ``;`` only comments may follow: one statement per request."""
    following = next(tokens, None)
    if following is not None:
        raise _exception(
            SYNTAX_ERROR,
            "SYNTAX_ERROR",
            "Syntax error (Multi-statements are not allowed): failed at position "
            f"{following.start + 1}: send one statement per request",
        )


def _is_keyword(previous: _Token | None) -> bool:
    """False where the next word is a name (``INSERT INTO format``, ``db.format``, ``(a, b)``)."""
    if previous is None:
        return True
    return previous.upper not in ("INTO", "TABLE", "FUNCTION") and previous.text not in (
        b".",
        b",",
    )


def _data_start(buf: bytes, pos: int) -> int:
    """Where inline INSERT data starts: after blanks and one line break, as ClickHouse reads it."""
    end = len(buf)
    while pos < end and buf[pos] in b" \t\f":
        pos += 1
    if pos < end and buf[pos] == 0x0D:
        pos += 1
    if pos < end and buf[pos] == 0x0A:
        pos += 1
    return pos


# --------------------------------------------------------------------------------------------
# Request bodies: Content-Encoding and multipart forms.
# --------------------------------------------------------------------------------------------


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """Undo ``Content-Encoding`` (lz4 frames, zstd, gzip, deflate, br) on a request body.

    clickhouse-connect compresses each insert block as its own frame, so lz4 and zstd bodies are
    read across concatenated frames.
    """
    method = (encoding or "").strip().lower()
    if not body or method in ("", "identity", "none"):
        return body
    try:
        if method == "lz4":
            return _lz4_frames(body)
        if method == "zstd":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(body), read_across_frames=True
            )
            return reader.read()
        if method in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if method == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, no zlib header
        if method == "br":
            try:
                import brotli
            except ImportError as exc:
                raise _exception(
                    UNKNOWN_COMPRESSION_METHOD,
                    "UNKNOWN_COMPRESSION_METHOD",
                    "Content-Encoding br needs the brotli package, which is not installed",
                ) from exc
            return bytes(brotli.decompress(body))
    except ClickHouseException:
        raise
    except Exception as exc:  # each library raises its own error type
        raise _exception(
            CANNOT_DECOMPRESS, "CANNOT_DECOMPRESS", f"Cannot decode {method} request body: {exc}"
        ) from exc
    raise _exception(
        UNKNOWN_COMPRESSION_METHOD,
        "UNKNOWN_COMPRESSION_METHOD",
        f"Unknown Content-Encoding {encoding!r}; expected lz4, zstd, gzip, deflate or br",
    )


def _lz4_frames(body: bytes) -> bytes:
    """Concatenated LZ4 frames, read in place (``unused_data`` would copy the rest per frame)."""
    import lz4.frame

    out = bytearray()
    view = memoryview(body)
    offset = 0
    while offset < len(body):
        context = lz4.frame.create_decompression_context()
        end_of_frame = False
        while not end_of_frame:
            chunk, consumed, end_of_frame = lz4.frame.decompress_chunk(context, view[offset:])
            out += chunk
            offset += consumed
            if not end_of_frame and consumed == 0:
                raise ValueError("truncated lz4 frame")
    return bytes(out)


def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    """The text fields of a ``multipart/form-data`` body (clickhouse-connect's large binds).

    File parts are ClickHouse external-data tables, which this server does not offer.
    """
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise _exception(
                NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED",
                "External data (multipart file parts) is not supported by the local warehouse",
            )
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode() if isinstance(payload, bytes) else ""
    return fields


# --------------------------------------------------------------------------------------------
# The engine: one chdb session, one worker thread.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryRequest:
    """Everything :meth:`Engine.execute` needs from one HTTP request."""

    statement: Statement
    output_format: str = DEFAULT_FORMAT
    database: str = "default"
    settings: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    read_only: bool = False


@dataclass(frozen=True)
class QueryResult:
    """The body of a finished query and the counters for ``X-ClickHouse-Summary``."""

    body: bytes
    output_format: str
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    result_bytes: int = 0
    elapsed_ns: int = 0

    def summary(self) -> str:
        """``X-ClickHouse-Summary`` as ClickHouse writes it (numbers as strings)."""
        values = {
            "read_rows": self.read_rows,
            "read_bytes": self.read_bytes,
            "written_rows": self.written_rows,
            "written_bytes": self.written_bytes,
            "total_rows_to_read": self.read_rows,
            "result_rows": self.result_rows,
            "result_bytes": self.result_bytes,
            "elapsed_ns": self.elapsed_ns,
        }
        return json.dumps({k: str(v) for k, v in values.items()}, separators=(",", ":"))


class Engine:
    """The one chdb session of this process; every call runs on one worker thread.

    chdb sessions are not safe to drive from several threads at once, and a streaming insert
    blocks the session until it finishes, so statements are serialised. Per-request settings
    and the default database are applied to the shared session lazily: only what differs
    from the previous request is ``SET`` (or reset to ``DEFAULT``), so a client that sends the
    same settings every time costs no extra statements.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.version = ""
        self.timezone = "UTC"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        self._session: Any = None
        self._database: str | None = None
        self._applied: dict[str, str | None] = {}

    async def open(self) -> None:
        await self._call(self._open)

    async def close(self) -> None:
        try:
            await self._call(self._close)
        finally:
            self._executor.shutdown(wait=True)

    async def execute(self, request: QueryRequest) -> QueryResult:
        """Run ``request`` on the worker thread; raises :class:`ClickHouseException`."""
        result: QueryResult = await self._call(self._execute, request)
        return result

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        from chdb import session

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._session = session.Session(str(self.data_dir))
        row = self._query(b"SELECT version(), timezone()").bytes().decode().strip()
        self.version, self.timezone = row.split("\t")
        self._database = None

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _query(
        self, sql: bytes | str, fmt: str = DEFAULT_FORMAT, params: Mapping[str, str] | None = None
    ) -> Any:
        if self._session is None:
            raise _exception(UNKNOWN_EXCEPTION, "UNKNOWN_EXCEPTION", "The engine is closed")
        try:
            return self._session.query(sql, fmt, params=dict(params or {}))
        except RuntimeError as exc:
            raise ClickHouseException.from_engine(exc) from None

    def _execute(self, request: QueryRequest) -> QueryResult:
        started = time.perf_counter_ns()
        statement = request.statement
        if request.read_only and statement.keyword not in _READ_ONLY_KEYWORDS:
            raise _exception(
                READONLY,
                "READONLY",
                "Cannot execute query in readonly mode. For queries over HTTP, method GET "
                "implies readonly. You should use method POST for modifying queries",
            )
        self._use(request.database)
        self._apply_settings(request.settings)
        try:
            if statement.insert_format is None:
                result = self._query(statement.sql, request.output_format, request.params)
            elif statement.insert_select:
                result = self._insert_select(statement, request.params)
            else:
                return self._insert(statement, request.output_format, started)
        finally:
            if statement.keyword == "USE":
                self._database = None
            elif statement.keyword == "SET":
                self._applied = dict.fromkeys(self._applied)  # values now unknown
        body = bytes(result.bytes() or b"")
        output_format = statement.output_format or request.output_format
        if not body and output_format == "Native" and statement.keyword in ("SELECT", "WITH", "("):
            body = self._native_header(statement, request.params)
        return QueryResult(
            body=body,
            output_format=output_format,
            read_rows=int(result.storage_rows_read()),
            read_bytes=int(result.storage_bytes_read()),
            written_rows=int(result.rows_written()),
            written_bytes=int(result.bytes_written()),
            result_rows=int(result.rows_read()),
            result_bytes=len(body),
            elapsed_ns=time.perf_counter_ns() - started,
        )

    def _native_header(self, statement: Statement, params: Mapping[str, str]) -> bytes:
        """A header-only Native block for an empty result, as a ClickHouse server sends it.

        chdb writes nothing for an empty Native result; clients then lose the column names
        and types (an empty DataFrame without columns), so they are described and encoded here.
        """
        sql = statement.sql
        if statement.format_span is not None:
            start, end = statement.format_span
            sql = sql[:start] + sql[end:]
        sql = sql.rstrip().rstrip(b";")
        try:
            described = self._query(b"DESCRIBE (" + sql + b"\n)", "JSONCompactEachRow", params)
        except ClickHouseException:
            logger.debug("could not describe an empty Native result", exc_info=True)
            return b""
        columns = [json.loads(line)[:2] for line in described.bytes().splitlines() if line]
        out = bytearray(_varint(len(columns)) + _varint(0))
        for name, type_name in columns:
            for text in (name.encode(), type_name.encode()):
                out += _varint(len(text)) + text
        return bytes(out)

    def _insert(self, statement: Statement, output_format: str, started: int) -> QueryResult:
        """Stream inline data into ``INSERT INTO t [(cols)] [SETTINGS ...]`` in its format."""
        assert self._session is not None and statement.insert_format is not None
        try:
            with self._session.send_insert(
                statement.sql.decode(), statement.insert_format
            ) as inserter:
                if statement.data:
                    inserter.append(statement.data)
                written = inserter.finish()
        except RuntimeError as exc:
            raise ClickHouseException.from_engine(exc) from None
        except UnicodeDecodeError as exc:
            raise _exception(SYNTAX_ERROR, "SYNTAX_ERROR", f"INSERT is not UTF-8: {exc}") from None
        return QueryResult(
            body=b"",
            output_format=output_format,
            written_rows=int(written.rows_written),
            written_bytes=int(written.bytes_written),
            elapsed_ns=time.perf_counter_ns() - started,
        )

    def _insert_select(self, statement: Statement, params: Mapping[str, str]) -> Any:
        """``INSERT ... SELECT ... FROM input(<structure>) FORMAT F <data>``.

        chdb does not feed inline data to ``input()`` (it inserts nothing, silently), so the
        data goes to a temporary file and ``input(...)`` becomes ``file(<tmp>, F, ...)``.
        """
        assert statement.insert_format is not None
        if statement.input_call is None:
            raise _exception(
                NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED",
                "INSERT ... SELECT with data after FORMAT needs the data read by input(...)",
            )
        start, args_start, args_end, end = statement.input_call
        sql = statement.sql
        with tempfile.TemporaryDirectory(prefix="undertow-insert-") as tmp:
            path = Path(tmp) / "data"
            path.write_bytes(statement.data)
            call = f"file({_quote_string(str(path))}, {_quote_string(statement.insert_format)}, "
            rewritten = sql[:start] + call.encode() + sql[args_start:args_end] + b")" + sql[end:]
            return self._query(rewritten, DEFAULT_FORMAT, params)

    def _use(self, database: str) -> None:
        if database != self._database:
            self._query(f"USE {_quote_identifier(database)}")
            self._database = database

    def _apply_settings(self, wanted: Mapping[str, str]) -> None:
        """Make the session's request settings equal ``wanted``, changing only the difference."""
        for name in wanted:
            if not _SETTING_NAME.fullmatch(name):
                raise _exception(UNKNOWN_SETTING, "UNKNOWN_SETTING", f"Unknown setting {name!r}")
        to_set = {
            k: v for k, v in wanted.items() if k not in self._applied or self._applied[k] != v
        }
        to_reset = [k for k in self._applied if k not in wanted]
        if not to_set and not to_reset:
            return
        clauses = [f"{k} = DEFAULT" for k in to_reset]
        clauses += [f"{k} = {_quote_string(v)}" for k, v in to_set.items()]
        try:
            self._query("SET " + ", ".join(clauses))
        except ClickHouseException:
            self._apply_one_by_one(to_set, to_reset)
            return
        for name in to_reset:
            del self._applied[name]
        self._applied.update(to_set)

    def _apply_one_by_one(self, to_set: Mapping[str, str], to_reset: list[str]) -> None:
        """The slow path after a combined SET failed: find the bad setting, keep the rest."""
        for name in to_reset:
            try:
                self._query(f"SET {name} = DEFAULT")
            except ClickHouseException:
                logger.warning("could not reset setting %s to its default", name)
            del self._applied[name]
        for name, value in to_set.items():
            self._applied.pop(name, None)
            self._query(f"SET {name} = {_quote_string(value)}")
            self._applied[name] = value


def _varint(value: int) -> bytes:
    """ClickHouse's unsigned LEB128, as Native blocks count columns, rows and bytes."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# --------------------------------------------------------------------------------------------
# The HTTP interface.
# --------------------------------------------------------------------------------------------

_CONTENT_TYPES: tuple[tuple[str, str], ...] = (
    ("tabseparated", "text/tab-separated-values; charset=UTF-8"),
    ("tsv", "text/tab-separated-values; charset=UTF-8"),
    ("csv", "text/csv; charset=UTF-8"),
    ("json", "application/json; charset=UTF-8"),
    ("ndjson", "application/x-ndjson; charset=UTF-8"),
    ("xml", "application/xml; charset=UTF-8"),
    ("pretty", "text/plain; charset=UTF-8"),
    ("vertical", "text/plain; charset=UTF-8"),
    ("markdown", "text/markdown; charset=UTF-8"),
    ("values", "text/plain; charset=UTF-8"),
    ("template", "text/plain; charset=UTF-8"),
)


def content_type_for(output_format: str) -> str:
    """The ``Content-Type`` ClickHouse sends for ``output_format``."""
    lowered = output_format.lower()
    for prefix, content_type in _CONTENT_TYPES:
        if lowered.startswith(prefix):
            return content_type
    return "application/octet-stream"


def split_params(
    params: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """URL (or form) parameters as (settings, bound parameters); protocol ones dropped."""
    settings: dict[str, str] = {}
    binds: dict[str, str] = {}
    for key, value in params.items():
        if key.startswith("param_"):
            binds[key[len("param_") :]] = value
        elif key in _PROTOCOL_PARAMS or key.startswith("http_"):
            continue
        else:
            settings[key] = value
    return settings, binds


def create_app(engine: Engine, display_name: str | None = None) -> Starlette:
    """The Starlette app serving ClickHouse's HTTP interface over ``engine``."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    server_name = display_name or socket.gethostname()

    async def handle_ping(request: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def handle_query(request: Request) -> Response:
        started = time.perf_counter()
        params = dict(request.query_params)
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": server_name,
            "X-ClickHouse-Timezone": engine.timezone,
        }
        output_format = params.get("default_format") or DEFAULT_FORMAT
        status = 200
        try:
            body = b""
            if request.method == "POST":
                body = decode_body(await request.body(), request.headers.get("content-encoding"))
            content_type = request.headers.get("content-type", "")
            if content_type.lower().startswith("multipart/form-data"):
                params.update(parse_multipart(body, content_type))
                body = b""
            text = params.get("query", "").encode()
            if not text and not body and request.method != "POST":
                return PlainTextResponse("Ok.\n", headers=headers)
            if output_format.lower() in _PYTHON_ONLY_FORMATS:
                raise _exception(
                    UNKNOWN_FORMAT, "UNKNOWN_FORMAT", f"Unknown format {output_format}"
                )
            statement = parse_statement(text + b"\n" + body if text and body else text or body)
            settings, binds = split_params(params)
            result = await engine.execute(
                QueryRequest(
                    statement=statement,
                    output_format=output_format,
                    database=params.get("database") or "default",
                    settings=settings,
                    params=binds,
                    read_only=request.method != "POST",
                )
            )
            output_format = result.output_format
            headers["X-ClickHouse-Format"] = output_format
            headers["X-ClickHouse-Summary"] = result.summary()
            return Response(
                result.body, headers=headers, media_type=content_type_for(output_format)
            )
        except ClickHouseException as exc:
            status = exc.http_status
            headers["X-ClickHouse-Exception-Code"] = str(exc.code)
            message = str(exc)
            if not _VERSION_TRAILER.search(message):
                message = f"{message} (version {engine.version})"
            return PlainTextResponse(message + "\n", status_code=status, headers=headers)
        finally:
            # Never the query text or parameters: they may hold users' prompts.
            logger.info(
                "%s %s %d %.1f ms format=%s",
                request.method,
                request.url.path,
                status,
                (time.perf_counter() - started) * 1000,
                output_format,
            )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.open()
        logger.info("engine %s open on %s", engine.version, engine.data_dir)
        try:
            yield
        finally:
            await engine.close()
            logger.info("engine closed")

    return Starlette(
        routes=[
            Route("/ping", handle_ping, methods=["GET"]),
            Route("/", handle_query, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )
