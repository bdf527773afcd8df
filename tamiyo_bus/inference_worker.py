"""The inference worker: one policy decision at a time, off the trainer's thread.

A job holds its own copy of a step's packet. The worker runs one job at a time and at
most one more waits for it; a newer job replaces the waiting one (latest wins: the
freshest state is the one worth deciding on). What the caller does with a result
depends on the decision mode (tamiyo_bus.step): in ``ahead`` mode the worker posts it
for the next step to take (a newer result replaces an untaken one); in ``inline`` and
``synchronous`` modes the caller waits on the job itself.

The worker never touches shared state; a result nobody takes is simply dropped, and
a job whose result is no longer wanted is ``abandoned``: its forward stops at its next
layer boundary (``InferenceCancelled``) so it stops taking CPU from the trainer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.decision import PolicyDecision
from tamiyo_bus.policy.network import InferenceCancelled
from tamiyo_bus.worker import Worker


@dataclass(eq=False, slots=True)
class Job:
    packet: pb.SystemStatePacket  # the worker's own copy
    deadline_ns: int | None  # None: no deadline (ahead and synchronous modes)
    urza_wait: bool
    posts_result: bool  # ahead mode: the result waits for the next step to take it
    done: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    abandoned: bool = False
    outcome: PolicyDecision | BaseException | None = None

    @property
    def step(self) -> int:
        return self.packet.global_step


@dataclass(slots=True)
class WorkerStats:
    superseded: int = 0  # waiting jobs replaced by a newer one, or results by a newer result
    late_results_discarded: int = 0  # results of abandoned jobs
    late_forwards_stopped: int = 0  # of those, forwards stopped between layers
    cpu_ms: float = 0.0  # the worker's CPU time over every job: what it took from the host


class InferenceWorker:
    """Runs ``decide(job)`` on a background thread (``start`` it)."""

    def __init__(self, decide: Callable[[Job], PolicyDecision]) -> None:
        self._decide = decide
        self.stats = WorkerStats()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: Job | None = None
        self._queued: Job | None = None
        self._posted: Job | None = None
        self._worker = Worker("tamiyo-inference", self._run_jobs)

    def start(self) -> None:
        self._worker.start()

    def close(self) -> bool:
        """Stop after the job in flight (bounded wait); a waiting job is dropped."""
        with self._lock:
            for job in (self._running, self._queued):
                if job is not None:
                    job.abandoned = True
        return self._worker.close()

    @property
    def busy(self) -> bool:
        return self._running is not None or self._queued is not None

    def submit(self, job: Job, *, replace_waiting: bool) -> bool:
        """Queue ``job``. With ``replace_waiting`` it replaces a waiting job; without it,
        a busy worker refuses it (False)."""
        with self._lock:
            if self._queued is not None:
                if not replace_waiting:
                    return False
                self._queued.abandoned = True
                self.stats.superseded += 1
            elif self._running is not None and not replace_waiting:
                return False
            self._queued = job
        self._worker.wake()
        return True

    def take_posted(self) -> Job | None:
        """The newest posted result not taken yet (ahead mode)."""
        with self._lock:
            job, self._posted = self._posted, None
        return job

    def has_posted(self) -> bool:
        return self._posted is not None

    def late_before(self, step: int) -> bool:
        """Whether a job of a packet before ``step`` is still running or waiting: the
        policy is late. Such jobs are abandoned (a waiting one is dropped, a running one
        stops at its next layer), but a running one that does not stop (a wedged policy)
        keeps the worker, and is found late again at every later call."""
        late = False
        with self._lock:
            for job in (self._running, self._queued):
                if job is not None and job.step < step:
                    job.abandoned = True
                    late = True
            if self._queued is not None and self._queued.abandoned:
                self._queued = None
                self._idle.notify_all()
        return late

    def collect(self, job: Job) -> PolicyDecision | BaseException | None:
        """The job's outcome if it finished; otherwise abandon it and return None."""
        with self._lock:
            if job.finished:
                return job.outcome
            job.abandoned = True
            return None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait (off the step path) until no job runs or waits; False on timeout."""
        with self._idle:
            return self._idle.wait_for(
                lambda: self._running is None and self._queued is None, timeout_s
            )

    def _run_jobs(self) -> None:
        while True:
            with self._lock:
                job, self._queued = self._queued, None
                self._running = job
            if job is None:
                return
            self._run(job)

    def _run(self, job: Job) -> None:
        started = time.thread_time_ns()
        outcome: PolicyDecision | BaseException
        try:
            outcome = self._decide(job)
        except Exception as error:
            outcome = error
        with self._lock:
            self.stats.cpu_ms += (time.thread_time_ns() - started) / 1e6
            job.finished = True
            if job.abandoned:
                self.stats.late_results_discarded += 1
                self.stats.late_forwards_stopped += isinstance(outcome, InferenceCancelled)
            else:
                job.outcome = outcome
                if job.posts_result:
                    if self._posted is not None:
                        self.stats.superseded += 1
                    self._posted = job
            self._running = None
            self._idle.notify_all()
        job.done.set()
