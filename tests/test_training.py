"""Training graphs go through fusecc too: one step's loss and gradients
match eager (fp32, 1e-4 relative), and so do the parameters after an
optimizer step."""

import copy

import pytest
import torch

from conftest import TARGETS, assert_close, compile_fusecc
from fusecc.bench import zoo
from fusecc.compiler import collect_reports


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["resnet18", "bert_base", "llama"])
def test_one_training_step_matches_eager(name, target):
    entry = zoo.get(name)
    model = entry.model("tiny").train()
    twin = copy.deepcopy(model)
    x = entry.example_input("tiny", batch=2)

    def step(m, fn):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        opt.zero_grad()
        loss = fn(x).float().pow(2).mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        opt.step()
        return loss.detach(), grads

    with collect_reports() as reports:
        loss, grads = step(model, compile_fusecc(model, target=target))
    ref_loss, ref_grads = step(twin, twin)
    assert_close(loss, ref_loss, 1e-4)
    assert grads.keys() == ref_grads.keys() and grads
    for n in ref_grads:
        assert_close(grads[n], ref_grads[n], 1e-4)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert_close(p.detach(), q.detach(), 1e-4)
    assert {r.kind for r in reports} == {"forward", "backward"}, "the backward graph must go through fusecc"
