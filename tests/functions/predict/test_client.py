"""The scoring client's retries (stamina): which answers are tried again, and how many times."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from functions.predict.api import ApiError
from functions.predict.client import ADDRESS_REFRESH_S, ScoringAddress, ScoringClient, _Batcher, served_from_info
from functions.settings import load_settings
from tests.factories import AML_APP_SETTINGS, LOCAL_APP_SETTINGS

OK = (200, {"forecasts": [], "model": {"version": "1"}})


class _Scripted(ThreadingHTTPServer):
    """A real HTTP endpoint that answers each request with the next (status, JSON) of its script.

    A script entry may be a function of the request's JSON; ``delay_s`` holds each answer back.
    """

    def __init__(self, script: list, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.seen = 0
        self.bodies: list[dict] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.active = self.most_active = 0  # calls being answered at once, and the most seen


class _Handler(BaseHTTPRequestHandler):
    server: _Scripted

    def do_POST(self) -> None:
        request = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        entry = self.server.script[min(self.server.seen, len(self.server.script) - 1)]
        self.server.seen += 1
        self.server.bodies.append(request)
        with self.server.lock:
            self.server.active += 1
            self.server.most_active = max(self.server.most_active, self.server.active)
        time.sleep(self.server.delay_s)
        with self.server.lock:
            self.server.active -= 1
        status, doc = entry(request) if callable(entry) else entry
        body = orjson.dumps(doc)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[callable]:
    servers: list[_Scripted] = []

    def start(script: list, delay_s: float = 0.0) -> _Scripted:
        server = _Scripted(script, delay_s)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _client(server: _Scripted, retries: int, workers: int = 1) -> ScoringClient:
    host, port = server.server_address
    settings = load_settings(
        {
            **LOCAL_APP_SETTINGS,
            "BarsStorage": "UseDevelopmentStorage=true",
            "SCORING_URL": f"http://{host}:{port}/score",
            "SCORING_RETRIES": str(retries),
            "SCORING_WORKERS": str(workers),
        }
    )
    return ScoringClient(settings)


ERROR = {"error": {"code": "boom", "message": "boom"}}


@pytest.mark.parametrize(
    ("script", "retries", "status", "requests"),
    [
        ([(503, ERROR), (502, ERROR), OK], 2, 200, 3),
        ([(500, ERROR), OK], 0, 503, 1),
        ([(500, ERROR)], 2, 503, 3),
        ([(422, {"error": {"code": "not_enough_bars", "message": "need 40"}})], 2, 422, 1),
        ([(400, {"error": {"code": "malformed", "message": "bad"}})], 2, 400, 1),
        ([OK], 2, 200, 1),
    ],
)
def test_5xx_is_retried_up_to_the_cap_and_4xx_never(endpoint, script, retries, status, requests):
    """A 5xx is tried again at most SCORING_RETRIES times; a 4xx or a 200 ends the call at once."""
    server = endpoint(script)
    client = _client(server, retries)
    if status == 200:
        doc, _ = client.score([{"symbol": "AAPL"}], "req-1")
        assert doc == OK[1]
    else:
        with pytest.raises(ApiError) as err:
            client.score([{"symbol": "AAPL"}], "req-1")
        assert err.value.status == status
        assert err.value.code == ("endpoint_unavailable" if status == 503 else script[0][1]["error"]["code"])
    assert server.seen == requests


def _batch_endpoint(request: dict) -> tuple[int, dict]:
    """What score.py answers: one forecast per request naming its first bar's symbol; too few bars is 422."""

    def one(item: dict) -> tuple[int, dict]:
        if len(item["bars"]) < 2:
            return 422, {"error": {"code": "not_enough_bars", "message": "need 2"}}
        return 200, {"forecasts": [{"symbol": item["bars"][0]["symbol"]}], "model": {"version": "1"}}

    if "requests" in request:
        return 200, {
            "responses": [dict(zip(("status", "body"), one(item), strict=True)) for item in request["requests"]]
        }
    return one(request)


def _concurrently(client: ScoringClient, requests: list[list[dict]]) -> list[object]:
    def call(i: int) -> object:
        try:
            return client.score(requests[i], f"req-{i}")[0]
        except ApiError as err:
            return (err.status, err.code)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(call, range(len(requests))))


