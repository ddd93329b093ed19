"""Adaptive concurrency per model: how many requests to keep in flight, found while the run goes.

Why: ``max_concurrency`` used to be a number the user guessed. Too low leaves a vLLM or SGLang server
idle; too high against a saturated server only adds queueing and timeouts; against a hosted API it burns
429s. So each model gets a controller that measures and decides, with ``max_concurrency`` as its ceiling.

What it measures. Every request that finishes is a sample: its latency (slot taken to slot given back),
the requests in flight as it ended, and what came of it (:func:`signal_of`). Decisions are taken once per
*window*: a whole round of requests (as many as the limit, at least a few) started after the last
decision, so each decision sees the effect of the one before, not the tail of the old queue. A window
opened with nothing in flight (the first, or one after the callers paused) starts with its first
request, so time spent before it (a client made early, an engine loading) never reads as a slow round. From a
window come its throughput, by Little's law (mean requests in flight / mean latency: the rate at the limit
being judged) and its queue, by Vegas' reckoning (the requests in flight that the lowest recent latency,
the server with nothing waiting, does not account for).

How it decides (a hill climb on throughput, with TCP's slow start and multiplicative decrease):

- where it starts depends on the server (:func:`initial_limit`): 2 against a hosted API, whose quota a
  first burst could spend, 64 against a server of one's own (a loopback or private address, or vLLM
  in-process), which batches that many or, if smaller, only queues them for a round. A wide start's first few requests
  (the *scouts*) are served before any queue, so their latency is the idle server's;
- slow start: each window is the round of requests a raise sent, about one round trip; the limit grows
  x8 a window while the last raise scaled throughput about linearly (gain >= 0.8; a wide start whose
  first round did not queue counts as such), x2 when it paid only in part, x4 on the first raise from 2;
  then by 1.1. From cold, 64 -> 512 takes one round trip (2 -> 512: three). Slow start also ends when a
  round is still out after three no-load latencies (the raise, or the wide start, only queued): the
  server is saturated, so its completion rate is its capacity, and the limit goes to that rate times the
  no-load latency plus a small queue; and when a wide start's first round shows a latency twice the
  scouts' (it queued): down to the capacity the scouts account for;
- a raise is judged by its *gain*: the rise in throughput over its share of the rise in the limit (1 when
  latency stayed flat, 0 when the server only queued the extra requests). Gain >= 0.3: raise again,
  whatever latency did (a batching server's steps grow with its batch, and that is fine while they pay);
  gain < 0.2: the server is saturated, so the limit goes down to its capacity (requests in flight less the
  queue) plus a quarter, a small queue that keeps it busy while replies travel back; in between, back
  to the limit before the raise;
- a window in which the limit was never reached (the callers want fewer requests than allowed) raises
  nothing: raising a limit nobody uses proves nothing. It still judges the raise before it, by the requests
  that did go out: if they grew a quarter or more and throughput did not follow, the server only queued
  them, and the limit goes down to its capacity plus a small queue. After a cut, the next window probes
  upwards;
- the latency everything is measured against may be blurred: a client short of CPU reads its replies late,
  and a capacity reckoned from a late-read round fits every limit above the real one. Blur shows as scouts
  read back far apart, or a window faster than the one before with no fewer requests in flight. Where
  slow start ended on saturation after blur (or a queue stands past a raise nobody reached), a *descent*
  verifies it: the limit halves a window at a time while throughput holds, and comes back to the lowest
  level that held once it falls;
- a queue that stands where no raise is possible (the ceiling), and now and then any standing queue, is
  tested by a *probe*: one window at the estimated capacity. If throughput fell with it, the limit goes
  straight back (it was a batching server); if not, the queue is gone and the baseline measured afresh;
- a 429, a 503 (or 504, 408, 529) or a timeout cuts at once, x0.7, at most once per round trip (requests
  sent before the cut do not cut again); a 429's ``Retry-After`` also holds every new request of the
  model until then (at most ``max_hold`` seconds: a longer wait is a spent quota, which the gateway fails
  at once so the record is kept for ``--retry-failed``). After a run of cuts the limit climbs back fast
  (x2 a window) to half of where the cuts began.

Never stall: the limit never goes below 1, a hold always ends, and one request is always allowed to probe
after it. A connection error, a reply that is not a model API's, a refused key is *neutral* here: a down
endpoint is the circuit breaker's business (:mod:`.breaker`), not a reason to shrink the limit.

The x-ratelimit-* headers hosted APIs send are used by :class:`~.limits.ModelLimits` (a mirror of the
server's budget, so requests are paced before the server has to refuse them); this module only holds the
limit. ``fixed`` mode uses the same slots with a pinned limit, so its latency and 429 share are reported
the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import ipaddress
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .backends.base import TransientError

if TYPE_CHECKING:
    from .config import ModelConfig

OK = "ok"
RATE_LIMITED = "rate_limited"  # 429: the server's quota
OVERLOADED = "overloaded"  # 503, 504, 408, 529, a timeout: the server cannot keep up
NEUTRAL = "neutral"  # says nothing about load: a refused request, a dead endpoint, a cancelled call

OVERLOAD_STATUS = frozenset({408, 503, 504, 529})

INITIAL_LIMIT = 2  # where adaptive starts against a hosted API: its first burst cannot spend a small quota
SELF_HOSTED_INITIAL = 64  # ...and against a server of one's own (loopback, private network): a batch's worth
SCOUTS = 4  # of a wide start, the requests sent first: a FIFO server serves them unqueued (the no-load latency)
QUEUE_EVIDENT = 2.0  # a first window whose mean latency is this many times the scouts' waited in a queue
SLOW_START = 4.0  # the first raise from a narrow start (2 -> 8): two requests say little about linearity
FAST_START = 8.0  # a raise while the last one scaled throughput about linearly (gain >= LINEAR_GAIN)
LINEAR_GAIN = 0.8
PARTIAL_START = 2.0  # a raise while the last one paid only in part: the knee is near
SLOW_SPAN = 3.0  # a slow-start round still out after this many no-load latencies is queueing: decide now
STEADY_RAISE = 1.10
RECOVERY_RAISE = 2.0  # climbing back after cuts, up to half of the limit the cuts started from
CUT = 0.7  # on 429, 503, timeouts
MIN_GAIN = 0.3  # a raise that bought at least this share of throughput was worth it, latency or not
SATURATED_GAIN = 0.2  # a raise that bought less than this: the server only queued the extra requests
HELD_LOSS = 0.1  # a probe that cost less than this share of its cut in throughput: the level still queued
DESCENT = 2.0  # each step of the descent that verifies where slow start saw saturation
SCOUT_SPREAD = 3.0  # scouts this far apart were not all read back as they arrived (or vary that much)
BLURRED = 0.8  # a window this much faster than the one before, with no fewer in flight: that one was blurred
DESCENT_WINDOW = 8  # samples that decide a window of the descent, at least
UNUSED_GROWTH = 1.25  # a raise the callers never reached is judged once requests in flight grew this much
QUEUE_SHARE = 0.25  # the queue kept at the server: a quarter of the limit (it absorbs the client's jitter)...
QUEUE_MIN = 2.0  # ...and at least two requests
WINDOW_MIN_STEADY = 16  # after slow start, when steps are small and noise would decide them
WINDOW_MIN = 2  # samples that decide a window, at least (else one round of the limit)
BASELINE_WINDOWS = 32  # the no-load latency is the lowest window mean among this many
LATENCY_EMA = 0.1


def _queue_kept(requests: float) -> float:
    """The queue kept at a server with ``requests`` in flight (:data:`QUEUE_SHARE`, at least :data:`QUEUE_MIN`)."""
    return max(QUEUE_MIN, QUEUE_SHARE * requests)


def _with_queue(capacity: float) -> float:
    """The limit for a server of ``capacity``: that many served, plus the small queue that keeps it busy."""
    return capacity + _queue_kept(capacity)


def initial_limit(base_url: str | None, *, batches_in_flight: bool = False) -> int:
    """Where adaptive concurrency starts for a model served at ``base_url``; ``batches_in_flight``: an
    in-process engine that batches the requests in flight (the model's capability of that name).

    A server of one's own (a loopback or private address, a ``.local``/``.internal`` name, a one-label
    name such as a compose or Kubernetes service) starts at :data:`SELF_HOSTED_INITIAL`: a vLLM or SGLang
    server batches that many at once, and a smaller one only queues them for one round (the first window
    sees it and cuts). So does an in-process batching engine (vLLM), the most one's own of all: it has no
    quota to spend, and its first batch of 64 mixes short and long requests into one window, where a start
    from 2 would judge the first raises on two and then eight requests, whose lengths alone can make a
    wider batch look slower. Anything else is taken for a hosted API, whose quota a first burst could
    spend: it starts at :data:`INITIAL_LIMIT`.
    """
    if batches_in_flight:
        return SELF_HOSTED_INITIAL
    if not base_url:
        return INITIAL_LIMIT
    try:
        host = urlsplit(base_url).hostname
    except ValueError:
        return INITIAL_LIMIT
    return SELF_HOSTED_INITIAL if host and _self_hosted(host) else INITIAL_LIMIT


def initial_limit_of(config: ModelConfig) -> int:
    """:func:`initial_limit` of a configured model, its endpoint and its engine: a local run and Ray's
    limits actor start a model's limit from the same place."""
    return initial_limit(config.base_url, batches_in_flight=config.capabilities.batches_in_flight)


