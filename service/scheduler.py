"""The scheduler of continuous batching: bookkeeping only (who waits, who holds which slots).

A sentence is a sequence group: greedy holds one slot, beam search k slots. Between two
decoding steps, finished and cancelled groups leave and free their slots at once; waiting ones
are admitted (first come, first served) while slots are free, the active token budget holds,
and the encoder work admitted in one step stays under a cap (so admissions never stall the
running sentences for long).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from model.decoding import Hypothesis
from model.generation import GenerationSettings

Callback = Callable[[list[Hypothesis] | BaseException], None]
_ids = itertools.count()


class Cancelled(Exception):
    """The sentence was cancelled (its client went away) before it finished."""


@dataclass(eq=False)
class SequenceGroup:
    ids: list[int]
    settings: GenerationSettings
    callback: Callback
    limit: int  # most tokens it may generate, EOS included
    arrived: float = field(default_factory=time.monotonic)
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    # While running:
    rows: int = 0  # slots held (beam size)
    step: int = 0  # tokens generated so far
    tokens: list[int] = field(default_factory=list)  # greedy output so far
    log_prob: float = 0.0
    admitted: float | None = None

    @property
    def width(self) -> int:
        return self.settings.beam_size

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class StepPlan:
    admit: list[SequenceGroup]
    dropped: list[SequenceGroup]  # cancelled while waiting


class Scheduler:
    def __init__(self, slots: int, max_active_tokens: int, max_encode_tokens: int, *, admit_batch: int = 1,
                 admit_wait_s: float = 0.0) -> None:
        self.slots = slots
        self.max_active_tokens = max_active_tokens
        self.max_encode_tokens = max_encode_tokens
        # While sentences run, newcomers are admitted (encoded) together once `admit_batch` of them wait
        # or the oldest has waited `admit_wait_s`: an encoder call costs about the same for 1 sentence
        # as for several (reading the weights dominates on CPU), so one by one it costs the running
        # rows a step's time for every sentence that joins.
        self.admit_batch = admit_batch
        self.admit_wait_s = admit_wait_s
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[SequenceGroup] = []  # in row order: group i holds the next `width` rows

    @property
    def rows_in_use(self) -> int:
        return sum(g.width for g in self.running)

    def active_tokens(self) -> int:
        return sum(len(g.ids) * g.width for g in self.running)

    def add(self, group: SequenceGroup) -> None:
        self.waiting.append(group)

    def schedule(self) -> StepPlan:
        dropped = [g for g in self.waiting if g.cancelled]
        if dropped:
            self.waiting = deque(g for g in self.waiting if not g.cancelled)
        admit: list[SequenceGroup] = []
        free = self.slots - self.rows_in_use
        if self.running and self.waiting and not self._admission_due(free):
            return StepPlan(admit, dropped)
        active, encoded = self.active_tokens(), 0
        while self.waiting:
            g = self.waiting[0]
            cost = len(g.ids) * g.width
            if g.width > free:
                break
            if (admit or self.running) and (active + cost > self.max_active_tokens
                                            or encoded + len(g.ids) > self.max_encode_tokens):
                break  # the first one always goes in, whatever its size, so nothing starves
            admit.append(self.waiting.popleft())
            free -= g.width
            active += cost
            encoded += len(g.ids)
        return StepPlan(admit, dropped)

    def _admission_due(self, free: int) -> bool:
        if len(self.waiting) >= min(self.admit_batch, max(free, 1)):
            return True
        return time.monotonic() - self.waiting[0].arrived >= self.admit_wait_s
