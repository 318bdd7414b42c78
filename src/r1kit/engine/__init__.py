"""Generation: KV caches, sampling, batching. The model only computes logits.

    from r1kit.engine import Engine, SamplingParams, load_for_inference
    model, tok = load_for_inference(".cache/smollm2")
    results = Engine(model, tok).generate(["Hi"], SamplingParams(temperature=0.6, seed=0), n=4)

engine.py (Engine, Result, Event), sampling.py (SamplingParams, sample), cache.py (slot caches, PrefixCache),
load.py (load_for_inference), cli.py (`r1kit generate`), vllm_backend.py (optional VLLMEngine), naive.py (the
full-recompute greedy oracle the tests check the engine against).
"""
from r1kit.engine.engine import Engine, Event, Result
from r1kit.engine.load import load_for_inference
from r1kit.engine.sampling import SamplingParams

__all__ = ["Engine", "Event", "Result", "SamplingParams", "load_for_inference"]
