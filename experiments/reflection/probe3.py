"""Does a forced check (decomposition) after the first coarse step improve accuracy? Plain sampling loop."""
import sys, torch, re
torch.set_num_threads(1)
from r1kit.checkpoint.hf import load_model
from r1kit.tokenizer import Tokenizer
from r1kit.tasks import get_task
from r1kit.rewards import reflection_rate
folder, T = sys.argv[1], float(sys.argv[2])
kw = dict(n_terms=(2,8), max_operand=5, ops="+*", nested=True, max_value=60, size=200000, chunk=int(sys.argv[3]) if len(sys.argv) > 3 else 2)
model, tok = load_model(folder).eval(), Tokenizer.from_file(folder)
task = get_task("arith", "test", **kw)
g = torch.Generator().manual_seed(0)
@torch.no_grad()
def sample(prefix_ids, n=60, stop_text=None):
    ids = list(prefix_ids); out = []
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0, -1] / T
        nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
        if nxt == tok.eos_id: break
        ids.append(nxt); out.append(nxt)
        if stop_text and stop_text(tok.decode(out)): break
    return out
res = {"plain": 0, "forced": 0, "plain_wait": 0}
N = 120
for i in range(N):
    ex = task[i]
    p = tok.encode(task.prompt(ex, template="r1-zero"), add_bos=True)
    c = tok.decode(sample(p)); res["plain"] += task.evaluate(ex, c); res["plain_wait"] += reflection_rate(c)
    j = c.find("</think>")
    if j < 0 or "<think></think>" in c:
        c2 = c
    else:
        head = c[:j].rstrip() + " wait,"
        c2 = head + tok.decode(sample(p + tok.encode(head)))
    res["forced"] += task.evaluate(ex, c2)
    if c != c2 and i < 30: print(ex.question, ex.answer, "|", c[8:90], "|", c2[8:160])
print({k: v / N for k, v in res.items()})
