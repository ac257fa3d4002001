"""Admission rules on a fake clock (serving/admission.py), and what the REST gate takes for one whole POST
(protocols/rest/gate.py). The server-level behaviour is in test_overload.py."""

from __future__ import annotations

import json

import pytest

from pyserving.observability.monitoring import Metrics
from pyserving.protocols.rest.gate import OVERLOADED_MESSAGE, RestGate, whole_post
from pyserving.serving.admission import INTERVAL_SECONDS, MIN_SAMPLES, TARGET_POSITIONS, Admission

SERVICE = 0.001  # each request costs 1 ms of the server's time, one at a time


class Queue:
    """A one-at-a-time server on a fake clock: requests arrive, are admitted or refused, and leave
    in order, each after SERVICE."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.now = 0.0
        self.tokens: list = []
        self.free_at = 0.0
        self.done_at: list[float] = []
        self.refused = 0

    def arrive(self) -> bool:
        self._finish_until(self.now)
        if self.admission.refusal(now=self.now) is not None:
            self.refused += 1
            return False
        self.tokens.append(self.admission.enter(self.now))
        self.free_at = max(self.free_at, self.now) + SERVICE
        self.done_at.append(self.free_at)
        return True

    def _finish_until(self, t: float) -> None:
        while self.done_at and self.done_at[0] <= t:
            self.admission.leave(self.tokens.pop(0), now=self.done_at.pop(0))

    def run_until(self, t: float) -> None:
        self._finish_until(t)
        self.now = t


def test_a_burst_that_drains_is_never_refused():
    q = Queue(Admission(limit=0, target=0.005))
    for second in range(3):  # 60 at once, every 100 ms: 60 ms of work each time, then idle
        for burst in range(10):
            q.run_until(second + burst * 0.1)
            assert all(q.arrive() for _ in range(60))
    assert q.refused == 0 and not q.admission.shedding


def test_a_standing_queue_is_shed_and_accepted_requests_keep_the_target():
    q = Queue(Admission(limit=0, target=0.005))
    t, waits = 0.0, []
    while t < 2.0:  # twice what the server can do: one request every 0.5 ms
        q.run_until(t)
        if q.arrive() and t > 0.5:
            waits.append(q.done_at[-1] - t)
        t += SERVICE / 2
    assert q.admission.shedding
    assert 0.4 < q.refused / (2.0 / (SERVICE / 2)) < 0.6  # about half refused
    target = max(0.005, TARGET_POSITIONS * SERVICE)  # never below 16 requests' worth
    assert max(waits) < target + 2 * SERVICE, max(waits)  # accepted ones wait about the target
    # The flood ends: the queue drains, and after an interval the server takes everything again.
    q.run_until(t + 1)
    assert q.arrive()
    q.run_until(t + 1 + INTERVAL_SECONDS * 2)
    assert q.arrive() and not q.admission.shedding


@pytest.mark.parametrize("deadlines", [False, True])
def test_a_standing_queue_judges_a_clients_deadline_by_itself_unless_told(deadlines):
    """Once shedding, a request without a deadline past the target is refused; one with the
    client's own deadline (gRPC's), which it can make, is taken, unless the operator applies the
    target to deadlines too (--queue_delay_target_applies_to_deadlines)."""
    q = Queue(Admission(limit=0, target=0.005, deadlines=deadlines))
    t = 0.0
    while t < 1.0:  # twice capacity: a queue stands
        q.run_until(t)
        q.arrive()
        t += SERVICE / 2
    assert q.admission.shedding
    assert q.admission.refusal(now=t) is not None
    refused = q.admission.refusal(deadline=10.0, now=t, client_deadline=True)
    assert (refused is not None) == deadlines, refused
    # The server's own timeout (REST's) is no client's word: the standing queue still judges it.
    assert q.admission.refusal(deadline=10.0, now=t) is not None


def test_without_a_target_only_the_bound_and_deadline_refuse():
    q = Queue(Admission(limit=0, target=0))
    for i in range(4000):
        q.run_until(i * SERVICE / 2)
        assert q.arrive()
    bounded = Admission(limit=2, target=0)
    bounded.enter(0.0), bounded.enter(0.0)
    assert "--max_pending_requests=2" in bounded.refusal(now=0.0)


def test_the_target_scales_with_a_slow_models_service_time():
    # A 100 ms model with 8 closed-loop clients: a queue of 8 is its ordinary state, not an overload.
    admission = Admission(limit=0, target=0.005)
    now, tokens = 0.0, []
    for _ in range(8):
        tokens.append(admission.enter(now))
    for step in range(200):
        now += 0.1
        admission.leave(tokens.pop(0), now=now)
        assert admission.refusal(now=now) is None, step
        tokens.append(admission.enter(now))


def test_a_slow_first_answer_does_not_refuse_a_burst_with_deadlines():
    # TF Serving's MNIST client: 1,000 futures with 10 s deadlines on a fresh server, whose first
    # answer takes 85 ms (the Session optimises the graph on its first run) and the others 0.3 ms.
    admission = Admission(limit=0, target=0.05)
    tokens, now, refused = [], 0.0, 0

    def send() -> None:
        nonlocal refused
        if admission.refusal(10.0 - now, now=now) is None:
            tokens.append(admission.enter(now))
        else:
            refused += 1

    while len(tokens) < 400:  # the client sends while the first answer is being made
        send()
        now += 0.0002
    now = 0.085
    for _ in range(600):
        admission.leave(tokens.pop(0), now=now)
        now += 0.0003
        send()
    assert refused == 0 and 0 < admission._per_position < 0.001, admission._per_position


def test_a_request_that_would_miss_its_deadline_is_refused_once_answers_are_known():
    admission = Admission(limit=0, target=0)
    now = 0.0
    for _ in range(MIN_SAMPLES):  # 1.5 s answers, one at a time
        token = admission.enter(now)
        now += 1.5
        admission.leave(token, now=now)
    admission.enter(now)  # one running
    assert "past its deadline of 1000 ms" in admission.refusal(1.0, now=now)
    assert admission.refusal(2.0, now=now) is None


def _post(body: bytes = b'{"instances": [1.0]}', extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return (f"POST /v1/models/m:predict {version}\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("data, expected", [
    (_post(), True),
    (_post(extra="Connection: close\r\n"), False),
    (_post(extra="CONTENT-length: 20\r\n"), None),  # two lengths: aiohttp's 400, not ours
    (_post()[:-1], None),  # the body is still arriving
    (_post() + _post(), None),  # pipelined
    (_post(extra="Transfer-Encoding: chunked\r\n"), None),
    (_post(extra="Expect: 100-continue\r\n"), None),
    (_post(version="HTTP/1.0"), None),
    (b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n", None),  # health checks are never refused here
    (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", True),
])
def test_whole_post(data, expected):
    assert whole_post(data) is expected


def test_the_gate_answers_503_with_retry_after_and_tf_servings_error_body():
    admission = Admission(limit=0, target=0.005)
    admission.shedding, admission._per_position, admission._first = True, 0.001, [0.001] * MIN_SAMPLES
    for _ in range(50):
        admission.enter(0.0)
    metrics = Metrics()
    answer, keep_alive = RestGate(admission, metrics, cors=True).refuse(_post())
    head, body = answer.split(b"\r\n\r\n")
    assert keep_alive and head.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nRetry-After: 1\r\n" in head and b"\r\nAccess-Control-Allow-Origin: *\r\n" in head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    assert json.loads(body) == {"error": OVERLOADED_MESSAGE}
    assert RestGate(admission, metrics).refuse(_post()[:-1]) is None  # not whole: left to aiohttp
    assert metrics.shed._value.get() == 1


def test_a_long_event_loop_cycle_is_a_standing_queue_even_when_the_count_drops_each_cycle():
    # Requests served on the loop come in batches: each cycle's first arrivals find nothing
    # pending, however long the cycle. The REST gate's loop lag says how long they really wait.
    lag = 0.080
    admission = Admission(limit=0, target=0.050, lag=lambda: lag)
    now, accepted = 0.0, []
    for cycle in range(10):  # 300 requests a cycle, 0.27 ms each: an 80 ms cycle
        tokens = []
        for _ in range(300):
            if admission.refusal(now=now) is None:
                tokens.append(admission.enter(now))
        accepted.append(len(tokens))
        for token in tokens:
            now += 0.00027
            admission.leave(token, now=now)
    assert admission.shedding
    assert accepted[:2] == [300, 300]  # an interval (200 ms here) before the queue counts as standing
    # Then about the target's worth a cycle: 50 ms / 0.27 ms = ~185, not 300.
    assert all(170 <= n <= 200 for n in accepted[-3:]), accepted
    lag = 0.010  # the flood is over: the loop cycles fast again
    for _ in range(5):
        now += 0.1
        assert admission.refusal(now=now) is None
    assert not admission.shedding


def test_the_loop_lag_probe_sees_a_blocked_loop():
    import asyncio
    import time

    from pyserving.protocols.rest.gate import LoopLag

    async def run() -> tuple[float, float]:
        lag = LoopLag()
        lag.start()
        await asyncio.sleep(0.12)
        idle = lag()
        for _ in range(4):
            time.sleep(0.06)  # a callback that holds the loop 60 ms
            await asyncio.sleep(0)
        await asyncio.sleep(0.011)
        busy = lag()
        lag.stop()
        return idle, busy

    idle, busy = asyncio.run(run())
    assert idle < 0.02 and busy > 0.04, (idle, busy)


def test_grpc_gate_refuses_a_share_that_follows_the_wait_in_the_core():
    from pyserving.protocols.grpc.gate import GAIN, MAX_REFUSED, GrpcGate

    gate = GrpcGate(target=0.05)
    assert not any(gate.refuse() for _ in range(100))  # no queue measured: nothing refused
    gate.waiting, gate.seconds = 200, 0.10  # twice the target: the share rises, a step at most
    gate.on_sample()
    assert gate.refused_share == pytest.approx(GAIN)
    refused = sum(gate.refuse() for _ in range(1000))
    assert refused == pytest.approx(1000 * GAIN, abs=1)  # exactly the share, spread evenly
    for _ in range(50):  # a flood refusals can't hold: capped, so a tenth is still served
        gate.on_sample()
    assert gate.refused_share == MAX_REFUSED
    gate.seconds = 0.04  # under the target: the share comes down gradually
    gate.on_sample()
    assert 0 < gate.refused_share < MAX_REFUSED
    gate.waiting = 0  # the core is empty: nothing is refused at all
    gate.on_sample()
    assert gate.refused_share == 0 and not any(gate.refuse() for _ in range(100))


def test_grpc_gate_sheds_calls_with_deadlines_only_as_the_core_wait_nears_them():
    """Calls with a deadline are judged against the deadlines calls come with: a burst that drains
    in time is never refused; a queue growing toward the deadline is refused as it is taken, not left
    to wait it out. With the operator's switch they are shed toward the target like the rest."""
    from pyserving.protocols.grpc.gate import DEADLINE_FRACTION, GrpcGate

    gate = GrpcGate(target=0.05)
    for _ in range(100):  # TF Serving's MNIST client: 10 s futures, a core wait far above the target
        assert not gate.refuse(10.0)
    gate.waiting, gate.seconds = 1000, 0.5
    gate.on_sample()
    assert gate.budget == pytest.approx(10.0, rel=0.1) and gate.deadline_share == 0
    assert gate.refused_share > 0 and not any(gate.refuse(9.5) for _ in range(100))
    gate.seconds = DEADLINE_FRACTION * 10.0 * 2  # one period's estimate past the deadlines: noise
    gate.on_sample(now=0.0)
    gate.seconds = 0.5
    gate.on_sample(now=0.02)
    assert gate.deadline_share == 0
    gate.seconds = DEADLINE_FRACTION * 10.0 * 2  # the wait stays past them for a tenth of the budget: shed
    for i in range(8):
        gate.refuse(9.0)
        gate.on_sample(now=1.0 + i * 0.25)
    assert gate.deadline_share > 0 and sum(gate.refuse(1.0) for _ in range(100)) > 0
    gate.waiting = 0  # drained: nothing is refused
    gate.on_sample()
    assert gate.deadline_share == 0 and not any(gate.refuse(5.0) for _ in range(100))

    switched = GrpcGate(target=0.05, deadlines=True)
    switched.waiting, switched.seconds = 1000, 0.5
    switched.on_sample()
    assert sum(switched.refuse(10.0) for _ in range(100)) > 0  # the target applies to them too


def test_calls_the_core_cancels_past_its_limit_are_not_counted_as_queued():
    """grpc's core cancels calls past its pending limit without counting them finished: what is
    counted past the limit was lost, and stays out of the queue once the real one drains."""
    from pyserving.protocols.grpc.gate import CORE_PENDING_LIMIT, CoreQueue, core_pending_limit

    queue = CoreQueue(limit=10)
    assert queue._queued(25) == 10 and queue.lost == 15
    assert queue._queued(20) == 5  # the real queue draining, the lost calls still counted open
    assert queue._queued(10) == 0 and queue.lost == 10  # fewer than the lost: those finished after all
    assert queue._queued(12) == 2
    assert core_pending_limit({}) == CORE_PENDING_LIMIT
    assert core_pending_limit({"grpc.server.max_pending_requests_hard_limit": 50}) == 50
    assert core_pending_limit({"grpc.server.max_pending_requests_hard_limit": "x"}) == CORE_PENDING_LIMIT
