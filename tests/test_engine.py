"""The engine against full-recompute oracles: exact greedy tokens, exact log-probs, seeds, stops, filters, errors.

Tiny random models on CPU in fp32 (dense llama, qwen2 with qkv bias, DeepSeek-V3 MLA + MoE through the latent
cache). The oracle is `naive.greedy` (argmax of a full forward per token) and a full forward over prompt + completion.
"""
import pytest
import torch

from r1kit.engine.cache import PrefixCache
from r1kit.engine.engine import Engine, Event
from r1kit.engine.naive import greedy
from r1kit.engine.sampling import BLOCK, SamplingParams, filter_logits, inverse_cdf, sample, uniforms
from r1kit.errors import R1kitError
from r1kit.model import ModelConfig, Transformer
from r1kit.tokenizer import Tokenizer

MODELS = ["tiny", "tiny-qwen2", "tiny-moe"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models run hundreds of small ops per token: on a shared 2-core machine, OpenMP's thread hand-offs cost
    # more than the ops, so these tests run single-threaded (5-10x faster under load).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

GREEDY = SamplingParams(temperature=0, max_new_tokens=64)
_models = {}


def model(name: str) -> Transformer:
    if name not in _models:
        torch.manual_seed(0)
        _models[name] = Transformer(ModelConfig.from_name(name)).eval()
    return _models[name]


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(10, 100, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def oracle(m, ids: list[int], n: int = 64) -> list[int]:
    return greedy(m, torch.tensor([ids]), n)


def full_logprobs(m, prompt_ids: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion[i] | prompt, completion[:i]) from one full forward (on the model's device; returned on CPU)."""
    dev = next(m.parameters()).device
    ids = torch.tensor([prompt_ids + completion], device=dev)
    with torch.no_grad():
        logp = m(ids).float().log_softmax(-1)[0, len(prompt_ids) - 1:-1]  # (len(completion), V)
    return logp.gather(1, torch.tensor(completion, device=dev)[:, None])[:, 0].cpu()


# --------------------------------------------------------------------------------------------------------------
# greedy is exact

@pytest.mark.parametrize("name", MODELS)
def test_greedy_equals_full_recompute(name):
    m = model(name)
    p = prompt(11, 0)
    (r,) = Engine(m, max_batch=1, max_seq_len=128).generate([p], GREEDY)
    assert r.token_ids == oracle(m, p)
    assert r.finish_reason == "length" and r.prompt_tokens == 11 and len(r.logprobs) == 64


@pytest.mark.parametrize("name", MODELS)
def test_continuous_batching_and_prefix_hits_are_exact(name):
    """5 requests of different lengths through 2 slots: they join and leave between steps; two share a prefix."""
    m = model(name)
    shared = prompt(9, 1)
    prompts = [prompt(5, 2), shared + prompt(4, 3), prompt(17, 4), shared + prompt(7, 5), prompt(3, 6)]
    budgets = [64, 20, 64, 33, 64]
    eng = Engine(m, max_batch=2, max_seq_len=128, block_size=4)
    ids = [eng.add_request(p, SamplingParams(temperature=0, max_new_tokens=b)) for p, b in zip(prompts, budgets)]
    events = []
    while eng.has_work:
        events += eng.step()
    results = [eng.pop_result(i) for i in ids]
    for p, b, r in zip(prompts, budgets, results):
        assert r.token_ids == oracle(m, p, b)
    assert results[3].cached_tokens == 8 and results[3].prompt_cache_miss_tokens == 8  # two 4-token blocks hit
    assert results[0].cached_tokens == 0
    # the event stream is the same tokens, in order, with one finished flag per request
    for i, r in zip(ids, results):
        mine = [e for e in events if e.request_id == i]
        assert [e.token for e in mine] == r.token_ids and [e.finished for e in mine][-1] and sum(
            e.finished for e in mine) == 1
    assert isinstance(events[0], Event)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_chunked_prefill_and_cache_full(name):
    m = model(name)
    p = prompt(23, 7)
    (r,) = Engine(m, max_batch=1, max_seq_len=128, prefill_chunk=5).generate([p], GREEDY)
    assert r.token_ids == oracle(m, p)
    # a 32-position cache holds 23 prompt tokens: 10 new tokens fit (the last needs no cache write)
    (r,) = Engine(m, max_batch=1, max_seq_len=32).generate([p], GREEDY)
    assert r.finish_reason == "length" and r.token_ids == oracle(m, p, 10)


def test_weight_updates_reach_the_engine():
    """An RL loop updates the model in place between rollouts: the CPU prepacked weights and the prefix cache's KV
    must follow (a stale prefix once made GRPO sample from a policy that no longer existed), and the model must be
    left untouched (trainable, plain forward) outside engine steps."""
    torch.manual_seed(1)
    m = Transformer(ModelConfig.from_name("tiny")).eval()
    eng = Engine(m, max_batch=1, block_size=4)
    p = prompt(14, 23)
    first = eng.generate([p], GREEDY)[0]
    assert first.token_ids == oracle(m, p) and eng.prefix.bytes > 0  # blocks of p are now cached
    with torch.no_grad():
        for w in m.parameters():
            w.mul_(1.5)  # in place, as an optimiser step
    r = eng.generate([p], GREEDY)[0]
    assert r.token_ids == oracle(m, p) and r.token_ids != first.token_ids
    assert r.cached_tokens == 0  # the old KV was dropped, not reused
    torch.testing.assert_close(torch.tensor(r.logprobs), full_logprobs(m, p, r.token_ids), atol=1e-4, rtol=0)
    assert eng.generate([p], GREEDY)[0].cached_tokens == 12  # and the new KV is cached again
    assert all("forward" not in mod.__dict__ for mod in m.modules())


def test_fan_out_counts_hits_and_matches_greedy():
    m = model("tiny")
    p = prompt(12, 8)
    eng = Engine(m, max_batch=4, max_seq_len=128, block_size=4)
    rs = eng.generate([p], GREEDY, n=4)
    assert all(r.token_ids == oracle(m, p) for r in rs)
    assert [r.cached_tokens for r in rs] == [0, 12, 12, 12]
    rs = eng.generate([p], GREEDY, n=2)  # the prompt's first 2 blocks are now in the prefix cache
    assert [r.cached_tokens for r in rs] == [8, 12]


# --------------------------------------------------------------------------------------------------------------
# log-probs and seeds

@pytest.mark.parametrize("name", MODELS)
def test_logprobs_equal_full_recompute(name):
    m = model(name)
    p = prompt(7, 9)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=24, seed=3)
    for r in Engine(m, max_batch=3, max_seq_len=64).generate([p], params, n=3):
        ref = full_logprobs(m, p, r.token_ids)
        torch.testing.assert_close(torch.tensor(r.logprobs), ref, atol=1e-4, rtol=0)


def test_sample_logprobs_are_under_the_sampling_distribution():
    m = model("tiny")
    p = prompt(7, 10)
    (r,) = Engine(m, max_batch=1).generate([p], SamplingParams(temperature=0.5, max_new_tokens=16, seed=0))
    ids = torch.tensor([p + r.token_ids])
    with torch.no_grad():
        logp = (m(ids)[0, len(p) - 1:-1] / 0.5).log_softmax(-1)
    ref = logp.gather(1, torch.tensor(r.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(r.sample_logprobs), ref, atol=1e-4, rtol=0)


def test_seeds_reproduce_and_do_not_depend_on_the_batch():
    m = model("tiny")
    p = prompt(6, 11)
    params = SamplingParams(temperature=1.0, max_new_tokens=32, seed=5, ignore_eos=True)
    alone = Engine(m, max_batch=4).generate([p], params)[0].token_ids
    assert Engine(m, max_batch=4).generate([p], params)[0].token_ids == alone
    other = SamplingParams(temperature=1.0, max_new_tokens=32, seed=6, ignore_eos=True)
    assert Engine(m, max_batch=4).generate([p], other)[0].token_ids != alone
    # the same request decoded beside others (another prompt queued first, a group after) samples the same
    eng = Engine(m, max_batch=4)
    a = eng.add_request(prompt(9, 12), SamplingParams(temperature=0.7, max_new_tokens=5, seed=1))
    b = eng.add_request(p, params)
    eng.add_group(prompt(4, 13), SamplingParams(temperature=1.0, max_new_tokens=40, seed=9), n=2)
    while eng.has_work:
        eng.step()
    assert eng.pop_result(b).token_ids == alone and len(eng.pop_result(a).token_ids) == 5
    # group member j is seeded seed + j
    g = Engine(m, max_batch=4).generate([p], params, n=2)
    assert g[0].token_ids == alone
    assert g[1].token_ids == Engine(m, max_batch=4).generate([p], SamplingParams(
        temperature=1.0, max_new_tokens=32, seed=6, ignore_eos=True))[0].token_ids


# --------------------------------------------------------------------------------------------------------------
# filters and the sampler

# min_p 0.9999: this model has a near-tie (p ratio 0.9993) at step 43 that 0.999 keeps
@pytest.mark.parametrize("kw", [dict(top_k=1), dict(top_p=1e-6), dict(min_p=0.9999)])
def test_degenerate_filters_are_greedy(kw):
    m = model("tiny-qwen2")
    p = prompt(8, 14)
    (r,) = Engine(m, max_batch=1).generate([p], SamplingParams(temperature=1.0, max_new_tokens=64, seed=0, **kw))
    assert r.token_ids == oracle(m, p)


def test_filter_logits_keeps_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5], [0.4, 0.3, 0.2, 0.1]]))
    top_k, top_p, min_p = torch.tensor([2, 0, 0]), torch.tensor([1.0, 0.7, 1.0]), torch.tensor([0.0, 0.0, 0.4])
    out = filter_logits(logits, top_k, top_p, min_p, kmax=2, use_top_p=True, use_min_p=True)
    kept = torch.isfinite(out)
    assert kept.tolist() == [[True, True, False, False],  # top-2
                             [False, False, True, True],  # 0.5 + 0.3 >= 0.7
                             [True, True, True, False]]  # p >= 0.4 * 0.4


