"""Benchmarks that anyone can rerun: model quality against baselines on held-out animals."""

from spikemask.bench.quality import (
    QualityConfig,
    group_sessions,
    run_quality_benchmark,
    run_quality_seeds,
)

__all__ = ["QualityConfig", "group_sessions", "run_quality_benchmark", "run_quality_seeds"]
