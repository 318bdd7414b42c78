"""The stage runner: named stages with inputs and outputs in one run folder, cached by content hash, resumable.

    recipe = load_recipe("recipes/r1-tiny.yaml")
    records = run_pipeline(recipe, "runs/r1-tiny")

Each stage `S` owns the folder `RUN/S/` and a record `RUN/S/stage.json` (kind, key, status, outputs, metrics,
seconds, evaluation). The key is a sha256 of the stage's kind, typed config, the content of the files it names and
the keys of its input stages (config.stage_key), so:

- a finished stage whose key matches and whose outputs exist is skipped ("cached");
- changing a stage's config changes its key and, through the input keys, the key of every stage downstream: they
  all re-run, and each stale folder is cleared first;
- a stage that was interrupted (record status "running", same key) is called again on its own folder and resumes
  from what it left there (RL stages: the last rl/state.py checkpoint; sampling stages: finished shards).

A stage is a function `run(cfg, inputs, out, ctx) -> StageResult` registered under a kind with its config class
(stages.py). `inputs` maps each input name to a path: `{model: base}` in the recipe passes the `model` output of
stage `base`; `{init: sft1.model}` names the output explicitly. After a stage that outputs a `model`, the runner
evaluates it with the recipe's `eval` settings (cached the same way) so the report shows every stage's pass@1.

Under torchrun (docs/SCALING.md) every rank runs every stage, and rank 0 alone owns the run folder: it decides what
is cached and writes the records; the decision reaches every rank through dist.on_main, so no two ranks diverge.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from r1kit.checks import typed
from r1kit.errors import R1kitError
from r1kit.pipeline.config import from_dict, read_json, stage_key, to_dict
from r1kit.runs import prepare_run_dir
from r1kit.train import dist


@dataclass
class StageResult:
    outputs: dict[str, str]  # output name -> path (absolute or inside the stage folder)
    metrics: dict = field(default_factory=dict)  # numbers and short strings for the report


@dataclass
class Stage:
    """A registered stage kind: its config class and its function."""
    config: type
    run: Callable[..., StageResult]


@dataclass
class StageSpec:
    name: str
    kind: str
    config: dict = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> "stage" or "stage.output"
    eval: bool = True  # evaluate a `model` output with the recipe's eval settings


@dataclass
class Recipe:
    name: str
    stages: list[StageSpec]
    eval: dict = field(default_factory=dict)  # EvalConfig fields (eval.heldout)
    report: dict = field(default_factory=dict)  # {"compare": [stage_a, stage_b], "title": ...}
    source: str = ""


@dataclass
class Context:
    """What every stage may use besides its config and inputs."""
    run_dir: Path
    log: Callable[[str], None] = print
    record: dict = field(default_factory=dict)  # this stage's record so far (resume information)


@dataclass
class Record:
    name: str
    kind: str
    key: str
    status: str  # ran | cached | resumed | failed | pending
    outputs: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    seconds: float = 0.0  # stage wall time of the call that finished it (a resumed stage: the resuming call)
    eval_seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process (and reaped children) during the stage
    eval_cpu_seconds: float = 0.0


# --------------------------------------------------------------------------------------------------------------
# recipes

def load_recipe(path: str | Path) -> Recipe:
    """Parse a YAML recipe: `name`, `eval`, `report` and an ordered `stages` list of {name, kind, config, inputs}."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise R1kitError(f"{path}: cannot read recipe ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise R1kitError(f"{path}: a recipe is a mapping with a `stages` list")
    extra = set(data) - {"name", "stages", "eval", "report", "defaults"}  # `defaults`: a home for YAML anchors
    if extra:
        raise R1kitError(f"{path}: unknown recipe keys {', '.join(sorted(extra))}")
    stages = [from_dict(StageSpec, s, f"{path}: stage {i}") for i, s in enumerate(data["stages"])]
    for key, tp in (("name", str), ("eval", dict), ("report", dict)):
        if data.get(key) is not None:
            typed(data[key], tp, f"{path}: {key}")
    return Recipe(name=data.get("name", path.stem), stages=stages, eval=data.get("eval") or {},
                  report=data.get("report") or {}, source=str(path))


