import sys, json, dataclasses, torch
torch.set_num_threads(1)
from r1kit.rl import zero as z
from r1kit.rl.grpo import GRPOConfig
from r1kit.eval.heldout import EvalConfig
run, task_kw, base_kw, grpo_kw = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
bc = dataclasses.replace(z.demo_base("arith", task_kw, 2000, 0), **base_kw)
gc = GRPOConfig(**(dict(steps=60, prompts_per_step=16, group_size=8, lr=1e-4, beta=0.001, max_new_tokens=128, seed=0) | grpo_kw))
ec = EvalConfig(task="arith", problems=100, k=4, temperature=0.6, top_p=0.95, max_new_tokens=128, seed=1234)
z.run_zero(run, None, "arith", task_kw, gc, bc, ec, eval_every=10)
