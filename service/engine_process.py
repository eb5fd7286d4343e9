"""The continuous engine in a process of its own, driven over a pipe.

Inside a Serve replica the engine thread shares one interpreter lock with the HTTP server and
Ray's own threads: every tensor operation gives the lock up and must win it back, so the
decoding step runs at the pace of whatever Python the other threads run (measured on 2 cores:
a step 2.5x slower than the same engine alone, and the whole replica held to one core). Here the
engine owns its interpreter; the replica sends token ids and receives n-best lists, a few hundred
bytes a sentence.

EngineProcess has the interface of ContinuousEngine that the model host uses (submit, cancel,
idle, alive, configure, on_step, stop).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from model.generation import GenerationSettings
from service.scheduler import Callback

READY_TIMEOUT_S = 300.0  # loading a large checkpoint onto a GPU can take minutes
IDLE_POLL_S = 1.0  # an idle engine blocks on its pipe this long at a time (no busy wait)


class EngineGone(Exception):
    """The engine process ended while sentences were in flight."""


@dataclass(eq=False)
class Ticket:
    """A submitted sentence, as the replica sees it."""

    id: int
    callback: Callback
    arrived: float = field(default_factory=time.monotonic)
    admitted: float | None = None  # monotonic clock (system-wide), set by the engine process


@dataclass(frozen=True)
class EngineSpec:
    """What the engine process needs to build its model and engine."""

    path: str
    device: str | None
    dtype: str | None
    threads: int
    slots: int
    max_active_tokens: int
    max_encode_tokens: int
    max_source: int
    max_target: int
    admit_batch: int
    admit_wait_s: float


class EngineProcess:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.slots, self.max_source = spec.slots, spec.max_source
        self.on_step: list[Callable[[Any], None]] = []
        self.last_step = time.monotonic()
        self.tickets: dict[int, Ticket] = {}
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of Ray's threads or locks
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_engine_main, args=(child, spec), name="mt-engine", daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(READY_TIMEOUT_S):
            self.process.kill()
            raise RuntimeError(f"the engine process did not start within {READY_TIMEOUT_S:.0f}s")
        try:
            ready = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the engine process exited while starting (code {self.process.exitcode})") from None
        if ready[0] != "ready":
            raise RuntimeError(f"the engine process failed to start: {ready[1]}")
        self.reader = threading.Thread(target=self._read, name="engine-results", daemon=True)
        self.reader.start()

    # -- what the model host calls ---------------------------------------------------------------
    def submit(self, ids: list[int], settings: GenerationSettings, callback: Callback) -> Ticket:
        if len(ids) > self.max_source:
            raise ValueError(f"source has {len(ids)} tokens; at most {self.max_source}")
        if settings.beam_size > self.slots:
            raise ValueError(f"beam_size {settings.beam_size} exceeds the {self.slots} slots")
        ticket = Ticket(next(self._ids), callback)
        self.tickets[ticket.id] = ticket
        self._send(("submit", ticket.id, ids, settings))
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        if ticket.id in self.tickets:
            self._send(("cancel", ticket.id))

    def configure(self, *, max_encode_tokens: int, max_active_tokens: int, admit_batch: int,
                  admit_wait_s: float) -> None:
        self._send(("configure", dict(max_encode_tokens=max_encode_tokens, max_active_tokens=max_active_tokens,
                                      admit_batch=admit_batch, admit_wait_s=admit_wait_s)))

    def idle(self) -> bool:
        return not self.tickets

    def alive(self) -> bool:
        return self.process.is_alive() and self.reader.is_alive()

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self._send(("stop",))
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)

    # -- plumbing ------------------------------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        with self._send_lock:  # submits come from the event loop, stops from other threads
            self.conn.send(message)

    def _read(self) -> None:
        """Results and step stats, as the engine process sends them; on its end, fail what is left."""
        try:
            while True:
                message = self.conn.recv()
                if message[0] == "done":
                    _, tid, result, admitted = message
                    ticket = self.tickets.pop(tid, None)
                    if ticket is not None:
                        ticket.admitted = admitted
                        ticket.callback(result)
                elif message[0] == "step":
                    self.last_step = time.monotonic()
                    for hook in self.on_step:
                        hook(message[1])
        except (EOFError, OSError):
            pass
        finally:
            gone = EngineGone(f"the engine process ended (exit code {self.process.exitcode})")
            while self.tickets:
                _, ticket = self.tickets.popitem()
                ticket.callback(gone)


def _engine_main(conn: Connection, spec: EngineSpec) -> None:
    """The engine process: build the model and engine, then step and read the pipe in turn."""
    try:
        import torch

        from model.allocator import keep_freed_memory
        from model.checkpoint import load_model
        from service.continuous import ContinuousEngine

        keep_freed_memory()
        if spec.threads:
            torch.set_num_threads(spec.threads)
        model = load_model(spec.path, device=spec.device, dtype=getattr(torch, spec.dtype) if spec.dtype else None)
        engine = ContinuousEngine(model, slots=spec.slots, max_source=spec.max_source, max_target=spec.max_target)
        engine.configure(max_encode_tokens=spec.max_encode_tokens, max_active_tokens=spec.max_active_tokens,
                         admit_batch=spec.admit_batch, admit_wait_s=spec.admit_wait_s)
        # Warm up before "ready": the first step pays one-time costs (allocator, kernels).
        engine.submit([model.cfg.eos_token_id], GenerationSettings(beam_size=1, max_length=4), lambda _: None)
        while not engine.idle():
            engine.run_once()
    except Exception as exc:  # the replica reports it; nothing else can
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    groups: dict[int, Any] = {}

    def finished(tid: int, result: Any) -> None:
        group = groups.pop(tid, None)
        if isinstance(result, BaseException) and type(result).__name__ != "Cancelled":
            result = RuntimeError(f"{type(result).__name__}: {result}")  # always picklable
        conn.send(("done", tid, result, group.admitted if group is not None else None))

    engine.on_step.append(lambda stats: conn.send(("step", stats)))
    conn.send(("ready",))
    try:
        while True:
            busy = engine.step()
            wait = 0.0 if busy or not engine.idle() else IDLE_POLL_S
            while conn.poll(wait):
                wait = 0.0
                message = conn.recv()
                kind = message[0]
                if kind == "submit":
                    _, tid, ids, settings = message
                    groups[tid] = engine.submit(ids, settings, lambda result, tid=tid: finished(tid, result))
                elif kind == "cancel" and message[1] in groups:
                    engine.cancel(groups[message[1]])
                elif kind == "configure":
                    engine.configure(**message[1])
                elif kind == "stop":
                    return
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the replica is gone: so is the reason to run