def test_inverse_cdf_samples_the_softmax():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    N = 40000
    logits = probs.log().expand(N, -1)
    u = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ones, zeros = torch.ones(N), torch.zeros(N)
    tok, lp, slp = sample(logits, ones, zeros.long(), ones, zeros, u, (0, False, False, False))
    freq = torch.bincount(tok, minlength=4).float() / N
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)  # 4 sigma is ~0.01 at N=40000
    torch.testing.assert_close(lp, probs.log()[tok])
    torch.testing.assert_close(slp, lp)  # temperature 1, no filter: the same distribution


def test_filtered_tokens_are_never_sampled_even_at_the_ends_of_u():
    """U = 0 and the largest double below 1 land on the first and last tokens that survive the filter."""
    logits = torch.tensor([[-1.0, 2.0, 0.5, 1.0, -3.0]]).expand(4, -1)
    u = torch.tensor([0.0, 1 - 2.0 ** -53, 0.0, 1 - 2.0 ** -53], dtype=torch.float64)
    ones, zeros = torch.ones(4), torch.zeros(4)
    top_k = torch.tensor([2, 2, 0, 0])
    tok, _, slp = sample(logits, ones, top_k, ones, zeros, u, (2, False, False, False))
    assert tok.tolist() == [1, 3, 0, 4]  # top-2 keeps ids 1 and 3; unfiltered rows reach both ends
    assert torch.isfinite(slp).all()


