"""Where the time of one training step goes, by operator (torch profiler).

Builds a preset's model on a synthetic session of the speed benchmark's shape (668 units
x 100 bins, batch 16), then times and profiles forward + backward + the training
optimiser's step (the module's AdamW, fused where ``spikemask train`` fuses it) under the
precision ``train.precision=auto`` picks on this machine, with one torch thread:

    python scripts/profile_step.py --preset paper [--set model.cpu_dropout=torch ...]

Prints ms/step (median of the timed steps), the share of the profiled time per operator
and the biggest copies (autocast's casts and layout copies) by shape. Throughput and the
fraction of the matmul peak come from ``spikemask bench speed``; this says what the rest
of the step is.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from spikemask.bench.speed import step_inputs, synthetic_session
from spikemask.config import load_config
from spikemask.training.module import adamw, step_generator
from spikemask.training.speed import resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper", choices=["small", "paper"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(preset=args.preset, sets=args.set)
    precision = resolve_precision(config.train.precision, "cpu")
    session = synthetic_session(668, 100, 64, seed=0)
    module, batch = step_inputs(config, session, 16)
    module.train()
    optimizer = adamw(
        list(module.model.parameters()),
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        precision=precision,
        fused=config.train.fused_adamw,
    )
    spikes, region_ids = batch["spikes"], batch["region_ids"]
    generator = step_generator(0)
    bf16 = precision == "bf16-mixed"

    def step() -> None:
        shape = tuple(spikes.shape)
        spec = module.mixture.sample(shape, generator=generator, region_ids=region_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            total, _ = module._loss_terms(batch, spec)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(
        f"{args.preset}, {precision}, fused AdamW {optimizer.defaults['fused']}, "
        f"{args.threads} thread(s): {statistics.median(times) * 1e3:.1f} ms/step"
    )
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    copies = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::copy_"]
    copies.sort(key=lambda e: -e.self_cpu_time_total)
    print("biggest copies (3 steps): ms, calls, shapes")
    for event in copies[:10]:
        print(f"{event.self_cpu_time_total / 1e3:8.2f} {event.count:5d}  {event.input_shapes}")


if __name__ == "__main__":
    main()
