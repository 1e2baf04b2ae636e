"""``python -m bench.drift_cost``: what the schema-drift check costs a worker per callback.

Focused (no services, ~20 s): for each size and format of bench/payloads, the
time to decode a body as the worker does, and the time of the drift check a
sampled callback adds (``runtime``-free: ``DriftLog.check`` at rate 1, i.e. the
second parse, the walk, the metric and the in-memory merge; the upsert is one
statement a second per worker, off the batch path). Measured on bodies with no
drift and with a few unknown fields (the check then also records them). The
cost per callback at a rate r is r x the check; the figure beside it is the
decode it rides along with, measured in the same loop.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench import payloads
from runtime.metrics import new_registry
from runtime.settings import Settings
from schemas.decoding import decode_payload
from worker.drift_log import DriftLog


def _body(payload: dict[str, Any], fmt: str, drifted: bool) -> bytes:
    """The body; drifted: a new field in every scoring item and a new object in the analysis."""
    if fmt == "xml":
        body = payloads.to_xml(payload)
        if drifted:
            body = body.replace(b"</d2p1:ConversationSentenceScoringModel>",
                                b"<d2p1:Score_Brand>3.5</d2p1:Score_Brand></d2p1:ConversationSentenceScoringModel>")
            body = body.replace(b"</ConversationAnalysisModel>",
                                b"<d2p1:CallMetadata><d2p1:Queue>billing</d2p1:Queue></d2p1:CallMetadata>"
                                b"</ConversationAnalysisModel>")
        return body
    if drifted:
        payload = json.loads(json.dumps(payload))
        model = payload["ConversationAnalysisModel"]
        for item in model["ConversationSentenceScoring"]:
            item["Score_Brand"] = 3.5
        model["ConversationSummaries"] = [{"ID": str(uuid.uuid4()), "Summary": "refund"}]
    return payloads.to_json(payload)


def _per_call(fns: list[Callable[[], object]], seconds: float, rounds: int = 7) -> list[float]:
    """Median seconds per call of each of ``fns``, measured in alternating rounds (the machine's
    noise then hits all of them alike) filling about ``seconds`` each."""
    counts = []
    for fn in fns:
        fn()
        started = time.perf_counter()
        fn()
        counts.append(max(1, int(seconds / rounds / max(time.perf_counter() - started, 1e-6))))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, n, into in zip(fns, counts, times, strict=True):
            started = time.perf_counter()
            for _ in range(n):
                fn()
            into.append((time.perf_counter() - started) / n)
    return [statistics.median(t) for t in times]


def _check(drift: DriftLog, now: datetime.datetime, body: bytes, content_type: str) -> object:
    return drift.check(uuid.uuid4(), now, body, content_type)


def measure(seconds: float) -> list[dict[str, Any]]:
    rate = Settings().drift_sample_rate
    drift = DriftLog(pool=None, registry=new_registry(), sample_rate=1.0)  # type: ignore[arg-type]
    now = datetime.datetime.now(datetime.UTC)
    results = []
    for size in ("small", "typical", "large"):
        base = payloads.build(size, seed=7)
        for fmt, content_type in payloads.CONTENT_TYPES.items():
            for drifted in (False, True):
                body = _body(base, fmt, drifted)
                decode, check = _per_call([functools.partial(decode_payload, body, content_type),
                                           functools.partial(_check, drift, now, body, content_type)], seconds)
                assert bool(drift.check(uuid.uuid4(), now, body, content_type)) == drifted
                results.append({
                    "size": size, "format": fmt, "drift": drifted, "body_bytes": len(body),
                    "decode_us": round(decode * 1e6, 1), "check_us": round(check * 1e6, 1),
                    "check_over_decode": round(check / decode, 3),
                    "default_rate": rate, "per_callback_at_default_us": round(rate * check * 1e6, 2),
                    "per_callback_at_default_over_decode": round(rate * check / decode, 4),
                })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per figure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.seconds)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'size':8} {'fmt':4} {'drift':5} {'bytes':>9} {'decode us':>10} {'check us':>9} {'check/decode':>12}"
          f" {'at default rate':>16}")
    for r in results:
        print(f"{r['size']:8} {r['format']:4} {'yes' if r['drift'] else 'no':5} {r['body_bytes']:>9}"
              f" {r['decode_us']:>10} {r['check_us']:>9} {r['check_over_decode']:>12}"
              f" {r['per_callback_at_default_us']:>9} us ({r['per_callback_at_default_over_decode']:.2%})")


if __name__ == "__main__":
    main()
