"""Iteration-level (continuous) batching for the encoder-decoder.

One loop, three calls per step, as vLLM's EngineCore.step(): schedule (bookkeeping: who is
admitted, who left), execute (tensors: encode the admitted into their slots, one decoder step
for every live row), update (bookkeeping: next tokens, beam bookkeeping, finished sentences
leave at once). A sentence that finishes frees its slots before the next step; a waiting one
joins at the next step, so short sentences never wait for long ones.
Each group keeps its own beam size, length penalty and limits within the same step; its beam
bookkeeping is the same code as batched beam search (model.decoding.BeamState), so the
tokens equal translating the sentence alone.
No Ray and no HTTP: the engine runs on its own thread and reports through callbacks.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

from model.decoding import BeamState, Hypothesis, log_probs, process, to_hypothesis
from model.generation import GenerationSettings
from model.transformer import Transformer
from service.runner import SlotRunner
from service.scheduler import Callback, Cancelled, Scheduler, SequenceGroup

log = logging.getLogger("ray.serve")


@dataclass
class StepStats:
    """What one engine step did; the deployment turns these into metrics."""

    rows: int  # slots in use during the decoder step
    slots: int
    cache_bytes: int  # the whole preallocated cache (rows / slots of it is in use)
    waiting: int  # sentences still waiting after admission
    admitted: int
    queue_waits: list[float]  # arrival to admission, of the sentences admitted
    encode_s: float
    decode_s: float
    finished: int
    output_tokens: int  # of the sentences that finished, EOS included


class ContinuousEngine:
    def __init__(self, model: Transformer, *, slots: int = 64, max_active_tokens: int = 16384,
                 max_encode_tokens: int = 2048, max_source: int = 256, max_target: int = 256) -> None:
        cfg = model.cfg
        self.model = model
        self.max_source = min(max_source, cfg.max_position_embeddings)
        self.max_target = min(max_target, cfg.max_position_embeddings)
        self.runner = SlotRunner(model, slots, self.max_source, self.max_target)
        self.scheduler = Scheduler(slots, max_active_tokens, max_encode_tokens)
        self.eos = cfg.eos_token_id
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.last_step = time.monotonic()  # the health check's sign of life
        self.on_step: list = []  # callables(StepStats), e.g. metrics; called on the engine thread
        # One beam state per beam size: its sentences step together (pool order = order of joining).
        self.pools: dict[int, tuple[BeamState, list[SequenceGroup]]] = {}

    # -- public -------------------------------------------------------------------------------------
    def submit(self, ids: list[int], settings: GenerationSettings, callback: Callback) -> SequenceGroup:
        """Queue one sentence; `callback` gets its n-best (or an exception) on the engine thread."""
        if len(ids) > self.max_source:
            raise ValueError(f"source has {len(ids)} tokens; at most {self.max_source}")
        if settings.beam_size > self.scheduler.slots:
            raise ValueError(f"beam_size {settings.beam_size} exceeds the {self.scheduler.slots} slots")
        limit = min(settings.row_limit(len(ids)), self.max_target)
        group = SequenceGroup(ids, settings, callback, limit)
        with self.lock:
            self.scheduler.add(group)
        self.wake.set()
        return group

    def cancel(self, group: SequenceGroup) -> None:
        """Free the group's slots at the next step (or drop it from the queue)."""
        group.cancel()
        self.wake.set()

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="continuous-engine", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            self.thread = None

    def configure(self, *, max_encode_tokens: int, max_active_tokens: int, admit_batch: int,
                  admit_wait_s: float) -> None:
        """Live-tunable admission knobs (the slot count is fixed: a new one needs a new engine)."""
        with self.lock:
            sched = self.scheduler
            sched.max_encode_tokens, sched.max_active_tokens = max_encode_tokens, max_active_tokens
            sched.admit_batch, sched.admit_wait_s = admit_batch, admit_wait_s

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def slots(self) -> int:
        return self.scheduler.slots

    @property
    def slots_in_use(self) -> int:
        return self.scheduler.rows_in_use

    @property
    def waiting(self) -> int:
        return len(self.scheduler.waiting)

    def idle(self) -> bool:
        return not self.scheduler.running and not self.scheduler.waiting

    # -- the loop -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping:
            busy = self.run_once()
            if not busy:
                self.wake.wait(timeout=1.0)
                self.wake.clear()

    def run_once(self) -> bool:
        """One step; a step that raises fails the sentences it held, not the engine."""
        try:
            return self.step()
        except Exception as exc:
            log.exception("continuous engine step failed; failing the %d sentences in flight",
                          len(self.scheduler.running))
            self._fail_running(exc)
            return True

    def _fail_running(self, exc: Exception) -> None:
        running, self.scheduler.running = self.scheduler.running, []
        for state, members in self.pools.values():
            state.keep(torch.zeros(0, dtype=torch.long, device=self.runner.device))
            members.clear()
        for g in running:
            g.callback(exc)

    def step(self) -> bool:
        """One scheduling iteration; False when there was nothing to do."""
        self.last_step = time.monotonic()
        with self.lock:
            plan = self.scheduler.schedule()
        for g in plan.dropped:
            g.callback(Cancelled())
        t0 = time.perf_counter()
        if plan.admit:
            first = self.scheduler.rows_in_use
            self.runner.admit([g.ids for g in plan.admit], [g.width for g in plan.admit], first)
            now = time.monotonic()
            for g in plan.admit:
                g.admitted = now
                if g.width > 1:
                    state, members = self._pool(g)
                    state.add([g.limit], [g.settings.length_penalty])
                    members.append(g)
            self.scheduler.running.extend(plan.admit)
        t1 = time.perf_counter()
        rows = self.scheduler.rows_in_use
        if rows == 0:
            return bool(plan.dropped)
        logits = self.runner.decode(rows)
        t2 = time.perf_counter()
        finished = self._update(logits)
        for g, result in finished:
            g.callback(result)
        waits = [g.admitted - g.arrived for g in plan.admit if g.admitted is not None]
        out_tokens = sum(len(r[0].tokens) + 1 for _, r in finished if isinstance(r, list))
        stats = StepStats(rows, self.scheduler.slots, self.runner.cache_bytes, len(self.scheduler.waiting),
                          len(plan.admit), waits, t1 - t0, t2 - t1, len(finished), out_tokens)
        for hook in self.on_step:
            hook(stats)
        return True

    def _pool(self, g: SequenceGroup) -> tuple[BeamState, list[SequenceGroup]]:
        if g.width not in self.pools:
            state = BeamState(g.width, self.max_target, self.model.cfg.pad_token_id, self.runner.device,
                              g.settings.early_stopping)
            self.pools[g.width] = (state, [])
        return self.pools[g.width]

    @torch.inference_mode()
    def _update(self, logits: torch.Tensor) -> list[tuple[SequenceGroup, list[Hypothesis] | BaseException]]:
        running = self.scheduler.running
        device = logits.device
        first_row: dict[int, int] = {}
        row = 0
        for g in running:
            first_row[g.id] = row
            row += g.width
        steps = torch.tensor([g.step for g in running for _ in range(g.width)], device=device)
        limits = torch.tensor([g.limit for g in running for _ in range(g.width)], device=device)
        # Bans, min length and forced EOS are the model's (same for every group); the rest is per group.
        logp = process(log_probs(logits), steps, limits, running[0].settings, self.eos)
        best_val, best_idx = logp.max(-1)
        best_val, best_idx = best_val.tolist(), best_idx.tolist()
        finished: list[tuple[SequenceGroup, list[Hypothesis] | BaseException]] = []
        moves: dict[int, tuple[list[int], list[int]]] = {}  # group -> (rows it continues, next tokens)

        for state, members in self.pools.values():
            if not members:
                continue
            k = state.k
            idx = torch.tensor([first_row[g.id] + b for g in members for b in range(k)], device=device)
            tokens, src, done = state.step(logp.index_select(0, idx), self.eos)
            src_rows, tokens, done_list = idx[src].tolist(), tokens.tolist(), done.tolist()
            for j, g in enumerate(members):
                g.step += 1
                if g.cancelled:
                    continue
                if done_list[j]:
                    finished.append((g, state.hypotheses(j, self.eos, g.settings.num_hypotheses)))
                else:
                    moves[g.id] = (src_rows[j * k : (j + 1) * k], tokens[j * k : (j + 1) * k])
            keep = [j for j, g in enumerate(members) if g.id in moves]
            if len(keep) < len(members):
                state.keep(torch.tensor(keep, dtype=torch.long, device=device))
                members[:] = [members[j] for j in keep]

        order: list[int] = []
        next_tokens: list[int] = []
        still: list[SequenceGroup] = []
        for g in running:
            row = first_row[g.id]
            if g.cancelled:
                finished.append((g, Cancelled()))
            elif g.width == 1:
                token = best_idx[row]
                g.tokens.append(token)
                g.log_prob += best_val[row]
                g.step += 1
                if token == self.eos or g.step >= g.limit:
                    finished.append((g, [to_hypothesis(g.tokens, g.log_prob, self.eos, g.settings.length_penalty)]))
                else:
                    still.append(g)
                    order.append(row)
                    next_tokens.append(token)
            elif g.id in moves:
                rows, tokens = moves[g.id]
                still.append(g)
                order.extend(rows)
                next_tokens.extend(tokens)
        self.scheduler.running = still
        if order != list(range(len(order))):
            self.runner.rearrange(torch.tensor(order, device=device))
        if next_tokens:
            self.runner.tokens[: len(next_tokens)] = torch.tensor(next_tokens, device=device)
        return finished