def splitmix64(z: int) -> int:
    """The reference (Steele et al. 2014), in Python's unbounded ints."""
    mask = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_uniforms_are_splitmix64_of_seed_and_position():
    seeds = [0, 1, 7, (1 << 62) - 1, 123456789]
    counters = [0, 41, 1 << 20, 5, 0]
    u = uniforms(torch.tensor(seeds), torch.tensor(counters))
    mask = (1 << 64) - 1
    ref = [(splitmix64((splitmix64(s) + c) & mask) >> 11) * 2.0 ** -53 for s, c in zip(seeds, counters)]
    assert u.dtype == torch.float64 and u.tolist() == ref
    assert splitmix64(0) == 0xE220A8397B1DCDAF  # the published first output for state 0
    big = uniforms(torch.arange(4096), torch.zeros(4096, dtype=torch.long))
    assert 0 <= big.min() and big.max() < 1 and abs(big.mean().item() - 0.5) < 0.02


def test_cdf_block_sums_keep_a_tiny_tail():
    """Block sums in fp32 would round 1 + 5e-8 down to 1 and make the block's last token unreachable."""
    p = torch.zeros(1, BLOCK)
    p[0, 0], p[0, -1] = 1.0, 5e-8
    assert inverse_cdf(p, torch.tensor([1 - 2.0 ** -53], dtype=torch.float64)).item() == BLOCK - 1


