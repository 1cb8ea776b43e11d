"""Dynamo's per-call cost on MobileNetV2 written two ways: the zoo's
`transformers` model and the same network in plain PyTorch modules
(torchvision's structure: Conv-BN-ReLU6, inverted residuals, the same 314
parameter and buffer tensors). Each is measured like
``fusecc bench --call-breakdown`` (guards, Dynamo + AOT, fusecc's frozen
check, compiled graph, and the same model through compile_exported, calls
alternated) and the kinds of guards Dynamo installed are counted.

    python docs/scripts/guards_plain_vs_transformers.py [out.json]
"""

import collections
import json
import re
import sys

import torch
from torch import nn

import fusecc
from fusecc.bench import zoo
from fusecc.bench.call_breakdown import measure
from fusecc.bench.harness import machine_info


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU6()] if act else []))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        head = [conv_bn(cin, mid, 1)] if expand != 1 else []
        self.conv = nn.Sequential(*head, conv_bn(mid, mid, 3, stride, mid), conv_bn(mid, cout, 1, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class PlainMobileNetV2(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        stages = [
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ]
        layers, cin = [conv_bn(3, 32, 3, 2)], 32
        for expand, cout, repeats, stride in stages:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        self.features = nn.Sequential(*layers, conv_bn(cin, 1280, 1))
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def guard_kinds(model, x) -> dict:
    compiled = torch.compile(model, backend="fusecc")
    with torch.no_grad():
        compiled(x)
    (entry,) = torch._dynamo.eval_frame._debug_get_cache_entry_list(type(model).forward.__code__)
    kinds = collections.Counter(re.findall(r"\+- ([A-Z_]{4,})", str(entry.guard_manager)))
    torch._dynamo.reset()
    return dict(kinds.most_common())


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    plain = PlainMobileNetV2()
    zoo._calibrate_batchnorm(plain, lambda: torch.randn(4, 3, 224, 224))
    models = {"plain PyTorch": plain.eval(), "transformers": zoo.get("mobilenet_v2").model("full")}
    results = {}
    for name, model in models.items():
        with torch.no_grad():
            exported = fusecc.compile_exported(torch.export.export(model, (x,)))
        result = measure(model, x, exported, 300)
        result["tensors"] = sum(1 for _ in model.parameters()) + sum(1 for _ in model.buffers())
        result["guard_kinds"] = guard_kinds(model, x)
        results[name] = result
        us = {k: round(v) for k, v in result["us"].items() if v is not None}
        print(f"{name}: {result['tensors']} tensors, {sum(result['guard_kinds'].values())} guards, us {us}")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump({"machine": machine_info(), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