def check_recipe(recipe: Recipe, registry: dict[str, Stage]) -> dict[str, Any]:
    """Validate names, kinds, input references and configs before anything runs; returns {stage: typed config}."""
    seen, configs = set(), {}
    for s in recipe.stages:
        if s.name in seen:
            raise R1kitError(f"recipe {recipe.name}: stage name {s.name!r} is used twice")
        if not s.name.replace("-", "_").isidentifier():
            raise R1kitError(f"recipe {recipe.name}: stage name {s.name!r} must be a plain identifier")
        if s.kind not in registry:
            raise R1kitError(f"stage {s.name}: unknown kind {s.kind!r}; expected one of {', '.join(registry)}")
        for inp, ref in s.inputs.items():
            if ref.split(".", 1)[0] not in seen:
                raise R1kitError(f"stage {s.name}: input {inp} refers to {ref!r}, which is not an earlier stage")
        configs[s.name] = from_dict(registry[s.kind].config, s.config, f"stage {s.name}")
        seen.add(s.name)
    return configs


# --------------------------------------------------------------------------------------------------------------
# running

def cpu_time() -> float:
    """CPU seconds of this process and its reaped children: on a machine shared with other work this is the
    honest measure of a stage's cost (wall time there includes waiting for the CPU)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _resolve(run_dir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else run_dir / p


def _outputs_exist(run_dir: Path, rec: dict) -> bool:
    return all(_resolve(run_dir, p).exists() for p in rec.get("outputs", {}).values())


def _write_record(folder: Path, rec: dict) -> None:
    tmp = folder / ".stage.json.tmp"
    tmp.write_text(json.dumps(rec, indent=2, default=str))
    os.replace(tmp, folder / "stage.json")


def run_pipeline(recipe: Recipe, run_dir: str | Path, registry: dict[str, Stage] | None = None,
                 evaluator: Callable[[str, dict], dict] | None = None, force: tuple[str, ...] = (),
                 until: str = "", log: Callable[[str], None] = print) -> list[Record]:
    """Run (or skip) every stage of `recipe` in order inside `run_dir`; returns one Record per stage.

    registry: kind -> Stage (default: stages.default_registry()). evaluator(model_path, eval_settings) -> metrics
    evaluates a stage's `model` output (default: eval.heldout.evaluate_path; None results are not shown).
    force: stage names to re-run even if cached. A forced stage keeps its key, so its dependents stay cached;
    name them too to re-run them. until: stop after this stage.
    """
    if registry is None:
        from r1kit.pipeline.stages import default_registry
        registry = default_registry()
    if evaluator is None:
        from r1kit.eval.heldout import EvalConfig, evaluate_path
        evaluator = evaluate_path
        from_dict(EvalConfig, recipe.eval, f"recipe {recipe.name}: eval")  # checked now, used after each stage
    configs = check_recipe(recipe, registry)
    unknown = set(force) - set(configs) - {""}
    if unknown or (until and until not in configs):
        raise R1kitError(f"no stage named {', '.join(sorted(unknown)) or until!r} in recipe {recipe.name}")
    d = dist.setup()  # under torchrun: rank 0 owns the folder and decides; every rank trains and samples
    try:
        return _run(recipe, run_dir, registry, evaluator, configs, force, until, log if d.main else _silent)
    except BaseException as e:
        if not dist.agreed(e):  # this rank may be alone with its error: leave without waiting for the others
            dist.mark_failed()
        raise


def _run(recipe: Recipe, run_dir, registry, evaluator, configs: dict, force, until: str, log) -> list[Record]:
    run_dir = dist.on_main(lambda: prepare_run_dir(run_dir, resume=True))  # an existing folder is the cache
    keys: dict[str, str] = {}
    done: dict[str, dict] = {}  # stage -> its outputs (absolute paths)
    records: list[Record] = []
    for spec in recipe.stages:
        cfg = configs[spec.name]
        refs = {inp: ref.split(".", 1) + [inp] for inp, ref in spec.inputs.items()}  # [stage, output?, input]
        input_keys = {inp: keys[r[0]] + (f".{r[1]}" if len(r) == 3 else "") for inp, r in refs.items()}
        key = stage_key(spec.kind, cfg, input_keys)
        keys[spec.name] = key
        folder = run_dir / spec.name
        # made once on rank 0 and told to every rank, so no two ranks disagree about running a stage
        status, rec, inputs = dist.on_main(lambda: _prepare(spec, key, folder, run_dir, refs, done, cfg, force,
                                                            log))
        if status != "cached":
            t0, c0 = time.time(), cpu_time()
            result = registry[spec.kind].run(cfg, inputs, folder, Context(run_dir, log, rec))
            seconds = time.time() - t0
            rec |= {"status": "done", "seconds": seconds, "cpu_seconds": cpu_time() - c0,
                    "metrics": result.metrics,
                    "outputs": {k: os.path.relpath(_resolve(folder, v), run_dir) for k, v in result.outputs.items()}}
            dist.on_main(lambda: _write_record(folder, rec))
        outs = {k: str(_resolve(run_dir, v)) for k, v in rec.get("outputs", {}).items()}
        done[spec.name] = outs
        ev = {}
        if spec.eval and "model" in outs and recipe.eval is not None:
            ev_key = stage_key("eval", recipe.eval, {"model": key})
            if rec.get("eval_key") == ev_key:
                ev = rec["eval"]
            else:
                t0, c0 = time.time(), cpu_time()
                ev = evaluator(outs["model"], recipe.eval) or {}  # every rank: evaluation is sharded
                rec |= {"eval": ev, "eval_key": ev_key, "eval_seconds": time.time() - t0,
                        "eval_cpu_seconds": cpu_time() - c0}
                dist.on_main(lambda: _write_record(folder, rec))
            if ev:
                log(f"[{spec.name}] eval: " + ", ".join(f"{k} {v:.3f}" for k, v in ev.items()
                                                       if isinstance(v, float)))
        records.append(Record(spec.name, spec.kind, key, status, outs, rec.get("metrics", {}), ev,
                              rec.get("seconds", 0.0), rec.get("eval_seconds", 0.0), rec.get("cpu_seconds", 0.0),
                              rec.get("eval_cpu_seconds", 0.0)))
        if spec.name == until:
            break
    return records


def _silent(*args, **kw) -> None:
    pass


def _prepare(spec: StageSpec, key: str, folder: Path, run_dir: Path, refs: dict, done: dict, cfg, force,
             log) -> tuple[str, dict, dict]:
    """Whether a stage is cached; if not, its fresh (or resumed) folder, its "running" record and its inputs ->
    (status, record, inputs)."""
    old = read_json(folder / "stage.json") or {}
    fresh = old.get("key") != key or spec.name in force
    if old.get("status") == "done" and not fresh and _outputs_exist(run_dir, old):
        log(f"[{spec.name}] cached (key {key[:10]})")
        return "cached", old, {}
    if folder.exists() and (fresh or old.get("status") == "done"):
        shutil.rmtree(folder)  # stale: another config, a forced re-run, or outputs gone missing
    resumed = folder.exists() and old.get("status") == "running"
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for inp, r in refs.items():
        outs = done[r[0]]
        name = r[1] if len(r) == 3 else r[-1]
        if name not in outs:
            raise R1kitError(f"stage {spec.name}: input {inp} wants output {name!r} of stage {r[0]}, "
                             f"which has {', '.join(outs) or 'no outputs'}")
        inputs[inp] = Path(outs[name])
    rec = {"name": spec.name, "kind": spec.kind, "key": key, "status": "running",
           "config": to_dict(cfg), "inputs": {k: str(v) for k, v in inputs.items()}, "started": time.time()}
    _write_record(folder, rec)  # from here a crash leaves a "running" record: the next call resumes
    log(f"[{spec.name}] {'resuming' if resumed else 'running'} {spec.kind} (key {key[:10]})")
    return ("resumed" if resumed else "ran"), rec, inputs
