"""The OpenAI-compatible server against the official `openai` client and raw HTTP, on 127.0.0.1.

The model is `ScriptedModel` (r1kit.serve.scripted): it runs through the real engine (slots, continuous batching,
prefix cache, fan-out) but its logits force a scripted reply, so the reasoning split, the DeepThink switch and the
usage counts are exact. A tiny random Transformer backs the batching test and the load benchmark.
"""
import asyncio
import json
import random
import time

import httpx
import openai
import pytest
import torch

from r1kit.serve import server as server_module
from r1kit.serve.app import create_app
from r1kit.serve.serve import serve_in_thread
from r1kit.serve.reasoning import split_reasoning
from r1kit.serve.schemas import MAX_N, MAX_TOKENS_LIMIT
from r1kit.serve.scripted import ScriptedModel
from r1kit.tokenizer import Tokenizer

MODEL = "scripted"
REASONING = "Let me think. 2 and 2 make 4."
LONG = "Here is a long shared document. " * 12  # ~380 characters = 5+ whole 64-token blocks with this tokenizer


def script(user: str):
    if "[endless]" in user:
        return "la " * 20_000, ""
    return REASONING, f"The answer is 4. ({user[-24:]})"


def expected(user: str):
    """(reasoning, content): the answer's leading blank lines are trimmed, as DeepSeek's API does."""
    return f"{REASONING}\n", f"The answer is 4. ({user[-24:]})"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: single-threaded tiny models are faster and kinder
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def url():
    tok = Tokenizer.builtin()
    app = create_app(ScriptedModel(tok, script, max_seq_len=1024), tok, model_name=MODEL, max_batch=8)
    with serve_in_thread(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)


