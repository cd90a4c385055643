"""What the gateway adds to a request: latency through it minus latency straight to its backend.

    .venv/bin/python bench/gateway_overhead.py [--n 200] [--bootstrap HOST:PORT]

Three processes: a minimal OpenAI-compatible server answering a canned reply at once (so the
model's own jitter does not drown the figure), the gateway (backend ``openai``, upstream = that
server, events published through the SDK to Kafka), and this client. Each round sends the same
request straight to the server and through the gateway, alternating, over keep-alive
connections; plain requests are timed to the full body, streams to their first body bytes
(what a user waits for) and to the last byte (10 chunks sent back to back, so every
chunk's forwarding cost adds up; in a real stream tokens come tens of ms apart). Without
``--bootstrap`` a local Kafka broker is started in a temporary directory, so the SDK's cost
is in the figure. Prints the machine, N and p50/p99 of both paths and of the difference.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

MODEL = "bench-model"
WORDS = ["The", " capital", " of", " France", " is", " Paris", "."]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def stub_upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """A bare ASGI OpenAI-compatible server: /v1/models and canned chat completions."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    usage = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}
    if scope["path"] == "/v1/models":
        payload = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0}]}
        await _send_json(send, payload)
        return
    request = json.loads(body or b"{}")
    base = {"id": "chatcmpl-stub", "created": int(time.time()), "model": MODEL}
    if not request.get("stream"):
        await _send_json(
            send,
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(WORDS)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        )
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    chunk = {**base, "object": "chat.completion.chunk"}
    events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{**chunk, "choices": [{"index": 0, "delta": {"content": w}}]} for w in WORDS]
    events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (request.get("stream_options") or {}).get("include_usage"):
        events.append({**chunk, "choices": [], "usage": usage})
    for event in events:
        data = b"data: " + json.dumps(event).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _send_json(send: Send, payload: Any) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def run_stub(port: int) -> None:
    import uvicorn

    uvicorn.run(stub_upstream, host="127.0.0.1", port=port, access_log=False, log_level="warning")


def run_gateway(port: int, upstream_port: int, bootstrap: str) -> None:
    from undertow.services.gateway.server import serve
    from undertow.services.gateway.settings import GatewaySettings

    settings = GatewaySettings(
        port=port,
        backend="openai",
        upstream_base_url=f"http://127.0.0.1:{upstream_port}/v1",
        app_name="gateway-bench",
        environment="bench",
    )
    serve(settings, bootstrap)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not ready within {timeout} s")
        time.sleep(0.1)  # polling a readiness endpoint, with a deadline


def timed(client: httpx.Client, url: str, body: bytes) -> tuple[float, float]:
    """Milliseconds to the first body bytes and to the last."""
    began = time.perf_counter()
    first = 0.0
    with client.stream("POST", url, content=body) as response:
        for _ in response.iter_raw():
            if not first:
                first = time.perf_counter()
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}")
    return (first - began) * 1000.0, (time.perf_counter() - began) * 1000.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(direct: str, gateway: str, body: bytes, n: int, warmup: int) -> dict[str, list[float]]:
    """Alternating rounds; keys ``direct``, ``gateway``, ``diff`` (to the last byte) and the
    same with ``_first`` (to the first body bytes)."""
    headers = {"content-type": "application/json"}
    with httpx.Client(headers=headers, timeout=30.0) as a, httpx.Client(headers=headers) as b:
        for _ in range(warmup):
            timed(a, direct, body)
            timed(b, gateway, body)
        out: dict[str, list[float]] = {
            k: []
            for k in ("direct", "gateway", "diff", "direct_first", "gateway_first", "diff_first")
        }
        for i in range(n):
            if i % 2:  # alternate the order so neither path always runs second
                d, g = timed(a, direct, body), timed(b, gateway, body)
            else:
                g, d = timed(b, gateway, body), timed(a, direct, body)
            for suffix, idx in (("_first", 0), ("", 1)):
                out["direct" + suffix].append(d[idx])
                out["gateway" + suffix].append(g[idx])
                out["diff" + suffix].append(g[idx] - d[idx])
    return out


def report(label: str, r: dict[str, list[float]], suffix: str = "") -> None:
    d, g, diff = r["direct" + suffix], r["gateway" + suffix], r["diff" + suffix]
    print(
        f"{label:>18}: direct {pct(d, 0.5):.2f} / {pct(d, 0.99):.2f}   "
        f"gateway {pct(g, 0.5):.2f} / {pct(g, 0.99):.2f}   "
        f"added {pct(g, 0.5) - pct(d, 0.5):.2f} / {pct(g, 0.99) - pct(d, 0.99):.2f}   "
        f"(paired differences {pct(diff, 0.5):.2f} / {pct(diff, 0.99):.2f}, "
        f"mean {statistics.fmean(diff):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: start one)")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    broker = None
    tmp = tempfile.TemporaryDirectory()
    try:
        bootstrap = args.bootstrap
        if bootstrap is None:
            from undertow.infra.kafka import KafkaBroker, ensure_topics, load_topics
            from undertow.settings import StackSettings

            stack = StackSettings()
            broker = KafkaBroker(Path(tmp.name), stack.cache_dir, version=stack.kafka_version)
            bootstrap = broker.start(timeout=120).bootstrap
            ensure_topics(bootstrap, load_topics())
        stub_port, gw_port = free_port(), free_port()
        procs.append(ctx.Process(target=run_stub, args=(stub_port,), daemon=True))
        procs.append(
            ctx.Process(target=run_gateway, args=(gw_port, stub_port, bootstrap), daemon=True)
        )
        for p in procs:
            p.start()
        wait_ready(f"http://127.0.0.1:{stub_port}/v1/models")
        wait_ready(f"http://127.0.0.1:{gw_port}/readyz")

        direct = f"http://127.0.0.1:{stub_port}/v1/chat/completions"
        gateway = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        plain = {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0}
        stream = {**plain, "stream": True, "stream_options": {"include_usage": True}}
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or '?'}"
            f", Python {platform.python_version()}; Kafka at {bootstrap}"
        )
        print(f"N = {args.n} requests per path (after {args.warmup} warm-up), alternating")
        print("figures in ms, p50 / p99; added = gateway percentile - direct percentile")
        r = measure(direct, gateway, json.dumps(plain).encode(), args.n, args.warmup)
        report("plain", r)
        r = measure(direct, gateway, json.dumps(stream).encode(), args.n, args.warmup)
        report("stream, first byte", r, "_first")
        report("stream, last byte", r)
        stats = httpx.get(f"http://127.0.0.1:{gw_port}/metrics").text
        sent = [
            line for line in stats.splitlines() if line.startswith('undertow_gateway_sdk{stat="')
        ]
        print(
            "gateway SDK: "
            + ", ".join(
                s.split('"')[1] + "=" + s.split()[-1]
                for s in sent
                if any(k in s for k in ("enqueued", "sent", 'dropped"', "failed"))
            )
        )
    finally:
        for p in procs:
            p.terminate()
            p.join(10)
        if broker is not None:
            broker.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
