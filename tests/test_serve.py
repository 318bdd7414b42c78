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
