"""`r1kit serve`, and `serve_in_thread` for tests and scripts: uvicorn around create_app, with deadlines.

uvicorn (0.3x-0.5x, h11) enforces no deadline on a request's head: its keep-alive timer starts only after a first
response and is cancelled by any byte, so a client that trickles one header byte at a time holds a connection
forever (slowloris). `DeadlineH11Protocol` adds one: a connection whose request head is not complete
`header_timeout` seconds after the connection opened, or after the previous response, is closed. Bodies have their
own deadline (middleware.BodyLimit).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from r1kit.errors import R1kitError
from r1kit.serve.app import DEFAULT_BODY_TIMEOUT_S, create_app
from r1kit.serve.server import DEFAULT_MAX_QUEUE, SERVE_TEMPLATES

DEFAULT_HEADER_TIMEOUT_S = 10.0  # a request head (request line + headers) must arrive within this long
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _deadline_protocol(header_timeout: float):
    """uvicorn's h11 protocol class plus a deadline on each request head."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        _head_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no response: the client never finished asking

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # the head is in (the body has its own deadline)
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # waiting for the next request head on this keep-alive connection

    return DeadlineH11Protocol


def _config(app, header_timeout: float, **kw):
    import uvicorn

    if not header_timeout > 0:
        raise R1kitError(f"header_timeout must be > 0 seconds, got {header_timeout}")
    return uvicorn.Config(app, http=_deadline_protocol(header_timeout), log_level="warning",
                          timeout_keep_alive=5, **kw)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not (port taken, unknown host, no permission)."""
    if not 0 <= port <= 65535:
        raise R1kitError(f"port must be in 0..65535, got {port}")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise R1kitError(f"cannot listen on {host}:{port}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise R1kitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16,
          max_seq_len: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE, template: str = "",
          reasoning: bool = True, served_model_name: str | None = None, prefix_cache_mb: int = 1024,
          device: str | None = None, threads: int | None = None, compile: bool = False, api_key: str | None = None,
          allowed_hosts: str = "", log_prompts: bool = False, header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
          body_timeout: float = DEFAULT_BODY_TIMEOUT_S) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (with DeepSeek's reasoning_content) and a web chat at /.

    Args:
        model: an HF checkpoint folder, a .gguf file or a preset name (a preset has RANDOM weights).
        host: the interface to listen on (127.0.0.1 = this machine only; 0.0.0.0 = every interface).
        port: the TCP port.
        max_batch: requests decoded together (engine slots); more wait in the queue.
        max_seq_len: positions per request, prompt + completion; default min(model context, 4096).
        max_queue: requests waiting for a slot beyond max_batch; one more is answered 429.
        template: empty = the checkpoint's own (saved with it); r1 (DeepSeek-R1 chat template, with the <think>
            prefill, the DeepThink switch and tool calls), r1-zero (the R1-Zero prompt) or model (the tokenizer's
            own chat template; the reply is answer unless it opens with <think>).
        reasoning: split the reply into reasoning_content and content at </think>; --no-reasoning puts
            everything in content.
        served_model_name: the model id clients send; default the model argument's last path component.
        prefix_cache_mb: memory for reused prompt prefixes (DeepSeek-style context caching); 0 = off.
        device: cpu or cuda; default cuda when available (bf16), else cpu (fp32).
        threads: torch CPU threads; default torch's choice.
        compile: compile the decode step (static shapes; CUDA graphs on GPU).
        api_key: require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $R1KIT_API_KEY; unset = open).
        allowed_hosts: comma-separated host names accepted in the Host header besides loopback names and IP
            addresses (a guard against DNS rebinding); * accepts any.
        log_prompts: put the last user message in the request log line (off: no prompt text is logged).
        header_timeout: seconds a client has to send a request's head; slower connections are closed.
        body_timeout: seconds a client has to send a request's body; slower ones get 408.
    """
    import uvicorn

    from r1kit.engine.load import load_for_command

    if template and template not in SERVE_TEMPLATES:
        raise R1kitError(f"unknown template {template!r}; expected one of {', '.join(SERVE_TEMPLATES)}")
    if max_batch < 1:
        raise R1kitError(f"max_batch must be >= 1, got {max_batch}")
    if prefix_cache_mb < 0:
        raise R1kitError(f"prefix_cache_mb must be >= 0, got {prefix_cache_mb}")
    if not body_timeout > 0:
        raise R1kitError(f"body_timeout must be > 0 seconds, got {body_timeout}")
    hosts = tuple(h.strip() for h in allowed_hosts.split(",") if h.strip())
    api_key = api_key if api_key is not None else os.environ.get("R1KIT_API_KEY") or None
    if api_key is not None and not api_key.strip():
        raise R1kitError("api_key is empty")
    config = _config(None, header_timeout)  # checks header_timeout before the slow parts
    sock = bind(host, port)  # before loading the model: a taken port fails in a second, not after minutes
    _setup_request_log()
    net, tok = load_for_command(model, device=device, threads=threads)
    template = template or tok.template  # the template the checkpoint was trained for
    name = served_model_name or Path(model.rstrip("/")).name
    app = create_app(net, tok, model_name=name, max_batch=max_batch, max_seq_len=max_seq_len, max_queue=max_queue,
                     template=template, reasoning=reasoning, prefix_cache_bytes=prefix_cache_mb << 20,
                     compile=compile, api_key=api_key, allowed_hosts=hosts, log_prompts=log_prompts,
                     body_timeout=body_timeout)
    config.app = app
    if host not in LOOPBACK_HOSTS and api_key is None:
        bar = "!" * 100
        print(f"{bar}\nWARNING: serving on {host}, reachable from other machines, with NO API KEY: anyone who can "
              f"reach this port can use the model.\nSet --api-key or R1KIT_API_KEY.\n{bar}", file=sys.stderr,
              flush=True)
    bound = sock.getsockname()[1]
    print(f"serving {name} on {_url(host, bound)} (web chat at /, API at /v1, metrics at /metrics)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def _setup_request_log() -> None:
    """Request log lines to stderr (uvicorn's own access log stays off: it lacks tokens and timings)."""
    log = logging.getLogger("r1kit.serve.requests")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0,
                    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S):
    """Run `app` under uvicorn in a daemon thread (port 0 = any free port); yields the base URL, stops on exit.

        with serve_in_thread(create_app(model, tok, model_name="m")) as url:
            openai.OpenAI(base_url=url + "/v1", api_key="none").chat.completions.create(...)
    """
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(_config(app, header_timeout))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="r1kit-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise R1kitError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield _url(host, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
