"""Optional vLLM backend with the `Engine` interface: add_request / add_group / step / abort / generate.

vLLM is never an r1kit dependency: it is imported when a `VLLMEngine` is built, and a clear error says how to
install it otherwise. It takes a checkpoint folder (what r1kit's `save_model` writes) and maps `SamplingParams` one to
one. Log-probs: vLLM V1 returns the raw model log-probs by default (`logprobs_mode="raw_logprobs"`), the same quantity
as `Result.logprobs`; `sample_logprobs` are left empty and `cached_tokens` is vLLM's own prefix-cache count.
"""
from __future__ import annotations

import itertools

from r1kit.engine.engine import Event, Result
from r1kit.engine.sampling import SamplingParams
from r1kit.errors import R1kitError


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise R1kitError("the vLLM backend needs the vllm package, which r1kit does not install: pip install vllm "
                         "(CUDA only); the built-in r1kit.engine.Engine needs nothing extra") from None
    return vllm


class VLLMEngine:
    """`Engine`'s interface over `vllm.LLMEngine`. Extra keyword arguments go to `vllm.EngineArgs`."""

    def __init__(self, model_path: str, **engine_args):
        vllm = _import_vllm()
        self._vllm = vllm
        self.engine = vllm.LLMEngine.from_engine_args(vllm.EngineArgs(model=str(model_path), **engine_args))
        self.results: dict[int, Result] = {}
        self._prompts: dict[int, list[int]] = {}
        self._seen: dict[int, int] = {}  # tokens already reported per request
        self._ids = itertools.count()

    def _params(self, p: SamplingParams, seed: int | None):
        return self._vllm.SamplingParams(
            n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else -1, min_p=p.min_p,
            max_tokens=p.max_new_tokens, stop_token_ids=list(p.stop_token_ids), stop=list(p.stop), seed=seed,
            ignore_eos=p.ignore_eos, logprobs=0)  # logprobs=0: the sampled token's log-prob only

    def add_group(self, prompt_ids: list[int], params: SamplingParams | None = None, n: int = 1) -> list[int]:
        params = params or SamplingParams()
        params.validate()
        if not prompt_ids:
            raise R1kitError("empty prompt: give at least one token")
        ids = []
        for j in range(n):  # one vLLM request per sample, seeded seed + j as Engine does; vLLM shares the prefix
            rid = next(self._ids)
            seed = params.seed + j if params.seed is not None else None
            self.engine.add_request(str(rid), {"prompt_token_ids": list(prompt_ids)}, self._params(params, seed))
            self._prompts[rid], self._seen[rid] = list(prompt_ids), 0
            ids.append(rid)
        return ids

    def add_request(self, prompt_ids: list[int], params: SamplingParams | None = None) -> int:
        return self.add_group(prompt_ids, params, 1)[0]

    def abort(self, request_id: int) -> bool:
        if request_id not in self._prompts:
            return False
        self.engine.abort_request([str(request_id)])
        p = self._prompts.pop(request_id)
        self.results[request_id] = Result(request_id, p, [], [], [], "abort", len(p), 0)
        return True

    @property
    def has_work(self) -> bool:
        return self.engine.has_unfinished_requests()

    def step(self) -> list[Event]:
        events = []
        for out in self.engine.step():
            rid = int(out.request_id)
            comp = out.outputs[0]
            new = comp.token_ids[self._seen[rid]:]
            self._seen[rid] = len(comp.token_ids)
            for i, t in enumerate(new):
                events.append(Event(rid, t, out.finished and i == len(new) - 1))
            if out.finished:
                lps = [lp[t].logprob for lp, t in zip(comp.logprobs or [], comp.token_ids)]
                reason = "stop" if comp.finish_reason == "stop" else comp.finish_reason or "length"
                p = self._prompts.pop(rid)
                self.results[rid] = Result(rid, p, list(comp.token_ids), lps, [], reason, len(p),
                                           out.num_cached_tokens or 0, comp.text)
        return events

    def pop_result(self, request_id: int) -> Result:
        return self.results.pop(request_id)

    def generate(self, prompts, params=None, n: int = 1, on_token=None) -> list[Result]:
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [i for p, sp in zip(prompts, plist) for i in self.add_group(p, sp, n)]
        while any(i not in self.results for i in ids):
            for ev in self.step():
                if on_token is not None:
                    on_token(ev)
        return [self.pop_result(i) for i in ids]
