"""Where an evaluation's time goes: wall and CPU seconds of each phase of one evaluation.

Runs the same API calls as ``spikemask evaluate`` (imports, load the run, load the session,
each activity task, features and behaviour decoders) and prints one line per phase. CPU
seconds are the figure to compare on a shared machine; ``--threads 1`` keeps torch's
threads from spinning against the neighbours.

    python scripts/benchmark_evaluation.py RUN DATA --threads 1
    python scripts/benchmark_evaluation.py RUN DATA --tasks co-smoothing --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time

ACTIVITY = ("co-smoothing", "forward-prediction", "inter-region", "intra-region")
LABELS = ("choice", "reward", "behavior")


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def mark(self, what: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        print(f"{what:<40} {wall - self.wall:8.2f} s wall {cpu - self.cpu:8.2f} s CPU", flush=True)
        self.wall, self.cpu = wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder")
    parser.add_argument("data", help="dataset folder of one session the run knows")
    parser.add_argument("--tasks", nargs="+", default=[*ACTIVITY, *LABELS])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    clock = _Clock()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    clock.mark("import torch")
    from spikemask.api import load_run
    from spikemask.data.loading import load_session
    from spikemask.evaluation.behavior import decode_behaviors
    from spikemask.evaluation.evaluate import ModelPredictor
    from spikemask.evaluation.tasks import plan_task, score_task

    clock.mark("import spikemask evaluation")
    print(f"lightning imported: {'lightning' in sys.modules}; torch threads: "
          f"{torch.get_num_threads()}")  # fmt: skip
    model = load_run(args.run, device=args.device)
    clock.mark(f"load_run ({model.device})")
    session = load_session(args.data)
    clock.mark(f"load_session ({session.num_units} units)")
    predictor = ModelPredictor(model)
    test = session.split("test")
    for task in (t for t in args.tasks if t in ACTIVITY):
        plan = plan_task(session, task)
        rates = predictor.activity_rates(session, plan, "test")
        result = score_task(plan, rates, test.spikes, unit_regions=session.unit_regions)
        clock.mark(f"{task} ({plan.num_variants} variants, bps {result.bps:.5f})")
    labels = tuple(t for t in args.tasks if t in ("choice", "reward"))
    if labels or "behavior" in args.tasks:
        train_features = predictor.features(session, "train")
        test_features = predictor.features(session, "test")
        clock.mark("features")
        decode_behaviors(
            train_features,
            test_features,
            session.split("train"),
            test,
            labels=labels,
            per_bin="behavior" in args.tasks,
        )
        clock.mark("decoders")


if __name__ == "__main__":
    main()
