"""Benchmark the compiled MultiScaleDeformableAttention op against the pure-PyTorch (grid_sample) path.

Default shapes are the R50 pixel decoder's encoder at a 1024x1024 input, batch 2: levels at strides 8/16/32
((128, 128), (64, 64), (32, 32)), Lq = S = 21504 queries (self-attention over all positions), 8 heads of 32
channels, 3 levels, 4 points. Prints forward and forward+backward times (CUDA-synchronised, after warm-ups), the
speed-up of the op and the peak memory of each. ``--device cpu`` times the PyTorch path on tiny shapes only
(the op has no CPU kernel), to show the script works without a GPU.

    python tools/benchmark_msda.py                   # CUDA, R50 1024x1024 shapes
    python tools/benchmark_msda.py --device cpu      # tiny shapes, PyTorch path only
"""

import argparse
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mask2former_sim.layers import ms_deform_attn_cuda
from mask2former_sim.layers.ms_deform_attn import ms_deform_attn_pytorch

R50_1024_SHAPES = [(128, 128), (64, 64), (32, 32)]
CPU_SHAPES = [(16, 16), (8, 8), (4, 4)]
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_inputs(
    batch: int,
    shapes: Sequence[Tuple[int, int]],
    heads: int,
    channels: int,
    points: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tuple[torch.Tensor, ...]:
    """(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) with Lq = S."""
    generator = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    total = int(areas.sum())
    levels = len(shapes)
    value = torch.randn(batch, total, heads, channels, generator=generator)
    locations = torch.rand(batch, total, heads, levels, points, 2, generator=generator)
    weights = torch.rand(batch, total, heads, levels, points, generator=generator).flatten(-2).softmax(-1)
    weights = weights.view(batch, total, heads, levels, points)
    return (
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        locations.to(device, dtype),
        weights.to(device, dtype),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Mean wall time of fn in milliseconds, synchronised with the device, after warm-up calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1000.0 / iters


def peak_mib(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak CUDA memory allocated during one call of fn beyond what was allocated before, in MiB."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def build_cases(
    inputs: Tuple[torch.Tensor, ...], im2col_step: int, with_op: bool
) -> Dict[str, Dict[str, Callable[[], None]]]:
    """{pass: {impl: closure}} for the passes forward and forward+backward."""
    value, shapes, starts, locations, weights = inputs
    leaves = [t.detach().requires_grad_(True) for t in (value, locations, weights)]
    impls: Dict[str, Callable[..., torch.Tensor]] = {"pytorch": ms_deform_attn_pytorch}
    if with_op:
        impls["op"] = lambda v, s, i, loc, a: ms_deform_attn_cuda.MSDeformAttnFunction.apply(
            v, s, i, loc, a, im2col_step
        )
    grad_out = None

    def forward(impl: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                impl(value, shapes, starts, locations, weights)

        return run

    def forward_backward(impl: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            nonlocal grad_out
            out = impl(leaves[0], shapes, starts, leaves[1], leaves[2])
            if grad_out is None:
                grad_out = torch.randn_like(out)
            out.backward(grad_out)
            for leaf in leaves:  # freed here, so peak_mib counts the gradients of each call
                leaf.grad = None

        return run

    return {
        "forward": {name: forward(impl) for name, impl in impls.items()},
        "forward+backward": {name: forward_backward(impl) for name, impl in impls.items()},
    }


def format_table(rows: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--channels", type=int, default=32, help="channels per head")
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--im2col-step", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=None, help="default 5 (cuda) / 1 (cpu)")
    parser.add_argument("--iters", type=int, default=None, help="default 20 (cuda) / 3 (cpu)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU; use --device cpu")
    shapes = R50_1024_SHAPES if device.type == "cuda" else CPU_SHAPES
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1)
    iters = args.iters if args.iters is not None else (20 if device.type == "cuda" else 3)
    with_op = device.type == "cuda" and ms_deform_attn_cuda.is_available()

    inputs = make_inputs(args.batch, shapes, args.heads, args.channels, args.points, device, DTYPES[args.dtype])
    total = int(inputs[0].shape[1])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device_name}; torch {torch.__version__}; dtype {args.dtype}")
    print(
        f"shapes: N={args.batch}, levels={shapes}, S=Lq={total}, M={args.heads}, D={args.channels}, "
        f"L={len(shapes)}, P={args.points}, im2col_step={args.im2col_step}; warm-up {warmup}, iters {iters}"
    )
    if not with_op:
        print(f"op not timed: {ms_deform_attn_cuda.build_hint()}")

    rows = [["pass", "pytorch ms", "op ms", "speed-up", "pytorch peak MiB", "op peak MiB"]]
    for pass_name, impls in build_cases(inputs, args.im2col_step, with_op).items():
        times = {name: time_ms(fn, device, warmup, iters) for name, fn in impls.items()}
        memory = {name: peak_mib(fn, device) for name, fn in impls.items()}
        op_ms = times.get("op")
        rows.append(
            [
                pass_name,
                f"{times['pytorch']:.3f}",
                f"{op_ms:.3f}" if op_ms is not None else "n/a",
                f"{times['pytorch'] / op_ms:.2f}x" if op_ms else "n/a",
                f"{memory['pytorch']:.1f}" if memory["pytorch"] is not None else "n/a",
                f"{memory['op']:.1f}" if memory.get("op") is not None else "n/a",
            ]
        )
    print(format_table(rows))


if __name__ == "__main__":
    main()
