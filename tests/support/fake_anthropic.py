"""A local stand-in for the Anthropic Messages API (`POST /v1/messages`), for tests over real HTTP.

It listens on 127.0.0.1 on an ephemeral port, in a background thread, and answers each request with
the next scripted `Reply` (a tool_use message, an error status, a slow answer, a text-only answer);
with nothing left scripted it answers 500. It records every request (path, headers, JSON body) so a
test can check what the SDK really sent. A request without a key (neither `x-api-key` nor a bearer
token) gets 401, as from the real API. Point the SDK at it with `base_url=server.base_url`.

    with FakeAnthropic() as server:
        server.script(rate_limited(), tool_use({...}))
        ...
        assert len(server.requests) == 2
"""

import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a 200 message (`content`), or an error `status` with an Anthropic error body."""

    status: int = 200
    content: tuple[dict[str, Any], ...] = ()
    stop_reason: str = "tool_use"
    error_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (longer than the client's timeout: a timeout)


def tool_use(tool_input: dict[str, Any], name: str = "report_diagnosis") -> Reply:
    return Reply(content=({"type": "tool_use", "id": "", "name": name, "input": tool_input},))


def text_only(text: str = "I think the rewarded slots are the problem.") -> Reply:
    return Reply(content=({"type": "text", "text": text},), stop_reason="end_turn")


def rate_limited() -> Reply:
    # The API sends retry-after; the SDK reads 0 as "unspecified" and backs off 0.5 s or more, so
    # retry-after-ms (which it reads first) keeps a test's retry immediate.
    return Reply(status=429, error_type="rate_limit_error", headers={"retry-after": "0", "retry-after-ms": "10"})


def server_error() -> Reply:
    return Reply(status=500, error_type="api_error", headers={"retry-after-ms": "10"})


def slow(tool_input: dict[str, Any], delay_s: float = 3.0) -> Reply:
    return Reply(content=tool_use(tool_input).content, delay_s=delay_s)


def api_key(headers: dict[str, str]) -> str:
    """The key a request carried: `x-api-key`, or the bearer token (what anthropic 2.x sends)."""
    bearer = headers.get("authorization", "")
    return headers.get("x-api-key") or (bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else "")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]


class FakeAnthropic:
    """The stand-in server; a context manager that starts and stops it."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="fake-anthropic",
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def __enter__(self) -> "FakeAnthropic":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # wakes slow answers, which then find their client gone
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next(self, recorded: Recorded) -> tuple[Reply, int]:
        with self._lock:
            self.requests.append(recorded)
            reply = self._queue.popleft() if self._queue else Reply(status=500, error_type="api_error")
            return reply, next(self._ids)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                recorded = Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if self.path.split("?")[0] != "/v1/messages":
                    with fake._lock:
                        fake.requests.append(recorded)
                    return self._send(404, {"type": "error", "error": {"type": "not_found_error",
                                                                       "message": f"no route {self.path}"}}, {}, 0)
                if not api_key(recorded.headers):
                    with fake._lock:
                        fake.requests.append(recorded)
                    return self._send(401, {"type": "error", "error": {"type": "authentication_error",
                                                                       "message": "no API key"}}, {}, 0)
                reply, n = fake._next(recorded)
                if reply.delay_s and fake._stop.wait(reply.delay_s):
                    self.close_connection = True
                    return
                if reply.status != 200:
                    payload = {"type": "error", "error": {"type": reply.error_type or "api_error",
                                                          "message": f"scripted {reply.status}"},
                               "request_id": f"req_fake_{n:04d}"}
                else:
                    content = [{**b, "id": f"toolu_fake_{n:04d}"} if b["type"] == "tool_use" else b
                               for b in reply.content]
                    payload = {"id": f"msg_fake_{n:04d}", "type": "message", "role": "assistant",
                               "model": body.get("model", "claude-fake"), "content": content,
                               "stop_reason": reply.stop_reason, "stop_sequence": None,
                               "usage": {"input_tokens": len(raw) // 4, "output_tokens": 64}}
                self._send(reply.status, payload, reply.headers, n)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str], n: int) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_fake_{n:04d}")
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        return Handler