def test_requests_queued_behind_a_call_share_the_next_one(endpoint):
    """Concurrent requests go out in fewer calls than requests, and each gets its own answer or 4xx."""
    server = endpoint([_batch_endpoint], delay_s=0.2)
    client = _client(server, 0)
    requests = [[{"symbol": f"S{i}"}] * (1 if i == 3 else 2) for i in range(8)]
    answers = _concurrently(client, requests)
    assert answers[3] == (422, "not_enough_bars")
    assert [a["forecasts"][0]["symbol"] for i, a in enumerate(answers) if i != 3] == [
        f"S{i}" for i in range(8) if i != 3
    ]
    assert server.seen < 8
    batched = [body for body in server.bodies if "requests" in body]
    assert batched and sum(len(b["requests"]) for b in batched) + server.seen - len(batched) == 8


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_one_call_in_flight_per_scoring_worker(endpoint, workers):
    """Queued requests keep every scoring worker busy, never more calls at once than SCORING_WORKERS."""
    server = endpoint([_batch_endpoint], delay_s=0.2)
    client = _client(server, 0, workers)
    answers = _concurrently(client, [[{"symbol": f"S{i}"}] * 2 for i in range(12)])
    assert [a["forecasts"][0]["symbol"] for a in answers] == [f"S{i}" for i in range(12)]
    assert server.most_active == workers
    assert server.seen < 12  # batches still form behind the busy workers


def test_an_endpoint_without_batches_gets_one_request_per_call(endpoint):
    """A batch refused as malformed (an older scoring script) is resent request by request, and batching stops."""

    def old_endpoint(request: dict) -> tuple[int, dict]:
        if "bars" not in request:
            return 400, {"error": {"code": "malformed", "message": 'body must be {"bars": [...]}'}}
        return 200, {"forecasts": [{"symbol": request["bars"][0]["symbol"]}]}

    server = endpoint([old_endpoint], delay_s=0.2)
    client = _client(server, 0)
    requests = [[{"symbol": f"S{i}"}] for i in range(6)]
    answers = _concurrently(client, requests)
    assert [a["forecasts"][0]["symbol"] for a in answers] == [f"S{i}" for i in range(6)]
    assert client._max_batch() == 1
    refused = [body for body in server.bodies if "requests" in body]
    assert len(refused) == 1 and len(server.bodies) == 1 + 6


@pytest.mark.parametrize(
    ("info", "expected"),
    [({"max_batch": 64}, 64), ({}, 1), ({"max_batch": True}, 1), ({"max_batch": 0}, 1), ({"max_batch": "8"}, 1)],
)
def test_the_endpoints_max_batch_is_read_from_its_get(info, expected):
    """GET's max_batch turns batching on; absent or malformed, requests go one per call."""
    assert served_from_info({"bars_needed": 40, **info}, 90, 0.0).max_batch == expected


class _Interrupt(BaseException):
    """Stands for KeyboardInterrupt or SystemExit inside a scoring call."""


def test_an_interrupted_call_answers_its_requests_and_hands_the_worker_to_the_queue():
    """A call that dies with a BaseException raises in its requests, and the queued ones still go, in one batch."""
    release, sent = threading.Event(), []

    def send(batch):
        sent.append([p.request_id for p in batch])
        if batch[0].request_id == "first":
            release.wait(5)
            raise _Interrupt
        return [({"id": p.request_id}, 0.01) for p in batch]

    batcher = _Batcher(send, 1)
    outcomes: dict[str, object] = {}

    def submit(request_id: str) -> None:
        try:
            outcomes[request_id] = batcher.submit([], request_id, 64)
        except _Interrupt as exc:
            outcomes[request_id] = exc

    first = threading.Thread(target=submit, args=("first",))
    first.start()
    while not sent:
        time.sleep(0.005)
    queued = [threading.Thread(target=submit, args=(f"q{i}",)) for i in range(3)]
    for i, thread in enumerate(queued):
        thread.start()
        while len(batcher._queue) <= i:  # queued in this order
            time.sleep(0.005)
    release.set()
    for thread in (first, *queued):
        thread.join(5)
    assert isinstance(outcomes["first"], _Interrupt)
    assert {k: v for k, v in outcomes.items() if k != "first"} == {f"q{i}": ({"id": f"q{i}"}, 0.01) for i in range(3)}
    assert sent == [["first"], ["q0", "q1", "q2"]]
    assert (batcher._in_flight, batcher._queue) == (0, [])