def test_a_top_p_row_does_not_truncate_its_neighbours():
    logits = torch.randn(2, 49152, generator=torch.Generator().manual_seed(0)) * 3
    out = filter_logits(logits, torch.zeros(2, dtype=torch.long), torch.tensor([1.0, 0.9]), torch.zeros(2),
                        kmax=0, use_top_p=True, use_min_p=False)
    assert torch.isfinite(out[0]).all() and not torch.isfinite(out[1]).all()


def test_greedy_requests_leave_the_global_rng_alone():
    eng = Engine(model("tiny"), max_batch=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    eng.generate([prompt(5, 30)], SamplingParams(temperature=0, max_new_tokens=4))
    assert torch.equal(torch.rand(3), expected)


def test_two_level_cdf_across_blocks():
    """A vocabulary of several blocks (the last one partial) with whole blocks filtered out: U = 0 and U -> 1 land
    on the first and last surviving tokens, and frequencies follow the probabilities."""
    V = 3 * BLOCK + 17
    probs = torch.zeros(V)
    keep = torch.tensor([5, BLOCK + 3, BLOCK + 4, 3 * BLOCK + 16])  # block 2 is empty; the last token survives
    probs[keep] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    u = torch.tensor([0.0, 1 - 2.0 ** -53], dtype=torch.float64)
    assert inverse_cdf(probs.expand(2, -1), u).tolist() == [5, 3 * BLOCK + 16]
    N = 40000
    u = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tok = inverse_cdf(probs.expand(N, -1), u)
    assert set(tok.unique().tolist()) <= set(keep.tolist())
    freq = torch.bincount(tok, minlength=V)[keep].float() / N
    torch.testing.assert_close(freq, probs[keep], atol=0.01, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# stopping

def test_stop_ids_eos_and_length():
    m = model("tiny")
    p = prompt(8, 15)
    ref = oracle(m, p)
    stop = ref[5]
    k = ref.index(stop)
    (r,) = Engine(m).generate([p], SamplingParams(temperature=0, max_new_tokens=64, stop_token_ids=[stop]))
    assert r.token_ids == ref[:k + 1] and r.finish_reason == "stop"
    tok = Tokenizer.builtin()
    tok.eos_id = stop  # the engine stops at the tokenizer's eos unless ignore_eos
    (r,) = Engine(m, tok).generate([p], SamplingParams(temperature=0, max_new_tokens=64))
    assert r.token_ids == ref[:k + 1] and r.finish_reason == "stop"
    (r,) = Engine(m, tok).generate([p], SamplingParams(temperature=0, max_new_tokens=64, ignore_eos=True))
    assert r.token_ids == ref and r.finish_reason == "length"
    (r,) = Engine(m).generate([p], SamplingParams(temperature=0, max_new_tokens=7))
    assert len(r.token_ids) == 7 and r.finish_reason == "length"


def test_stop_strings_cut_the_text():
    m, tok = model("tiny"), Tokenizer.builtin()
    p = prompt(8, 16)
    ref = oracle(m, p)
    text = tok.decode(ref)
    stop = text[20:22]
    first = text.find(stop)
    (r,) = Engine(m, tok).generate([p], SamplingParams(temperature=0, max_new_tokens=64, stop=[stop],
                                                       ignore_eos=True))
    assert r.finish_reason == "stop" and r.text == text[:first]
    assert stop in tok.decode(r.token_ids) and r.token_ids == ref[:len(r.token_ids)]
    with pytest.raises(R1kitError, match="tokenizer"):
        Engine(m).add_request(p, SamplingParams(stop=["x"]))


# --------------------------------------------------------------------------------------------------------------
# scheduling, abort, prefix cache

def test_abort_frees_the_slot():
    m = model("tiny")
    eng = Engine(m, max_batch=1)
    params = SamplingParams(temperature=0, max_new_tokens=50, ignore_eos=True)
    a, b, c = (eng.add_request(prompt(5, s), params) for s in (17, 18, 19))
    eng.step()
    assert eng.slots[0].id == a and eng.abort(c)  # c was still queued
    assert eng.abort(a) and eng.slots[0] is None
    assert not eng.abort(a)  # already finished
    while eng.has_work:
        eng.step()
    ra, rb, rc = (eng.pop_result(i) for i in (a, b, c))
    assert (ra.finish_reason, rb.finish_reason, rc.finish_reason) == ("abort", "length", "abort")
    assert len(ra.token_ids) == 2 and rc.token_ids == [] and rb.token_ids == oracle(m, prompt(5, 18), 50)


def test_prefix_cache_lru_and_cap():
    pc = PrefixCache(block_size=2, max_bytes=3 * 8)  # room for 3 blocks of one 2-float tensor
    blk = lambda i: [torch.full((1, 2), float(i))]  # noqa: E731
    pc.insert([1, 2, 3, 4, 5, 6], 6, blk)
    assert len(pc.lookup([1, 2, 3, 4, 5, 6, 7], 6)) == 3
    assert len(pc.lookup([1, 2, 3, 9], 4)) == 1  # a changed second block hits only the first
    assert pc.lookup([9, 2], 2) == []
    pc.insert([7, 8], 2, blk)  # evicts the least recently used block: the chain's leaf [5, 6]
    assert len(pc.lookup([1, 2, 3, 4, 5, 6], 6)) == 2 and pc.bytes <= pc.max_bytes
    assert len(pc.lookup([1, 2, 3], 3)) == 1  # whole blocks only, within the limit


# --------------------------------------------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("kw,match", [(dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"),
                                      (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
                                      (dict(min_p=1.0), "min_p")])
def test_bad_sampling_params(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kw)


def test_bad_prompts():
    eng = Engine(model("tiny"), max_seq_len=16)
    with pytest.raises(R1kitError, match="empty prompt"):
        eng.add_request([])
    with pytest.raises(R1kitError, match="does not fit"):
        eng.add_request(list(range(16)))
    with pytest.raises(R1kitError, match="token ids"):
        eng.add_request([1000])
    with pytest.raises(R1kitError, match="n must be"):
        eng.add_group([1, 2], n=17)
    p = SamplingParams()
    p.max_new_tokens = -3  # mutated after construction: add_request validates again
    with pytest.raises(R1kitError, match="max_new_tokens"):
        eng.add_request([1, 2], p)


# --------------------------------------------------------------------------------------------------------------
# loading, CLI, vLLM backend

def test_load_for_inference_folder_and_preset(tmp_path):
    from r1kit.checkpoint.hf import save_model
    from r1kit.engine.load import load_for_inference

    m = model("tiny")
    save_model(m, tmp_path)
    Tokenizer.builtin().save(tmp_path)
    m2, tok = load_for_inference(str(tmp_path), device="cpu")  # CPU's default dtype is fp32 (CUDA's is bf16)
    assert tok.eos_id == 1 and next(m2.parameters()).dtype == torch.float32
    p = prompt(6, 20)
    assert Engine(m2, tok).generate([p], GREEDY)[0].token_ids[:8] == oracle(m, p, 8)
    with pytest.warns(UserWarning, match="RANDOM"):
        m3, _ = load_for_inference("tiny")
    assert m3.cfg.vocab_size == 128
    with pytest.raises(R1kitError, match="not a checkpoint folder"):
        load_for_inference(str(tmp_path / "nope"))


def test_cli_generate_streams(capsys):
    from r1kit.engine.cli import generate

    generate("tiny", "Hi", max_new_tokens=12, temperature=0, template="r1")
    out, err = capsys.readouterr()
    assert "RANDOM" in err and "12 tokens in" in err and out
    generate("tiny", "Hi", n=2, max_new_tokens=5, seed=0, template="none")
    assert capsys.readouterr().out.count("--- sample") == 2
    with pytest.raises(R1kitError, match="template"):
        generate("tiny", "Hi", template="chatml")


def test_vllm_backend_needs_vllm():
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed")
    except ImportError:
        pass
    from r1kit.engine.vllm_backend import VLLMEngine

    with pytest.raises(R1kitError, match="pip install vllm"):
        VLLMEngine("some/model")


@pytest.mark.slow
def test_compiled_decode_matches_eager():
    m = model("tiny")
    p = prompt(9, 21)
    eng = Engine(m, max_batch=2, max_seq_len=96, compile=True)
    rs = eng.generate([p, prompt(4, 22)], GREEDY)
    assert rs[0].token_ids == oracle(m, p)