def _self_hosted(host: str) -> bool:
    if host == "localhost" or host.endswith((".local", ".internal", ".localhost", ".lan", ".home.arpa")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." not in host  # a one-label name only resolves on a private network (compose, Kubernetes)
    return address.is_loopback or address.is_private or address.is_link_local


def signal_of(exc: BaseException | None) -> str:
    """What a finished request says about the server's load."""
    if exc is None:
        return OK
    if isinstance(exc, TransientError) and getattr(exc, "endpoint_fault", None) is None:
        status = exc.status
        if status == 429:
            return RATE_LIMITED
        if status in OVERLOAD_STATUS or status is None:  # no status: no reply within the timeout
            return OVERLOADED
    return NEUTRAL


class Ticket:
    """One request holding a slot: when it started and what it saw then (plain data, cheap)."""

    __slots__ = ("in_flight", "sent_at", "sent_requests", "sent_tokens", "start")

    def __init__(self, start: float, in_flight: int):
        self.start = start
        self.in_flight = in_flight  # requests in flight once this one started, itself included
        self.sent_at: float | None = None  # when the server budgets counted it (set by ModelLimits)
        self.sent_requests = 0.0
        self.sent_tokens = 0.0


class ConcurrencyController:
    """The limit of one model, adaptive or pinned; plain logic on an injectable clock (no asyncio).

    ``start()`` when a request takes a slot, ``finish(ticket, signal, ...)`` when it gives it back; the
    limit and ``hold_until`` tell the slots whether the next request may go.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        adaptive: bool = True,
        initial: int | None = None,
        max_hold: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ceiling = max(1, int(ceiling))
        self.adaptive = adaptive
        self.clock = clock
        self.max_hold = max_hold
        start = self.ceiling if not adaptive else min(self.ceiling, initial or INITIAL_LIMIT)
        self._limit = float(max(1, start))
        self.in_flight = 0
        self.hold_until = 0.0
        self.slow_start = adaptive
        # the window being measured
        self._window_start = clock()
        # a window opened with nothing in flight starts with its first request, not when it was opened: a
        # model whose first request comes long after its client was made (another step's model answered
        # first, or an in-process engine loaded) must not count that wait as a round still out
        self._window_idle = True
        self._latencies: list[float] = []
        self._in_flight_sum = 0
        self._limited = False
        self._completed = 0  # every success in the window, older requests' too: the completion rate
        self._fresh = max(WINDOW_MIN, math.ceil(self._limit))  # slow start: the slots this window opened
        self._slow_window = adaptive  # opened in slow start
        # a wide start's first requests, served before any queue: the no-load latency (see SCOUTS)
        # (start, order, latency) of the earliest-started successes of the first window, at most SCOUTS
        self._scouts: list[tuple[float, int, float]] | None = [] if adaptive and self._limit > SCOUTS else None
        # what the last decision did: ("raise", factor, throughput before, in flight before) or ("cut",) or None
        self._last: tuple[Any, ...] | None = None
        self._last_cut = -math.inf
        self._verify = False  # slow start ended on saturation: the next window at the limit starts a descent
        # whether a window's latency came out well below the one before it with no fewer requests in flight:
        # the earlier one was blurred (a busy client reading its replies late), so the baseline may be too
        self._blurred = False
        self._previous: tuple[float, float] | None = None  # the last window's (mean latency, in flight)
        self._recover_to = 0.0
        self._means: collections.deque[float] = collections.deque(maxlen=BASELINE_WINDOWS)
        # what the run shows
        self.requests = 0
        self.rate_limited = 0
        self.overloaded = 0
        self.decisions = 0
        self.lowest = self.highest = self.limit
        self.latency = 0.0  # the last window's mean, or a moving average until the first window
        self.held = 0.0  # seconds of holds asked for by the server (Retry-After)

    # ---- the limit --------------------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    def _set(self, value: float) -> None:
        self._limit = min(float(self.ceiling), max(1.0, value))
        self.lowest = min(self.lowest, self.limit)
        self.highest = max(self.highest, self.limit)

    def may_start(self, now: float) -> bool:
        return self.in_flight < self.limit and now >= self.hold_until

    def start(self) -> Ticket:
        """A request takes a slot (the caller checked :meth:`may_start`)."""
        self._first_of_window()
        self.in_flight += 1
        if self.in_flight >= self.limit:
            self._limited = True
        return Ticket(self.clock(), self.in_flight)

    def grant(self, count: int) -> None:
        """``count`` slots taken at once, without tickets (the Ray limits actor leases slots to workers)."""
        self._first_of_window()
        self.in_flight += count
        if self.in_flight >= self.limit:
            self._limited = True

    def _first_of_window(self) -> None:
        if self._window_idle:
            self._window_start = self.clock()
            self._window_idle = False

    def note_waiting(self) -> None:
        """A request had to wait for a slot: the limit is what bounds this model now."""
        self._limited = True

    # ---- feedback ---------------------------------------------------------------------------------------

    def finish(self, ticket: Ticket, signal: str, retry_after: float | None = None) -> bool:
        """The request gave its slot back; returns whether the limit or the hold changed."""
        in_flight = self.in_flight  # itself included: Little's law counts it
        self.in_flight -= 1
        now = self.clock()
        return self.feedback(ticket.start, now - ticket.start, in_flight, signal, retry_after, now, ticket.in_flight)

    def feedback(
        self,
        started: float,
        latency: float,
        in_flight: int,
        signal: str,
        retry_after: float | None = None,
        now: float | None = None,
        order: int = 0,
    ) -> bool:
        """One finished request: when it started, how long it took, how many were in flight as it ended
        (itself included), what came of it; ``order``: its place among requests started at the same instant
        (a ticket's in-flight count). Also how samples from other processes arrive, on Ray."""
        now = self.clock() if now is None else now
        if signal == NEUTRAL:
            return False
        self.requests += 1
        if signal == OK:
            self.latency = latency if self.latency == 0.0 else self.latency + LATENCY_EMA * (latency - self.latency)
            if not self.adaptive:
                return False
            self._completed += 1
            if started < self._window_start:
                return False
            if self._scouts is not None and self.decisions == 0:
                self._note_scout(started, order, latency)
            self._latencies.append(latency)
            self._in_flight_sum += in_flight
            if len(self._latencies) >= self._window_size():
                return self._decide(now)
            if self._overdue(now):
                return self._decide(now, overdue=True)
            return False
        if signal == RATE_LIMITED:
            self.rate_limited += 1
        else:
            self.overloaded += 1
        if not self.adaptive:
            return False
        changed = False
        if retry_after is not None and 0 < retry_after <= self.max_hold and now + retry_after > self.hold_until:
            self.held += now + retry_after - max(now, self.hold_until)
            self.hold_until = now + retry_after
            changed = True
        if started >= self._last_cut:  # one cut per round trip: older requests saw the old limit
            if self._last is None or self._last[0] != "cut":
                self._recover_to = max(self._recover_to, self._limit / 2)
            self._set(self._limit * CUT)
            self.slow_start = False
            self._last_cut = now
            self._last = ("cut",)
            self._new_window(now)
            changed = True
        return changed

    def _note_scout(self, started: float, order: int, latency: float) -> None:
        """Keep the :data:`SCOUTS` earliest-started successes of a wide start's first window: the requests a
        FIFO server served before any queue. Chosen by start time, not by arrival (the first replies back
        are the shortest, not the unqueued), and from timed samples alone, so the samples that workers send
        the Ray limits actor pick them as the local slots do."""
        scouts = self._scouts
        assert scouts is not None
        if len(scouts) < SCOUTS:
            scouts.append((started, order, latency))
            scouts.sort()
        elif (started, order) < scouts[-1][:2]:
            scouts[-1] = (started, order, latency)
            scouts.sort()

    def _window_size(self) -> int:
        """A whole round of requests at the limit judged (the first few after a change are not typical: they
        went before the queue built up), and a few at least, so one odd request does not decide.

        In slow start, the round is the slots the raise opened: they all went at once and come back about
        one round trip later. (Waiting for the whole limit would also wait for the slots that older
        requests held at the raise, whose replacements went out up to a round trip later: two round trips
        a window.) While the callers keep fewer requests out than that, a round is the requests they keep
        out."""
        if self._slow_window:
            if not self._limited:  # the callers keep fewer out than the raise allowed: a round is theirs
                return min(self._fresh, max(WINDOW_MIN, self.in_flight + 1))
            return self._fresh
        if self._last is not None and self._last[0] in ("settle", "probe") and self._last[4]:
            return max(DESCENT_WINDOW, math.ceil(self._limit))  # a halving shows plainly: fewer samples do
        climbing = self._limit < self._recover_to
        return max(WINDOW_MIN if climbing else WINDOW_MIN_STEADY, math.ceil(self._limit))

    def _reference(self) -> float | None:
        """The no-load latency known so far: the lowest window mean, or before any, the scouts' mean."""
        if self._means:
            return min(self._means)
        if self._scouts is not None and len(self._scouts) >= WINDOW_MIN:
            return sum(latency for _, _, latency in self._scouts) / len(self._scouts)
        return None

    def _overdue(self, now: float) -> bool:
        """A slow-start round still out after :data:`SLOW_SPAN` no-load latencies: the raise (or the wide
        start) only queued, and waiting for the whole round would keep that queue for as many rounds."""
        if not self._slow_window or not self._limited or len(self._latencies) < WINDOW_MIN:
            return False
        reference = self._reference()
        return reference is not None and now - self._window_start > SLOW_SPAN * reference

    def _new_window(self, now: float) -> None:
        self._window_start = now
        self._window_idle = self.in_flight == 0
        self._latencies = []
        self._in_flight_sum = 0
        self._completed = 0
        self._limited = self.in_flight >= self.limit
        self._slow_window = self.slow_start
        self._fresh = max(WINDOW_MIN, math.ceil(self._limit) - self.in_flight)

    def _decide(self, now: float, overdue: bool = False) -> bool:
        """A window is complete: keep, raise or cut the limit. Returns whether the limit changed.

        Two measures. The *gain* of the last move: the change in throughput over its share of the change in
        the limit (1 when latency stayed flat, 0 when the server only queued the extra requests); and the
        *queue*, by Vegas' reckoning: the requests in flight that the lowest recent latency (the server with
        nothing waiting) does not account for, ``in_flight * (1 - baseline / mean)``.

        A raise that paid is followed by another. One that bought (almost) nothing is undone, down to the
        server's capacity (requests in flight less the queue) plus a small queue that keeps it busy; one
        that bought a little goes back to the limit before it (a batching server, whose latency grows with
        its batch without any queue). With no raise to judge, the next window probes upwards. A queue that
        stands where no raise is possible (the ceiling), and now and then anyway, is tested by a *probe*
        down to the estimated capacity: if throughput fell with it, the queue was a batching server's
        longer steps, and the limit goes straight back; if not, it was a queue, and it is gone.

        Slow start ends in one of two ways besides a raise that did not pay. A wide start's first window
        whose mean latency is :data:`QUEUE_EVIDENT` times its scouts' waited in a queue: down to the
        capacity that the scouts' latency accounts for. A round still out after :data:`SLOW_SPAN` no-load
        latencies (``overdue``): the server is saturated, so its completion rate is its capacity, whatever
        its latencies; the limit goes to that rate times the no-load latency, plus a small queue.
        """
        count = len(self._latencies)
        mean = sum(self._latencies) / count
        in_flight = self._in_flight_sum / count
        throughput = in_flight / mean if mean > 0 else math.inf
        self.latency = mean
        last = self._last
        probing = last is not None and last[0] in ("probe", "settle")
        scouts = [latency for _, _, latency in self._scouts] if self._scouts else None
        seed = sum(scouts) / len(scouts) if scouts else None
        self._scouts = None  # only the first window has scouts
        if seed is not None:
            self._means.append(seed)
            self._previous = (seed, min(SCOUTS, in_flight))
            if max(scouts) > SCOUT_SPREAD * min(scouts):
                self._blurred = True  # requests sent together to an idle server, read back far apart
        if self._previous is not None and in_flight >= self._previous[1] and mean < BLURRED * self._previous[0]:
            self._blurred = True  # more requests in flight, yet faster: the earlier latency was not the server's
        self._previous = (mean, in_flight)
        self._means.append(mean)
        baseline = min(self._means)
        queue = max(0.0, in_flight * (1.0 - baseline / mean)) if mean > 0 else 0.0
        capacity = in_flight - queue
        target = _queue_kept(self._limit)
        self.decisions += 1
        before = self.limit
        self._last = None
        if overdue:
            elapsed = now - self._window_start
            # The no-load latency that turns the rate into requests in flight: a wide start's scouts (served
            # first); else the window's own mean when above the baseline (a lowest window mean, which
            # understates a spread of latencies: a round closes on its fastest replies).
            unloaded = seed if seed is not None else max(baseline, mean)
            capacity = self._completed / elapsed * unloaded if elapsed > 0 else capacity
            if last is not None and last[0] == "raise":
                capacity = max(capacity, self._limit / last[1])  # the round before the raise did not queue
            self._saturated(min(_with_queue(capacity), self._limit / STEADY_RAISE))
        elif not self._limited and not probing:
            # The callers wanted fewer requests than allowed. A raise is still judged by the requests that did
            # go out: more of them in flight for no more throughput only queued at the server.
            if last is not None and last[0] == "raise":
                self._judge_unused_raise(last, throughput, in_flight, queue)
        elif last is not None and last[0] == "raise":
            factor, before_throughput = last[1], last[2]
            gain = (throughput / before_throughput - 1) / (factor - 1) if before_throughput > 0 else 1.0
            if gain >= MIN_GAIN:
                self._raise(throughput, in_flight, gain)
            else:
                undo = _with_queue(capacity)
                if gain >= SATURATED_GAIN:
                    undo = max(undo, self._limit / factor)
                self._saturated(min(undo, self._limit / STEADY_RAISE))
        elif last is not None and last[0] == "settle":
            self._last = ("probe", *last[1:])  # the window after a probe still drained the old queue
        elif probing:
            cut, before_throughput, restore, descending = last[1], last[2], last[3], last[4]
            loss = (1 - throughput / before_throughput) / (1 - 1 / cut) if before_throughput > 0 and cut > 1 else 0.0
            if loss >= MIN_GAIN:
                self._set(restore)  # the probe cost throughput: that queue was the server batching, or real work
            elif descending and loss < HELD_LOSS and self._limit > 1:
                self._probe(self._limit / DESCENT, throughput, descending=True)  # still a queue: further down
            else:
                self._raise(throughput, in_flight)
        elif self.decisions == 1 and seed is not None and mean > QUEUE_EVIDENT * seed:
            # the wide start already queued (a server smaller than the start)
            self._saturated(max(1.0, _with_queue(capacity)))
        elif self._verify and last is not None and last[0] == "cut" and self._limited:
            self._verify = False
            self._probe(self._limit / DESCENT, throughput, descending=True)
        elif self._limit >= self.ceiling and queue > target:
            self._probe(capacity, throughput)
        else:
            self._raise(throughput, in_flight, 1.0 if seed is not None else None)
        if (
            self._last is None
            and not probing
            and not self.slow_start
            and self._limited
            and self.decisions % BASELINE_WINDOWS == 0
            and queue > target
        ):
            # Now and then, one window without the queue: the lowest latency is measured afresh, so a
            # standing queue cannot creep into the baseline (and a server that got slower is seen).
            self._probe(capacity, throughput)
        self._new_window(now)
        return self.limit != before

    def _probe(self, capacity: float, throughput: float, *, descending: bool = False) -> None:
        """One window at ``capacity``, to see whether the queue above it was one. ``descending``: while
        throughput holds, halve again, coming back to the lowest level that held once it falls. A capacity
        reckoned from a baseline latency measured while queueing (a wide start's first round, its latencies
        blurred by a busy client or by a server already behind) is self-consistent at every limit above
        the real one: only a level below it shows the real baseline."""
        old = self._limit
        self._set(max(1.0, capacity))
        self.slow_start = False
        if self._limit < old:
            self._last = ("settle", old / self._limit, throughput, old, descending)

    def _judge_unused_raise(self, last: tuple[Any, ...], throughput: float, in_flight: float, queue: float) -> None:
        """A raise whose limit the callers never reached: judged on the growth of the requests actually in
        flight, not of the limit. Without this, a wide start whose first round looked unqueued (its latencies
        blurred by a busy client) and was raised x8 past what the callers want would stand for the whole run,
        its extra requests queueing at a saturated server unseen. Throughput that did not follow the
        requests in flight, or followed only in part while more than the kept share of them queued, cuts to
        the server's capacity plus a small queue (and the descent verifies it); so does a queue that stands
        after a blurred window, whose throughput a gain is measured against is not to be trusted. Anything
        else keeps the limit (raising further is what a window that reaches the limit decides)."""
        before_throughput, before_in_flight = last[2], last[3]
        if before_in_flight <= 0 or before_throughput <= 0:
            return
        grown = in_flight / before_in_flight
        if grown < UNUSED_GROWTH:
            return  # too few more requests went out to say anything
        gain = (throughput / before_throughput - 1) / (grown - 1)
        queued = queue > _queue_kept(in_flight)
        if gain < SATURATED_GAIN or (queued and (gain < LINEAR_GAIN or self._blurred)):
            capacity = in_flight - queue
            self._saturated(min(_with_queue(capacity), self._limit / STEADY_RAISE))

    def _saturated(self, limit: float) -> None:
        """A raise found the server saturated: down to ``limit`` (its capacity as the baseline latency
        accounts for it, plus a small queue). When that ends slow start and an earlier window was seen to be
        blurred (the baseline may then be a late-read round's, not the idle server's), the next window
        reaching the limit verifies it by a descent (:meth:`_probe`)."""
        self._verify = self.slow_start and self._blurred
        self.slow_start = False
        self._set(limit)
        self._last = ("cut",)

    def _raise(self, throughput: float, in_flight: float, gain: float | None = None) -> None:
        """Raise the limit. In slow start, by what the last raise showed (``gain``; ``None``: nothing yet, a
        narrow start's first window): x8 while throughput scaled about linearly with the limit, x2 once it
        paid only in part, x4 from a narrow start; a wide start whose first window did not queue counts
        as linear (``gain`` 1). After slow start: x1.1, or x2 while climbing back after cuts."""
        if self.slow_start:
            if gain is None:
                factor = SLOW_START
            else:
                factor = FAST_START if gain >= LINEAR_GAIN else PARTIAL_START
        elif self._limit < self._recover_to:
            factor = RECOVERY_RAISE
        else:
            factor = STEADY_RAISE
        old = self._limit
        self._set(max(old * factor, old + 1))
        if self._limit <= old:
            self.slow_start = False  # at the ceiling: nothing left to find upwards
        if self._limit >= self._recover_to:
            self._recover_to = 0.0
        self._last = ("raise", self._limit / old, throughput, in_flight) if self._limit > old else None

    def report(self) -> dict[str, Any]:
        """What summary.json and the progress bar show of this model's concurrency."""
        share = self.rate_limited / self.requests if self.requests else 0.0
        return {
            "mode": "adaptive" if self.adaptive else "fixed",
            "limit": self.limit,
            "ceiling": self.ceiling,
            "lowest": self.lowest,
            "highest": self.highest,
            "latency": round(self.latency, 4),
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "rate_limited_share": round(share, 4),
            "overloaded": self.overloaded,
            "held_seconds": round(self.held, 3),
        }


# The ticket of the request this task is making, for the server-budget mirror (x-ratelimit-* headers):
# the backend reports headers through a callback that has no other way to know which request it was.
current_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("joyforge_ticket", default=None)


class ConcurrencySlots:
    """The asyncio side of a :class:`ConcurrencyController`: callers wait here for a slot, in turn.

    A freed slot (or a raised limit, or the end of a hold) is handed straight to the next waiter, so a
    burst of replies costs O(1) per reply, not a scramble of every waiter.
    """

    def __init__(self, controller: ConcurrencyController):
        self.controller = controller
        self._waiters: collections.deque[asyncio.Future[Ticket]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    async def acquire(self) -> Ticket:
        controller = self.controller
        if not self._waiters and controller.may_start(controller.clock()):
            return controller.start()
        controller.note_waiting()
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just as the caller was cancelled
                self.release(future.result(), None, cancelled=True)
            else:
                try:
                    self._waiters.remove(future)
                except ValueError:
                    pass
            raise

    def release(self, ticket: Ticket, exc: BaseException | None, *, cancelled: bool = False) -> None:
        controller = self.controller
        signal = NEUTRAL if cancelled or isinstance(exc, asyncio.CancelledError) else signal_of(exc)
        retry_after = getattr(exc, "retry_after", None) if signal == RATE_LIMITED else None
        controller.finish(ticket, signal, retry_after)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        """Hand slots to waiters while the limit and the hold allow; else wake up when the hold ends."""
        controller = self.controller
        now = controller.clock()
        while self._waiters and controller.may_start(now):
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(controller.start())
        if self._waiters and now < controller.hold_until and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(controller.hold_until - now, self._hold_over)

    def _hold_over(self) -> None:
        self._timer = None
        self._wake()

    def slot(self) -> "SlotContext":
        return SlotContext(self)


class SlotContext:
    """``async with slots.slot():`` one request's slot; the exception leaving the block is its feedback."""

    __slots__ = ("_reset", "slots", "ticket")

    def __init__(self, slots: ConcurrencySlots):
        self.slots = slots

    async def __aenter__(self) -> Ticket:
        self.ticket = await self.slots.acquire()
        self._reset = current_ticket.set(self.ticket)
        return self.ticket

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        current_ticket.reset(self._reset)
        self.slots.release(self.ticket, exc)
        return False