class _Lookups:
    """The endpoint's scoring_uri as Azure ML answers it, one answer (or error) per read."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.reads = 0

    def __call__(self) -> object:
        answer = self.answers[min(self.reads, len(self.answers) - 1)]
        self.reads += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


class _KeyAuth:
    """The endpoint key, as EndpointAuth would have fetched it with the identity."""

    def headers(self) -> dict[str, str]:
        """A fixed bearer key."""
        return {"Authorization": "Bearer k"}

    def invalidate(self) -> None:
        """Nothing cached to drop."""


def _azure_settings(**extra: str):
    return load_settings({**AML_APP_SETTINGS, "SCORING_AUTH": "key", "SCORING_RETRIES": "2", **extra})


@pytest.mark.parametrize(
    ("extra", "reads"),
    [
        ({"SCORING_AUTH": "key"}, True),
        ({"SCORING_AUTH": "aml_token"}, True),
        ({"SCORING_AUTH": "key", "SCORING_URL": "https://override.example/score"}, False),
        ({"SCORING_AUTH": "none"}, False),
    ],
)
def test_the_address_is_read_from_the_endpoint_unless_overridden(extra, reads):
    """In Azure the endpoint's scoring_uri is the address; SCORING_URL overrides it; locally the local server."""
    assert load_settings({**AML_APP_SETTINGS, **extra}).reads_scoring_uri is reads


def test_the_address_is_read_once_and_again_only_after_a_pause():
    """First use reads the endpoint; a refresh soon after asks nothing; a failed read keeps the address."""
    lookups = _Lookups("https://a.example/api/v1/endpoint/ep/score", RuntimeError("ARM 503"), "https://b.example/score")
    address = ScoringAddress(_azure_settings(), lookups)
    assert address.url("r") == address.url("r") == "https://a.example/api/v1/endpoint/ep/score"
    address.refresh("r")
    assert lookups.reads == 1  # read moments ago
    address._read_at -= ADDRESS_REFRESH_S
    address.refresh("r")
    assert (lookups.reads, address.url("r")) == (2, "https://a.example/api/v1/endpoint/ep/score")
    address._read_at -= ADDRESS_REFRESH_S
    address.refresh("r")
    assert (lookups.reads, address.url("r")) == (3, "https://b.example/score")


@pytest.mark.parametrize("answer", [None, "", "ftp://x/score", RuntimeError("endpoint not found")])
def test_an_endpoint_without_an_address_is_a_503(answer):
    """No scoring_uri yet (or no endpoint): the request gets 503 endpoint_unavailable, and the next one reads again."""
    lookups = _Lookups(answer)
    address = ScoringAddress(_azure_settings(), lookups)
    for _ in range(2):
        with pytest.raises(ApiError) as err:
            address.url("r")
        assert (err.value.status, err.value.code) == (503, "endpoint_unavailable")
    assert lookups.reads == 2


def test_a_moved_endpoint_is_found_again_after_a_connection_failure(endpoint):
    """The router moved: the refused connection reads the scoring_uri again and the retry reaches the new address."""
    old, new = endpoint([OK]), endpoint([OK])
    urls = [f"http://{h}:{p}/score" for h, p in (old.server_address, new.server_address)]
    lookups = _Lookups(*urls)
    client = ScoringClient(_azure_settings())
    client.auth, client.address = _KeyAuth(), ScoringAddress(client.settings, lookups)
    assert client.score([{"symbol": "A"}], "req-1")[0] == OK[1]
    old.shutdown()
    old.server_close()
    client.http.close()  # the pooled keep-alive connection to the old address goes with it
    client.address._read_at -= ADDRESS_REFRESH_S  # the address was read long ago
    assert client.score([{"symbol": "A"}], "req-2")[0] == OK[1]
    assert (lookups.reads, old.seen, new.seen) == (2, 1, 1)
