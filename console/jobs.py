"""Actions run in the background, as the ``dlq``/``reprocess`` commands, with their output kept for the page.

A job runs an ops command function with a ``Console`` whose stdout and stderr
are the job's output: the progress lines, notes and summary the command would
print on a terminal are what the job page shows while it runs. A stopping
console waits for running jobs (bounded), then cancels them; an ops command
cancelled mid-way leaves every message it had not finished in its queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import io
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from ops.errors import OpsError
from ops.render import Console

log = logging.getLogger("console.audit")

KEPT_JOBS = 50
KEPT_LINES = 2000

Command = Callable[[Console], Awaitable[int]]


class Output(io.StringIO):
    """A text stream that keeps the last KEPT_LINES lines written to it (and nothing else)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
        self._partial = ""

    def write(self, text: str) -> int:
        # A terminal's progress line redraws itself with \r; here each redraw is a line.
        parts = (self._partial + text.replace("\r", "\n")).split("\n")
        self._partial = parts.pop()
        self.lines.extend(p for p in parts if p.strip())
        return len(text)

    def text(self) -> str:
        return "\n".join([*self.lines, self._partial] if self._partial else self.lines)


@dataclasses.dataclass(slots=True)
class Job:
    id: str
    action: str
    user: str
    selection: dict[str, Any]
    started: datetime.datetime
    output: Output
    finished: datetime.datetime | None = None
    exit_code: int | None = None
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def summary(self) -> str:
        return self.output.lines[-1] if self.output.lines else ""


class Jobs:
    def __init__(self, finished: Callable[[Job], Awaitable[None]] | None = None) -> None:
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._finished = finished  # told of each job's end (the audit trail)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def recent(self) -> list[Job]:
        return list(reversed(self._jobs.values()))

    def start(self, action: str, user: str, selection: dict[str, Any], command: Command) -> Job:
        job = Job(secrets.token_urlsafe(12), action, user, selection, datetime.datetime.now(datetime.UTC), Output())
        job.task = asyncio.create_task(self._run(job, command), name=f"console-job-{job.id}")
        self._jobs[job.id] = job
        while len(self._jobs) > KEPT_JOBS:
            oldest = next(iter(self._jobs.values()))
            if oldest.running:
                break
            self._jobs.popitem(last=False)
        return job

    async def _run(self, job: Job, command: Command) -> None:
        console = Console(job.output, job.output, io.BytesIO(), interactive=False, live=False)
        code = 1
        try:
            code = await command(console)
        except OpsError as e:
            console.note(f"flowscribe-ingest: {e}")
            code = e.exit_code
        except asyncio.CancelledError:
            console.note("stopped: the console is shutting down; what was not done is still in its queue")
            raise
        except Exception:
            log.exception("console action failed", extra={"job": job.id, "action": job.action, "user": job.user})
            console.note("failed: unexpected error (see the console's log); what was not done is still in its queue")
        finally:
            job.exit_code = code
            job.finished = datetime.datetime.now(datetime.UTC)
            log.info("console action finished", extra={
                "job": job.id, "action": job.action, "user": job.user, "exit_code": code, "summary": job.summary,
            })
        if self._finished is not None:  # (not reached when cancelled: the log line above says so)
            await self._finished(job)

    async def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for running jobs, then cancel what is left."""
        running = [job.task for job in self._jobs.values() if job.task is not None and not job.task.done()]
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
