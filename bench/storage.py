"""Bytes per request in the warehouse: the shipped migrations in the embedded engine (chdb), one
node, with ``--traces`` requests written the way the workers write them.

    .venv/bin/python bench/storage.py [--traces 20000] [--text-chars 0]

Traffic is ``services.traffic.sample_traces`` (prompt, retrieval of 3 documents, completion,
feedback on 3 in 10), stored with the ingest worker's own row builder (``event_row``). Its
texts are short and repetitive (10 questions, a few answer templates), so ``events`` compresses
better than real traffic: ``--text-chars N`` replaces every prompt, query, document and
completion text with N characters of words drawn at random from 20,000 random words, a
pessimistic stand-in for real text (nothing repeats but the words). The scoring side is
synthetic, with the worker's shapes: one ``scores`` and one ``trace_spans`` row per event
(random scores), one ``embeddings`` row per prompt, query and completion with a
pseudo-random 384-d float32 vector (MiniLM's size, elements uniform in +-0.05, so about unit
length: random floats compress about as badly as real embeddings). Parts are merged
(OPTIMIZE FINAL) before measuring. Not counted: ``judge_scores`` (at the judge's sample
rate), and tables written per segment or incident rather than per request.

Printed per table: rows, compressed and uncompressed bytes per row (system.parts, data
only), then bytes per request (trace) over all tables.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import random
import shutil
import string
import tempfile
import time
from pathlib import Path
from typing import Any

from undertow.services.traffic import sample_traces
from undertow.services.warehouse.migrations import load_migrations
from undertow.services.warehouse.rows import EVENT_COLUMNS, event_row

TABLES = ("events", "scores", "embeddings", "trace_spans")


def randomized(
    record: dict[str, Any], rng: random.Random, vocabulary: list[str], chars: int
) -> dict[str, Any]:
    """``record`` with each of its texts replaced by ``chars`` characters of words drawn
    uniformly from ``vocabulary`` (no phrase repeats, unlike real text: pessimistic)."""

    def text() -> str:
        return " ".join(rng.choices(vocabulary, k=chars // 4 + 1))[:chars]

    kind, body = record["body"]
    body = dict(body)
    if "messages" in body:
        body["messages"] = [{**m, "content": text()} for m in body["messages"]]
    if "query" in body:
        body["query"] = text()
        body["documents"] = [{**d, "text": text()} for d in body["documents"]]
    if "text" in body:
        body["text"] = text()
    return {**record, "body": (kind, body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=20_000, help="requests to write")
    parser.add_argument("--text-chars", type=int, default=0, help="random texts of N chars")
    args = parser.parse_args()

    chdb_session: Any = importlib.import_module("chdb.session")  # the engine ships untyped

    rng = random.Random(7)
    folder = tempfile.mkdtemp(prefix="undertow-storage-")
    session = chdb_session.Session(str(Path(folder) / "chdb"))
    session.query("CREATE DATABASE undertow")
    session.query("USE undertow")
    for migration in load_migrations():
        for statement in migration.statements:
            session.query(statement)
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, chdb", flush=True)

    began = time.perf_counter()
    records = list(sample_traces(args.traces, seed=7))
    if args.text_chars:
        vocabulary = [
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(20_000)
        ]
        records = [randomized(r, rng, vocabulary, args.text_chars) for r in records]
    rows = [
        event_row(record, "undertow.events.v1", 0, offset) for offset, record in enumerate(records)
    ]
    with open(Path(folder) / "events.jsonl", "w") as out:
        for row in rows:
            out.write(json.dumps(dict(zip(EVENT_COLUMNS, row, strict=True)), default=str) + "\n")
        path = out.name
    columns = ", ".join(EVENT_COLUMNS)
    session.query(
        f"INSERT INTO events ({columns}) SELECT {columns} FROM file('{path}', 'JSONEachRow') "
        "SETTINGS date_time_input_format = 'best_effort', "
        "input_format_json_named_tuples_as_objects = 0"
    )
    session.query(
        "INSERT INTO scores (event_id, event_type, trace_id, span_id, event_time, app, "
        "environment, model, prompt_name, prompt_version, scores, scorer_versions, "
        "input_tokens, output_tokens, cost_usd, price_table_version, latency_ms) "
        "SELECT event_id, event_type, trace_id, span_id, event_time, app, environment, model, "
        "prompt_name, prompt_version, "
        "map('toxicity', randCanonical(), 'injection', randCanonical()), "
        "map('toxicity', 'toxicity.profanity@0.2.1', 'embedding', 'minilm@384d'), "
        "input_tokens, output_tokens, if(event_type = 'completion', randCanonical() / 100, NULL), "
        "'2025-06', latency_ms FROM events"
    )
    session.query(
        "INSERT INTO trace_spans (trace_id, event_id, app, environment, event_type, event_time, "
        "model, prompt_name, prompt_version, latency_ms, input_tokens, output_tokens, "
        "cached_tokens, cost_usd, toxicity, injection, feedback_score) "
        "SELECT trace_id, event_id, app, environment, event_type, event_time, model, "
        "prompt_name, prompt_version, latency_ms, input_tokens, output_tokens, cached_tokens, "
        "if(event_type = 'completion', randCanonical() / 100, NULL), randCanonical(), "
        "randCanonical(), feedback_score FROM events"
    )
    session.query(
        "INSERT INTO embeddings (event_id, field, trace_id, event_time, app, model, vector) "
        "SELECT event_id, arrayJoin(multiIf(event_type = 'prompt', ['prompt'], "
        "event_type = 'retrieval', ['query'], event_type = 'completion', ['completion'], [])), "
        "trace_id, event_time, app, 'all-MiniLM-L6-v2', "
        "arrayMap(i -> toFloat32((sipHash64(event_id, i) / 1.8446744073709552e19 - 0.5) / 10), "
        "range(384)) FROM events"
    )
    for table in TABLES:
        session.query(f"OPTIMIZE TABLE {table} FINAL")
    seconds = time.perf_counter() - began

    print(
        f"requests: {args.traces:,}, events: {len(rows):,} "
        f"({len(rows) / args.traces:.2f} per request), texts: "
        f"{'random, ' + str(args.text_chars) + ' chars each' if args.text_chars else 'sample'}"
        f" ({seconds:.1f} s to write and merge)"
    )
    total_compressed = total_raw = 0
    for table in TABLES:
        result = session.query(
            "SELECT sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes) "
            f"FROM system.parts WHERE database = 'undertow' AND table = '{table}' AND active",
            "TabSeparated",
        )
        count, compressed, raw = (int(x) for x in str(result).split())
        total_compressed += compressed
        total_raw += raw
        print(
            f"{table}: {count:,} rows, {compressed / count:,.0f} B/row compressed, "
            f"{raw / count:,.0f} B/row uncompressed"
        )
    print(
        f"per request (all four tables): {total_compressed / args.traces:,.0f} B compressed, "
        f"{total_raw / args.traces:,.0f} B uncompressed"
    )
    session.close()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
