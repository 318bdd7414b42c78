"""The engine's CUDA path against the same full-recompute oracles as test_engine.py: fp32 eager, the compiled
CUDA-graph decode step, and bf16. Skipped without CUDA (conftest.py)."""
import pytest
import torch

from r1kit.engine.engine import Engine
from r1kit.engine.naive import greedy
from r1kit.engine.sampling import SamplingParams, uniforms
from r1kit.model import ModelConfig, Transformer
from test_engine import GREEDY, full_logprobs, prompt  # the CPU tests' helpers (tests/ is on sys.path)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True, scope="module")
def _no_tf32():
    # exactness in fp32 means fp32 matmuls, not TF32 (10-bit mantissa)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def cuda_model(name: str, dtype=torch.float32) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name(name)).to("cuda", dtype).eval()


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "cudagraph"])
def test_greedy_and_logprobs_exact_on_cuda(name, compile):
    """Greedy = full-recompute argmax for 64 tokens; log-probs = the full forward's log-softmax (fp32). Two
    requests of different lengths share each decode step, so the static-shape step masks per row."""
    m = cuda_model(name)
    p, q = prompt(11, 0), prompt(5, 1)
    eng = Engine(m, max_batch=2, max_seq_len=128, compile=compile)
    rp, rq = eng.generate([p, q], GREEDY)
    for ids, r in ((p, rp), (q, rq)):
        assert r.token_ids == greedy(m, torch.tensor([ids], device="cuda"), 64)
        torch.testing.assert_close(torch.tensor(r.logprobs), full_logprobs(m, ids, r.token_ids), atol=1e-4, rtol=0)


def test_fan_out_seeds_reproduce_on_cuda():
    m = cuda_model("tiny")
    params = SamplingParams(temperature=1.0, max_new_tokens=32, seed=7)
    a = Engine(m, max_batch=4).generate([prompt(9, 2)], params, n=4)
    b = Engine(m, max_batch=8).generate([prompt(9, 2)], params, n=4)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert len({tuple(r.token_ids) for r in a}) > 1  # the group's samples differ from each other
    assert [r.cached_tokens for r in a] == [0, 9, 9, 9]


def test_a_seed_samples_the_same_on_cpu_and_cuda():
    """The random streams are a hash of (seed, position), so a seed means the same draws on any device; in fp32 the
    samples then agree too (the logits differ by rounding only)."""
    seed, pos = torch.arange(0, 1 << 40, 1 << 30), torch.arange(1024)
    assert torch.equal(uniforms(seed, pos), uniforms(seed.cuda(), pos.cuda()).cpu())
    m = cuda_model("tiny")
    params = SamplingParams(temperature=1.0, max_new_tokens=32, seed=11)
    on_cuda = Engine(m, max_batch=4).generate([prompt(9, 4)], params, n=4)
    on_cpu = Engine(m.cpu(), max_batch=4).generate([prompt(9, 4)], params, n=4)
    assert [r.token_ids for r in on_cuda] == [r.token_ids for r in on_cpu]


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "cudagraph"])
def test_bf16_logprobs_track_the_full_forward(compile):
    """bf16: cached decode and a full forward round differently, so tokens may part after a near-tie; what must
    hold is that the engine's log-probs are the model's, to bf16 precision, at the positions it sampled."""
    m = cuda_model("tiny", torch.bfloat16)
    p = prompt(13, 3)
    params = SamplingParams(temperature=1.0, max_new_tokens=48, seed=1)
    for r in Engine(m, max_batch=4, max_seq_len=128, compile=compile).generate([p], params, n=4):
        ref = full_logprobs(m, p, r.token_ids)
        err = (torch.tensor(r.logprobs) - ref).abs()
        assert err.max() < 0.1 and err.mean() < 0.02, (err.max(), err.mean())


def test_cudagraph_engine_stepped_from_a_worker_thread():
    """The server drives the engine from its own thread (serve/app.py EngineWorker): the compiled CUDA-graph step
    must record and replay there, and stay exact."""
    import threading

    m = cuda_model("tiny")
    p = prompt(10, 5)
    eng = Engine(m, max_batch=2, max_seq_len=96, compile=True)
    out = {}
    worker = threading.Thread(target=lambda: out.update(r=eng.generate([p, prompt(3, 6)], GREEDY)))
    worker.start()
    worker.join()
    assert out["r"][0].token_ids == greedy(m, torch.tensor([p], device="cuda"), 64)
    assert eng.generate([p], GREEDY)[0].token_ids == out["r"][0].token_ids  # and again from the main thread
