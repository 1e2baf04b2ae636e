"""The broker ceiling: the gateway's messages published straight to RabbitMQ, no HTTP.

Same client library and event loop as the gateway (aio-pika on asyncio), same
message (persistent, mandatory, the gateway's headers and properties), same
exchange and quorum queue, publisher confirms, ``--concurrency`` publishes in
flight on one channel (as the gateway has one per request in flight). What it
leaves out is only what the gateway adds: HTTP, its checks, its logging.
Prints one JSON line: publishes confirmed, seconds, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
import uuid
from pathlib import Path

import aio_pika

from runtime.messages import publish_confirmed
from schemas import topology
from schemas.message import callback_message


async def run(url: str, body: bytes, content_type: str, concurrency: int, duration: float, warmup: float) -> dict:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        declared = await topology.declare(channel)
        exchange = declared.callback_exchange
        latencies: list[float] = []
        errors = 0
        recording = False
        end = time.monotonic() + warmup + duration

        async def publisher() -> None:
            nonlocal errors
            while time.monotonic() < end:
                # The gateway's own message, digest included (the gateway hashes every body too).
                message = callback_message(body, content_type, message_id=str(uuid.uuid4()),
                                           received_at=datetime.datetime.now(datetime.UTC))
                t = time.perf_counter()
                try:
                    await publish_confirmed(exchange, message, topology.CALLBACK_ROUTING_KEY, 10)
                except Exception:  # noqa: BLE001 - counted, reported
                    errors += 1
                    continue
                if recording:
                    latencies.append(time.perf_counter() - t)

        tasks = [asyncio.create_task(publisher()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        recording, started = True, time.monotonic()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    return {"requests": len(latencies), "duration_us": int(elapsed * 1e6), "status_errors": errors,
            "p50_us": int(q(0.5) * 1e6), "p90_us": int(q(0.9) * 1e6), "p99_us": int(q(0.99) * 1e6),
            "max_us": int((latencies[-1] if latencies else 0) * 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("content_type")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, Path(args.body_file).read_bytes(), args.content_type, args.concurrency,
                             args.duration, args.warmup))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
