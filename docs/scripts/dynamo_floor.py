"""The floor of a `torch.compile` call: what Dynamo alone, and Dynamo with
AOTAutograd, cost per call on a zoo model when the backend computes
nothing (its compiled function returns a constant).

Each backend is timed hot (calls back to back) and cold (a 24 MB write
between calls, as a model's own memory traffic would leave the caches).

    python docs/scripts/dynamo_floor.py mobilenet_v2 300
"""

import statistics
import sys
import time

import torch
from torch._dynamo.backends.common import aot_autograd

from fusecc.bench import zoo


def main() -> None:
    name, calls = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    entry = zoo.ZOO[name]
    model, x = entry.model("full"), entry.example_input("full", 1)
    constant = (torch.zeros(1),)

    def dynamo_only(gm, inputs):
        return lambda *args: constant

    def dynamo_and_aot(gm, inputs):
        def compiler(graph, graph_inputs):
            return lambda *args: constant

        return aot_autograd(fw_compiler=compiler, inference_compiler=compiler)(gm, inputs)

    traffic = torch.empty(24 << 20, dtype=torch.uint8)
    with torch.no_grad():
        for label, backend in (("Dynamo only", dynamo_only), ("Dynamo + AOTAutograd", dynamo_and_aot)):
            torch._dynamo.reset()
            compiled = torch.compile(model, backend=backend)
            compiled(x)
            for cold in (False, True):
                times = []
                for _ in range(calls):
                    if cold:
                        traffic.add_(1)
                    start = time.perf_counter()
                    compiled(x)
                    times.append(time.perf_counter() - start)
                print(f"{name} {label}, {'cold' if cold else 'hot'}: {statistics.median(times) * 1e6:.0f} us a call")


if __name__ == "__main__":
    main()
