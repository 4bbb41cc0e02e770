"""v45 probe (benchmarks/NOTES.md, v45): the one-launch inference forward (``fused.layer_forward``) under other block
configs than the forward's table entry, which it takes today. GPU time (CUDA-graph replays) of a no-grad
``locat_attention`` call as a layer launches it, bf16, broad regime (and init at 224 px), per shape and config, rounds interleaved
(the median round), beside the recorded forward's two launches (gaug + forward: this tree's
``_locat_forward``) under the table's config. On a GPU:
``PYTHONPATH=. python benchmarks/probes/v45_layer_forward_configs.py OUT.json``."""
import json
import statistics
import sys

import torch

from locat_bench.bench_attention import Shape, layer_weights, make_inputs
from locat_bench.cli import environment
from locat_bench.timing import cuda_median_ms
from locat_kernels import attention, locat_attention
from locat_kernels.fused import configs

SHAPES = [("256,3,14,14,1,64", "broad"), ("256,6,14,14,1,64", "broad"), ("128,12,14,14,1,64", "broad"),
          ("32,12,24,24,1,64", "broad"), ("16,12,32,32,1,64", "broad"), ("256,3,14,14,1,64", "init"),
          ("128,12,14,14,1,64", "init")]
CONFIGS = [None, (64, 32, 4, 3), (64, 32, 4, 2, 96), (32, 32, 4, 3), (64, 16, 4, 3, 96), (128, 32, 8, 3)]
ROUNDS = 3


def main(path: str) -> None:
    rows = []
    for spec, regime in SHAPES:
        s = Shape.parse(spec)
        q, k, v, *_ = make_inputs(s, regime, torch.bfloat16, "cuda")
        weights = layer_weights(s.D, regime, "cuda")

        def one_launch():
            return locat_attention(q, k, v, *weights, s.grid, num_prefix_tokens=s.P, backend="triton")

        gh, gw = s.grid
        eps, cmin, shift, var_scale = attention._fused_constants((gh, gw), (gh, gw))
        params = (gh, gw, s.P, eps, cmin, shift, var_scale, 1, s.D ** -0.5)

        def two_launches():
            return attention._locat_forward(q, k, v, *weights, *params)[0]

        times = {}
        with torch.no_grad():
            for _ in range(ROUNDS):
                times.setdefault("two_launches_table", []).append(cuda_median_ms(two_launches, graph=True))
                for cfg in CONFIGS:
                    with configs.switched({}, {"forward": cfg} if cfg else {}):
                        times.setdefault(str(cfg or "table"), []).append(cuda_median_ms(one_launch, graph=True))
        row = dict(shape=spec, regime=regime, ms={name: statistics.median(t) for name, t in times.items()},
                   spread={name: max(t) / min(t) - 1 for name, t in times.items()})
        base = row["ms"]["two_launches_table"]
        print(spec, regime, "  ".join(f"{name} {ms:.4f} ({ms / base:.3f})" for name, ms in row["ms"].items()), flush=True)
        rows.append(row)
    env = dict(environment("cuda"), command="PYTHONPATH=. python benchmarks/probes/v45_layer_forward_configs.py " + path)
    with open(path, "w") as f:
        json.dump(dict(environment=env, rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