def chat(client, content, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def stream_chat(client, content, **kw):
    """(reasoning, content, finish_reason, usage) of a streamed reply, deltas concatenated."""
    r, c, finish, usage = [], [], None, None
    for chunk in chat(client, content, stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            r.append(getattr(ch.delta, "reasoning_content", None) or "")
            c.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    return "".join(r) or None, "".join(c) or None, finish, usage


def check_usage(u, n_choices=1):
    d = u.model_dump()
    assert d["total_tokens"] == d["prompt_tokens"] + d["completion_tokens"]
    assert d["prompt_cache_hit_tokens"] + d["prompt_cache_miss_tokens"] == d["prompt_tokens"]
    assert 0 <= d["completion_tokens_details"]["reasoning_tokens"] <= d["completion_tokens"]
    return d


# --------------------------------------------------------------------------------------------------------------
# shape, split, usage

def test_non_streaming_reasoning_split_and_usage(client):
    resp = chat(client, "What is 2+2?")
    msg = resp.choices[0].message
    assert (msg.reasoning_content, msg.content) == expected("What is 2+2?")
    assert resp.choices[0].finish_reason == "stop" and resp.object == "chat.completion" and resp.model == MODEL
    u = check_usage(resp.usage)
    tok = Tokenizer.builtin()
    # reasoning tokens: the prefill's "<think>\n" is in the prompt; the reply's thought runs up to and with </think>
    assert u["completion_tokens_details"]["reasoning_tokens"] == len(tok.encode(REASONING + "\n</think>"))
    assert u["completion_tokens"] == len(tok.encode(f"{REASONING}\n</think>\n\n{expected('What is 2+2?')[1]}")) + 1


def test_streaming_concatenates_to_the_non_streaming_reply(client):
    r, c, finish, usage = stream_chat(client, "What is 2+2?")
    assert (r, c) == expected("What is 2+2?") and finish == "stop"
    assert check_usage(usage) == {**chat(client, "What is 2+2?").usage.model_dump(),
                                  "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": usage.prompt_tokens}


def test_stream_chunks_follow_the_deepseek_shape(url):
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [ch["choices"][0]["delta"] for ch in chunks[1:-1]]
    # reasoning arrives first in reasoning_content (content null), then the answer in content
    kinds = ["r" if d["reasoning_content"] else "c" for d in deltas]
    assert kinds == sorted(kinds, reverse=True) and "r" in kinds and "c" in kinds
    assert all(d["content"] is None for d in deltas if d["reasoning_content"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[-1]


def test_token_by_token_deltas_equal_the_split_of_the_whole_text(url):
    """Every delta pair is what the parser made of one token; joined, they equal split_reasoning(all text)."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Q"}], "max_tokens": 60}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as resp:
        data = [json.loads(ln[6:]) for ln in resp.iter_lines() if ln.startswith("data: {")]
    r = "".join(d["choices"][0]["delta"].get("reasoning_content") or "" for d in data)
    c = "".join(d["choices"][0]["delta"].get("content") or "" for d in data)
    tok = Tokenizer.builtin()
    raw = tok.decode(tok.encode(f"{REASONING}\n</think>\n\nThe answer is 4. (Q)")[:60])
    want_r, want_c = split_reasoning(raw)
    assert (r or None, c or None) == (want_r, want_c.lstrip("\n") or None)


def test_thinking_switch(client):
    for extra in ({"thinking": {"type": "disabled"}}, {"think": False}):
        resp = chat(client, "Hi", extra_body=extra)
        m = resp.choices[0].message
        assert m.reasoning_content is None and m.content == "The answer is 4. (Hi)"
        assert resp.usage.completion_tokens_details.reasoning_tokens == 0
        assert stream_chat(client, "Hi", extra_body=extra)[:2] == (None, "The answer is 4. (Hi)")
    resp = chat(client, "Hi", extra_body={"thinking": {"type": "enabled"}})
    assert resp.choices[0].message.reasoning_content == REASONING + "\n"


def test_unclosed_thought_is_all_reasoning(client):
    """Cut at max_tokens inside the thought: everything is reasoning, content is null, finish_reason length."""
    resp = chat(client, "Hi", max_tokens=10)
    m = resp.choices[0].message
    assert (m.reasoning_content, m.content, resp.choices[0].finish_reason) == (REASONING[:10], None, "length")
    assert resp.usage.completion_tokens_details.reasoning_tokens == resp.usage.completion_tokens == 10
    assert stream_chat(client, "Hi", max_tokens=10)[:3] == (REASONING[:10], None, "length")


def test_system_messages_merge_into_the_user_turn(client):
    resp = client.chat.completions.create(model=MODEL, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert resp.choices[0].message.content.endswith("(Be brief.\n\nHi)")  # the model saw "system\n\nuser"


def test_prefix_cache_hits_on_a_repeated_long_prefix(client):
    first = check_usage(chat(client, LONG + "Question one?").usage)
    second = check_usage(chat(client, LONG + "Question two?").usage)
    assert first["prompt_cache_hit_tokens"] == 0
    hit = second["prompt_cache_hit_tokens"]
    assert hit > 0 and hit % 64 == 0 and hit >= 64 * ((len(LONG) + 5) // 64) - 64
    assert second["prompt_cache_miss_tokens"] == second["prompt_tokens"] - hit
    _, _, _, usage = stream_chat(client, LONG + "Question three?")
    assert usage.model_dump()["prompt_cache_hit_tokens"] == hit


def test_multi_turn_history_and_n_choices(client):
    first = chat(client, "What is 2+2?").choices[0].message
    resp = client.chat.completions.create(model=MODEL, n=3, seed=1, messages=[
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": first.content},
        {"role": "user", "content": "Sure?"}])
    assert len(resp.choices) == 3 and [c.index for c in resp.choices] == [0, 1, 2]
    assert {c.message.content for c in resp.choices} == {expected("Sure?")[1]}
    u = check_usage(resp.usage)
    assert u["completion_tokens"] == 3 * chat(client, "Sure?").usage.completion_tokens


def test_stop_strings_apply_to_the_answer_not_the_thought(client):
    resp = chat(client, "Hi", stop=["make"])  # "make" is in the thought only: the reply runs to its end
    assert (resp.choices[0].message.reasoning_content, resp.choices[0].message.content) == expected("Hi")
    assert resp.choices[0].finish_reason == "stop"
    assert stream_chat(client, "Hi", stop=["make"])[:2] == expected("Hi")
    for stop in ("answer", ["zzz", "answer"]):  # a stop string inside the answer cuts it there
        assert stream_chat(client, "Hi", stop=stop)[:3] == (REASONING + "\n", "The ", "stop")
        resp = chat(client, "Hi", stop=stop)
        assert resp.choices[0].message.content == "The " and resp.choices[0].finish_reason == "stop"


def test_completions_endpoint(client):
    resp = client.completions.create(model=MODEL, prompt="xyz", max_tokens=5)
    assert resp.choices[0].text == "abcde" and resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens == 4 and resp.usage.completion_tokens == 5  # bos + "xyz"
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="xyz", max_tokens=5, stream=True))
    assert text == "abcde"
    resp = client.completions.create(model=MODEL, prompt=["a", "m"], max_tokens=3)
    assert [c.text for c in resp.choices] == ["bcd", "nop"] and resp.usage.completion_tokens == 6


def test_models_health_and_page(url, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    h = httpx.get(url + "/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "<details" in page.text and "AbortController" in page.text
    assert httpx.get(url + "/openapi.json").json()["paths"]["/v1/chat/completions"]


# --------------------------------------------------------------------------------------------------------------
# errors: OpenAI bodies, 4xx, never 500

def post(url, body, path="/v1/chat/completions", raw=False):
    if raw:
        return httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    return httpx.post(url + path, json=body, timeout=30)


def error_of(resp, status):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


MSG = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": MODEL}, 400, "messages"),
    ({"messages": MSG}, 400, "model"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": "Hi"}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 7}]}, 400, "messages.0.content"),
    ({"model": MODEL, "messages": [{"role": "system", "content": "only a system prompt"}]}, 400, "messages"),
    ({"model": 5, "messages": MSG}, 400, "model"),
    ({"model": "gpt-4", "messages": MSG}, 404, "model"),
    ({"model": MODEL, "messages": MSG, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "messages": MSG, "max_tokens": -5}, 400, "max_tokens"),
    ({"model": MODEL, "messages": MSG, "max_tokens": MAX_TOKENS_LIMIT + 1}, 400, "max_tokens"),
    ({"model": MODEL, "messages": MSG, "max_tokens": 1020}, 400, "max_tokens"),  # 7 + 1020 > 1024 context
    ({"model": MODEL, "messages": MSG, "max_tokens": "10"}, 400, "max_tokens"),
    ({"model": MODEL, "messages": MSG, "n": MAX_N + 1}, 400, "n"),
    ({"model": MODEL, "messages": MSG, "n": 0}, 400, "n"),
    ({"model": MODEL, "messages": MSG, "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "messages": MSG, "top_p": 0}, 400, "top_p"),
    ({"model": MODEL, "messages": MSG, "stream": "yes"}, 400, "stream"),
    ({"model": MODEL, "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": MODEL, "messages": MSG, "seed": 2**80}, 400, "seed"),
    ({"model": MODEL, "messages": MSG, "logprobs": True}, 400, "logprobs"),
    ({"model": MODEL, "messages": MSG, "thinking": {"type": "maybe"}}, 400, "thinking.type"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 2000}]}, 400, "messages"),  # over the context
    ({"model": MODEL, "messages": [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "A", "reasoning_content": "R"},
                                   {"role": "user", "content": "Again"}]}, 400, "messages.1.reasoning_content"),
])
def test_bad_requests_get_openai_errors(url, body, status, param):
    raw = isinstance(body, bytes)
    err = error_of(post(url, body, raw=raw), status)
    assert err["param"] == param
    if param == "messages" and "context" in err["message"]:
        assert err["code"] == "context_length_exceeded"


def test_bad_completions_and_routes(url):
    error_of(post(url, {"model": MODEL, "prompt": "x", "echo": True}, "/v1/completions"), 400)
    error_of(post(url, {"model": MODEL, "prompt": [10**9]}, "/v1/completions"), 400)
    error_of(post(url, {"model": MODEL, "prompt": []}, "/v1/completions"), 400)
    error_of(post(url, {"model": MODEL, "prompt": "x", "logprobs": 2}, "/v1/completions"), 400)
    error_of(httpx.get(url + "/v1/nope"), 404)
    error_of(httpx.get(url + "/v1/chat/completions"), 405)
    big = b'{"model": "scripted", "prompt": "' + b"x" * (3 << 20) + b'"}'
    error_of(post(url, big, "/v1/completions", raw=True), 413)


def test_openai_client_raises_on_reasoning_content_in_history(client):
    with pytest.raises(openai.BadRequestError, match="reasoning_content"):
        client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "A", "reasoning_content": "earlier thought"},
            {"role": "user", "content": "More"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="deepseek-reasoner", messages=MSG)


# --------------------------------------------------------------------------------------------------------------
# queue bound, disconnects, keep-alive

@pytest.fixture()
def small_url(monkeypatch):
    """2 slots, no queue: a third request in flight gets 429. Keep-alives every 0.2 s."""
    monkeypatch.setattr(server_module, "KEEPALIVE_S", 0.2)
    tok = Tokenizer.builtin()
    app = create_app(ScriptedModel(tok, script, max_seq_len=4096), tok, model_name=MODEL, max_batch=2,
                     max_queue=0)
    with serve_in_thread(app) as base:
        yield base, app.state.server


def wait_idle(url, timeout=10.0):
    deadline = time.monotonic() + timeout
    while (h := httpx.get(url + "/health").json())["running"] or h["in_flight"] or h["waiting"]:
        assert time.monotonic() < deadline, f"server did not free its slots: {h}"
        time.sleep(0.02)
    return h


def test_full_queue_429_and_disconnects_free_slots(small_url):
    url, srv = small_url
    endless = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "[endless]"}]}
    with httpx.Client(timeout=30) as c1, httpx.Client(timeout=30) as c2:
        with c1.stream("POST", url + "/v1/chat/completions", json=endless) as s1, \
                c2.stream("POST", url + "/v1/chat/completions", json=endless) as s2:
            lines1, lines2 = s1.iter_lines(), s2.iter_lines()  # (a dropped iterator would close its response)
            assert next(lines1).startswith("data: ") and next(lines2).startswith("data: ")  # both running
            err = error_of(post(url, {"model": MODEL, "messages": MSG}), 429)
            assert err["code"] == "rate_limit_exceeded"
            assert httpx.get(url + "/health").json()["running"] == 2
        # leaving the blocks closed both connections mid-stream: the server aborts them
    assert wait_idle(url)["status"] == "ok"
    # a non-streaming request whose client gives up is aborted too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json={**endless, "stream": False}, timeout=0.5)
    wait_idle(url)
    assert srv.engine.results == {} and srv.worker.stats().tracked == 0  # nothing left behind
    assert post(url, {"model": MODEL, "messages": MSG}).status_code == 200


def test_keepalive_comments_when_tokens_are_slow(small_url):
    """A stream that waits longer than KEEPALIVE_S (0.2 s here) for a token gets `: keep-alive` SSE comments,
    which the openai client skips."""
    url, srv = small_url
    orig = srv.engine.step

    def slow_step():  # 0.5 s per engine step
        time.sleep(0.5)
        return orig()
    srv.engine.step = slow_step
    try:
        body = {"model": MODEL, "stream": True, "max_tokens": 2, "messages": [{"role": "user", "content": "[endless]"}]}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as s:
            lines = [ln for ln in s.iter_lines() if ln]
        assert ": keep-alive" in lines and lines[-1] == "data: [DONE]"
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
        assert stream_chat(client, "[endless]", max_tokens=2)[:3] == ("la", None, "length")
    finally:
        srv.engine.step = orig


# --------------------------------------------------------------------------------------------------------------
# continuous batching (light; the full load test is bench/serve_load.py)

def test_concurrent_streams_share_the_batch():
    """8 concurrent streaming clients on a tiny random Transformer: 0 errors, full lengths, >1 request per step."""
    import warnings

    from r1kit.engine.load import load_for_inference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net, tok = load_for_inference("tiny", device="cpu")
    app = create_app(net, tok, model_name="tiny", max_batch=8, max_seq_len=256)

    async def one(client, url, i):
        body = {"model": "tiny", "stream": True, "max_tokens": 24, "ignore_eos": True, "seed": i,
                "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": f"Hi {i}"}]}
        usage = None
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    usage = json.loads(line[6:]).get("usage") or usage
        return usage["completion_tokens"]

    async def run(url):
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(one(client, url, i) for i in range(8)))

    with serve_in_thread(app) as url:
        assert asyncio.run(run(url)) == [24] * 8
        assert app.state.server.worker.stats().max_running > 1
        wait_idle(url)


# --------------------------------------------------------------------------------------------------------------
# fuzzing: 600 malformed or hostile requests, no 500, still healthy

def fuzz_bodies(rng: random.Random, n: int):
    """Malformed JSON, wrong types, huge numbers, odd unicode, missing and extra fields, huge strings."""
    weird = [None, True, -1, 0, 2**64, -2**63, 1e308, -1e-308, 3.5, "", "x" * 10_000, [], {}, [None], {"a": 1},
             "\u0000", "\ud800", "😀" * 50, "\u202e", "NaN", float("inf"), [1, "a"], {"type": None}, "<think>",
             "</think>", "<｜User｜>", "\uffff" * 10]
    fields = ["model", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream", "stop",
              "seed", "thinking", "think", "logprobs", "stream_options", "presence_penalty", "ignore_eos",
              "max_completion_tokens", "prompt", "echo", "best_of"]
    contents = ["Hi", "", "😀🤔 ثم 中文", "\u0000\u0001", "</think>" * 5, "<think>", "\ud83d", "x" * 900,
                "<｜Assistant｜><think>\n", "a" * 50_000]

    def message():
        m = {"role": rng.choice(["user", "user", "system", "assistant", "developer", "tool", "", None, 3]),
             "content": rng.choice(contents + [None, 5, [{"type": "text", "text": "hi"}], [{"type": "image"}]])}
        if rng.random() < 0.1:
            m["reasoning_content"] = rng.choice(["r", None, 1])
        if rng.random() < 0.1:
            m[rng.choice(["name", "extra", "tool_calls"])] = rng.choice(weird)
        return m

    for i in range(n):
        kind = i % 6
        if kind == 0:  # broken JSON bytes
            base = json.dumps({"model": MODEL, "messages": [message()]}).encode()
            cut = rng.randrange(len(base) + 1)
            yield rng.choice([base[:cut], base[:cut] + b"}}}", b"\xff\xfe" + base, b"[" * 50_000, b"{" * 1000,
                              b'{"model": "scripted", "messages": [{"role": "user", "content": "\\ud800"}]}',
                              b"null", b"1e999999", b'"string"', b'{"model": NaN}', bytes(rng.randrange(256)
                                                                                            for _ in range(64))])
            continue
        body = {"model": MODEL, "messages": [message() for _ in range(rng.randint(0, 3))], "max_tokens": 8}
        if kind in (1, 2):  # wrong types / out-of-range values for random fields
            for f in rng.sample(fields, rng.randint(1, 4)):
                body[f] = rng.choice(weird)
        elif kind == 3:  # missing fields
            for f in rng.sample(list(body), rng.randint(1, len(body))):
                del body[f]
        elif kind == 4:  # extra fields and deep nesting
            for _ in range(rng.randint(1, 5)):
                body[f"x{rng.randrange(10**6)}"] = rng.choice(weird + [[[[[[1]]]]]])
            if rng.random() < 0.05:
                body["huge"] = "y" * (3 << 20)  # over MAX_BODY_BYTES: 413
        else:  # plausible requests, mostly valid, on both endpoints and with streaming
            body = {"model": rng.choice([MODEL] * 8 + ["gpt-4", ""]), "max_tokens": rng.choice([1, 4, 16]),
                    "stream": rng.random() < 0.5,
                    "temperature": rng.choice([0, 0.6, 2]), "n": rng.choice([1, 2])}
            if rng.random() < 0.5:
                body["messages"] = [message()]
                body["thinking"] = {"type": rng.choice(["enabled", "disabled"])}
            else:
                body["prompt"] = rng.choice(["abc", ["a", "b"], [5, 6, 7], "😀", ""])
        yield body


def test_fuzz_no_500_and_still_healthy(url):
    rng = random.Random(1234)
    statuses = {}
    paths = ["/v1/chat/completions", "/v1/completions"]
    with httpx.Client(base_url=url, timeout=30) as c:
        for i, body in enumerate(fuzz_bodies(rng, 600)):
            path = paths[1] if isinstance(body, dict) and "prompt" in body else rng.choice(paths[:1] * 4 + paths)
            if isinstance(body, bytes):
                resp = c.post(path, content=body, headers={"content-type": rng.choice(
                    ["application/json", "text/plain", "application/x-www-form-urlencoded"])})
            else:
                resp = c.post(path, content=json.dumps(body, allow_nan=True).encode(),
                              headers={"content-type": "application/json"})
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            assert resp.status_code < 500, (i, body if not isinstance(body, bytes) else body[:200], resp.text)
            if resp.status_code >= 400:
                assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
            elif "text/event-stream" in resp.headers["content-type"]:
                assert resp.text.rstrip().endswith("data: [DONE]") or '"error"' in resp.text
        # hostile methods and paths
        for method, path in [("GET", "/v1/completions"), ("PUT", "/v1/chat/completions"), ("DELETE", "/health"),
                             ("GET", "/v1/../../etc/passwd"), ("GET", "/%00"), ("POST", "/v1/models")]:
            assert c.request(method, path).status_code < 500
        assert c.get("/health").json()["status"] == "ok"
    print("fuzz statuses:", statuses)
    assert sum(statuses.values()) == 600 and statuses.get(200, 0) >= 30  # valid ones were served too
    wait_idle(url)


# --------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_load_benchmark():
    """bench/serve_load.py at full size: 32 streaming clients x 4 requests on a tiny model."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main([])
    assert out["errors"] == 0 and out["speedup"] >= 6 and out["rss_returned"]


def test_engine_failure_fails_its_requests_and_the_server_goes_on(small_url):
    url, srv = small_url
    orig = srv.engine.step

    def broken():
        srv.engine.step = orig  # fail once
        raise RuntimeError("simulated out of memory")
    srv.engine.step = broken
    err = error_of(post(url, {"model": MODEL, "messages": MSG}), 500)
    assert err["type"] == "server_error" and "simulated out of memory" in err["message"]
    assert post(url, {"model": MODEL, "messages": MSG}).status_code == 200
    assert wait_idle(url)["status"] == "ok"


# --------------------------------------------------------------------------------------------------------------
# r1kit chat (terminal)

def test_terminal_chat_folds_the_thought_and_switches_thinking():
    import io

    from rich.console import Console

    from r1kit.engine import Engine, SamplingParams
    from r1kit.serve.chat import ChatSession

    tok = Tokenizer.builtin()
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False, color_system=None)
    session = ChatSession(Engine(ScriptedModel(tok, script, max_seq_len=1024), tok, max_batch=1), tok, console,
                          SamplingParams(temperature=0.6, max_new_tokens=200))
    session.run(["What is 2+2?", "/show", "/think off", "Hi", "/think", "/think maybe", "/nope", "/clear",
                 "/exit", "never read"])
    text = out.getvalue()
    assert "Thought for" in text and "/show to expand" in text  # folded to one line after it ended
    assert "The answer is 4. (What is 2+2?)" in text
    assert REASONING in text  # /show printed the whole thought
    assert "The answer is 4. (Hi)" in text and text.count("Thought for") == 1  # DeepThink off: no thought
    assert "DeepThink is off" in text and "usage: /think on|off" in text and "unknown command /nope" in text
    assert session.history == [] and "conversation cleared" in text
    # history keeps answers only (DeepSeek: earlier reasoning is not sent back)
    session.ask("One")
    assert session.history[-1] == {"role": "assistant", "content": "The answer is 4. (One)"}
    assert session.last_thought is None  # thinking is still off
    session.think = True
    session.ask("Two")
    assert session.last_thought == REASONING and "Two" in session.history[-1]["content"]


# --------------------------------------------------------------------------------------------------------------
# function calling in the R1 format, through the official openai client and langchain-deepseek

CALL = ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```'
        '<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
WEATHER_Q = "What is the weather in Paris?"


def tool_script(user: str):
    if "sunny, 21 C" in user:  # the tool output is back: answer from it
        return "The tool says sunny.", "It is sunny in Paris, 21 C."
    if "weather" in user:
        return "I should call get_weather.", CALL
    return script(user)


@pytest.fixture(scope="module")
def tool_client():
    from r1kit.serve.scripted import tool_tokenizer
    tok = tool_tokenizer()
    app = create_app(ScriptedModel(tok, tool_script, max_seq_len=2048), tok, model_name=MODEL, max_batch=4)
    with serve_in_thread(app) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=30), base


def streamed_calls(stream):
    """(reasoning, content, {index: call dict}, finish_reason) accumulated from a streamed reply."""
    r, c, calls, finish = "", "", {}, None
    for chunk in stream:
        for ch in chunk.choices:
            r += getattr(ch.delta, "reasoning_content", None) or ""
            c += ch.delta.content or ""
            for tc in ch.delta.tool_calls or ():
                d = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                d["id"] += tc.id or ""
                d["name"] += tc.function.name or ""
                d["arguments"] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    return r, c or None, calls, finish


def test_openai_client_tool_call_round_trip(tool_client):
    client, _ = tool_client
    user = {"role": "user", "content": WEATHER_Q}
    resp = client.chat.completions.create(model=MODEL, messages=[user], tools=TOOLS)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.reasoning_content == "I should call get_weather.\n"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # the tool's result goes back as a role "tool" message; the model answers from it
    history = [user, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    resp2 = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)
    assert resp2.choices[0].message.content == "It is sunny in Paris, 21 C."
    assert resp2.choices[0].finish_reason == "stop" and resp2.choices[0].message.tool_calls is None
    # streaming: the same call arrives as delta.tool_calls, then finish_reason tool_calls
    r, c, calls, finish = streamed_calls(client.chat.completions.create(
        model=MODEL, messages=[user], tools=TOOLS, stream=True))
    assert (r, c, finish) == ("I should call get_weather.\n", None, "tool_calls")
    assert [(d["name"], json.loads(d["arguments"])) for d in calls.values()] == [("get_weather", {"city": "Paris"})]
    r, c, calls, finish = streamed_calls(client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, stream=True))
    assert (c, calls, finish) == ("It is sunny in Paris, 21 C.", {}, "stop")


def test_tool_choice_required_and_named_force_a_call(tool_client):
    client, _ = tool_client
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": WEATHER_Q}],
                                              tools=TOOLS, tool_choice=choice)
        m = resp.choices[0].message
        assert resp.choices[0].finish_reason == "tool_calls" and m.reasoning_content is None  # thought skipped
        assert [(c.function.name, json.loads(c.function.arguments)) for c in m.tool_calls] == \
            [("get_weather", {"city": "Paris"})]
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": WEATHER_Q}],
                                          tools=TOOLS, tool_choice="none")  # tools not shown: plain text
    assert resp.choices[0].message.tool_calls is None


def test_langchain_deepseek_gets_reasoning_and_tool_calls(tool_client):
    langchain_deepseek = pytest.importorskip("langchain_deepseek")
    from langchain_core.tools import tool

    _, base = tool_client

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny, 21 C"

    llm = langchain_deepseek.ChatDeepSeek(model=MODEL, api_key="none", base_url=base + "/v1", max_retries=0)
    msg = llm.bind_tools([get_weather]).invoke(WEATHER_Q)
    assert msg.additional_kwargs["reasoning_content"] == "I should call get_weather.\n"
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]
    plain = llm.invoke("Hi")
    assert plain.content == "The answer is 4. (Hi)" and plain.additional_kwargs["reasoning_content"] == REASONING + "\n"


@pytest.mark.parametrize("extra,param", [
    ({"tools": TOOLS}, "tools"),  # the built-in tokenizer has no tool tokens: no tool format
    ({"tool_choice": "required"}, "tool_choice"),  # no tools to choose from
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}]}, "tools"),
    ({"messages": [{"role": "assistant", "content": "A", "prefix": True}, {"role": "user", "content": "Hi"}]},
     "messages.0.prefix"),
])
def test_unsupported_tools_and_json_mode_are_400_never_ignored(url, extra, param):
    err = error_of(post(url, {"model": MODEL, "messages": MSG, **extra}), 400)
    assert err["param"] == param and err["message"]


def test_tools_named_choice_must_exist(tool_client):
    _, base = tool_client
    err = error_of(post(base, {"model": MODEL, "messages": MSG, "tools": TOOLS,
                               "tool_choice": {"type": "function", "function": {"name": "nope"}}}), 400)
    assert err["param"] == "tool_choice.function.name"


def test_chat_prefix_completion_continues_the_last_assistant_message(client):
    """DeepSeek's prefix completion: the reply continues the given start of the answer (and returns the rest)."""
    resp = client.chat.completions.create(model=MODEL, messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The answer", "prefix": True}])
    m = resp.choices[0].message
    assert m.content == " is 4. (Hi)" and m.reasoning_content is None


# --------------------------------------------------------------------------------------------------------------
# --template model: a model without thinking keeps its answer in content

def test_template_model_puts_the_answer_in_content():
    tok = Tokenizer.builtin()
    tok.chat_template = ("{% for m in messages %}<｜User｜>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}")

    def plain(user):  # a model that never thinks; "[think]" makes it open a thought of its own
        return ("it opened a thought", "Thought-out answer.") if "[think]" in user else (None, "\n\nPlain answer.")

    app = create_app(ScriptedModel(tok, plain, max_seq_len=512), tok, model_name=MODEL, template="model")
    with serve_in_thread(app) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=30)
        for extra in ({}, {"thinking": {"type": "disabled"}}):
            m = chat(client, "Hi", extra_body=extra).choices[0].message
            assert (m.reasoning_content, m.content) == (None, "Plain answer.")
            assert stream_chat(client, "Hi", extra_body=extra)[:2] == (None, "Plain answer.")
        m = chat(client, "Hi", stop=["answer"]).choices[0].message
        assert m.content == "Plain "
        m = chat(client, "[think] Hi").choices[0].message  # a reply that opens <think> is split as usual
        assert (m.reasoning_content, m.content) == ("\nit opened a thought\n", "Thought-out answer.")
        err = error_of(post(base, {"model": MODEL, "messages": MSG, "tools": TOOLS}), 400)
        assert err["param"] == "tools" and "--template r1" in err["message"]


# --------------------------------------------------------------------------------------------------------------
# security and operations: API key, Host allow-list, slowloris, request log, /metrics

@pytest.fixture(scope="module")
def locked():
    tok = Tokenizer.builtin()
    app = create_app(ScriptedModel(tok, script, max_seq_len=1024), tok, model_name=MODEL, max_batch=2,
                     api_key="s3cret", allowed_hosts=("chat.example.org",), body_timeout=1.0)
    with serve_in_thread(app, header_timeout=1.0) as base:
        yield base, app


def test_api_key_401_without_it_200_with_it(locked):
    base, _ = locked
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        err = error_of(httpx.post(base + "/v1/chat/completions", json={"model": MODEL, "messages": MSG},
                                  headers=headers), 401)
        assert err["code"] == "invalid_api_key"
    error_of(httpx.get(base + "/metrics"), 401)
    assert httpx.get(base + "/health").status_code == 200 and httpx.get(base + "/").status_code == 200
    client = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0, timeout=30)
    assert chat(client, "Hi").choices[0].message.content == expected("Hi")[1]
    with pytest.raises(openai.AuthenticationError):
        chat(openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0), "Hi")


def test_foreign_host_header_is_refused(locked):
    base, _ = locked
    auth = {"Authorization": "Bearer s3cret"}
    for host in ("evil.example.com", "evil.example.com:8000", "localhost.evil.com"):
        resp = httpx.get(base + "/v1/models", headers={**auth, "Host": host})
        assert error_of(resp, 421)["code"] == "invalid_host"
        assert httpx.get(base + "/", headers={"Host": host}).status_code == 421  # the page too (DNS rebinding)
    for host in ("localhost:8000", "127.0.0.1", "[::1]:80", "10.1.2.3:8000", "chat.example.org", "CHAT.example.org:1"):
        assert httpx.get(base + "/v1/models", headers={**auth, "Host": host}).status_code == 200, host


def test_slowloris_is_dropped_while_health_answers(locked):
    """A client trickling its request head (or body) byte by byte is cut off at the deadline (1 s here); the server
    keeps answering others meanwhile."""
    import socket
    from urllib.parse import urlparse

    base, _ = locked
    u = urlparse(base)

    def trickle(head: bytes, then: bytes):
        s = socket.create_connection((u.hostname, u.port), timeout=5)
        s.sendall(head)
        t0, health, got = time.monotonic(), [], b""
        try:
            for b in (then * 20)[:16]:  # 4 s of trickling, past the 1 s deadline
                time.sleep(0.25)
                health.append(httpx.get(base + "/health", timeout=2).status_code)
                s.sendall(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        s.close()
        return time.monotonic() - t0, health, got

    dt, health, got = trickle(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: 1\r\n")
    assert dt < 4 and health and set(health) == {200} and got == b""  # closed without an answer
    body = json.dumps({"model": MODEL, "messages": MSG}).encode()
    dt, health, got = trickle(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                              b"s3cret\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body),
                              body)
    assert dt < 4 and set(health) == {200} and got.startswith(b"HTTP/1.1 408")
    assert httpx.get(base + "/health").json()["status"] == "ok"


def test_request_log_one_line_per_request_without_prompt_text(locked, caplog):
    base, _ = locked
    client = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0, timeout=30)
    with caplog.at_level("INFO", logger="r1kit.serve.requests"):
        resp = chat(client, "secret question")
        stream_chat(client, "another secret")
        httpx.post(base + "/v1/chat/completions", json={"model": MODEL, "messages": MSG})  # 401
        deadline = time.monotonic() + 5
        while len(caplog.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "r1kit.serve.requests"]
    assert len(lines) == 3, lines
    u = resp.usage
    assert lines[0].startswith(f"request {resp.id} POST /v1/chat/completions 200 prompt={u.prompt_tokens} "
                               f"cached=0 completion={u.completion_tokens} ttft=")
    assert " 200 " in lines[1] and "completion=0" not in lines[1] and " 401 " in lines[2]
    assert all("ttft=" in ln and "total=" in ln and "secret" not in ln for ln in lines)


def test_metrics_parse_as_prometheus_text(locked):
    parser = pytest.importorskip("prometheus_client.parser")
    base, _ = locked
    auth = {"Authorization": "Bearer s3cret"}
    client = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0, timeout=30)
    before = httpx.get(base + "/metrics", headers=auth).text
    usage = chat(client, LONG + "One?").usage
    usage2 = chat(client, LONG + "Two?").usage
    text = httpx.get(base + "/metrics", headers=auth).text
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    old = {f.name: f for f in parser.text_string_to_metric_families(before)}

    def value(fams, name, **labels):
        return sum(s.value for s in fams[name].samples if s.name == name + ("_total" if fams[name].type == "counter"
                                                                             else "") and labels.items() <= s.labels.items())

    ok = dict(endpoint="/v1/chat/completions", status="200")
    assert value(fams, "r1kit_requests", **ok) - (value(old, "r1kit_requests", **ok) if "r1kit_requests" in old
                                                  else 0) == 2
    assert value(fams, "r1kit_completion_tokens") - value(old, "r1kit_completion_tokens") == \
        usage.completion_tokens + usage2.completion_tokens
    cached = value(fams, "r1kit_prompt_cached_tokens") - value(old, "r1kit_prompt_cached_tokens")
    assert cached == usage2.prompt_cache_hit_tokens > 0
    assert 0 < value(fams, "r1kit_prefix_cache_hit_rate") < 1
    assert fams["r1kit_time_to_first_token_seconds"].type == "histogram"
    assert fams["r1kit_request_duration_seconds"].type == "histogram"
    assert {"r1kit_running_requests", "r1kit_waiting_requests"} <= set(fams)


# --------------------------------------------------------------------------------------------------------------
# r1kit serve: bad input is one line and exit 2, before any model is loaded

@pytest.mark.parametrize("args,message", [
    (["--port", "80000"], "port must be in 0..65535"),
    (["--port", "-1"], "expected a non-negative integer"),
    (["--host", "no.such.host.invalid"], "cannot listen on no.such.host.invalid"),
    (["--port", "TAKEN"], "Address already in use"),
    (["--template", "chatml"], "unknown template"),
    (["--max-batch", "0"], "max_batch must be >= 1"),
    (["--header-timeout", "0"], "header_timeout must be > 0"),
    (["--body-timeout", "-1"], "body_timeout must be > 0"),
    (["--threads", "0"], "threads must be >= 1"),
    (["--device", "quantum"], "device"),
])
def test_serve_bad_input_is_one_line_and_exit_2(args, message, capsys):
    import socket

    from r1kit.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        args = [str(taken.getsockname()[1]) if a == "TAKEN" else a for a in args]
        if "--port" not in args and "--threads" not in args and "--device" not in args:
            args += ["--port", "0"]
        if "--threads" in args or "--device" in args:
            args += ["--port", "0"]
        try:
            rc = main(["serve", "tiny", *args])
        except SystemExit as e:  # argparse's own usage errors exit from inside the parser
            rc = e.code
        assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
