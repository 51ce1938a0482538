"""Timing primitives: one clock per device, and the summary statistics every row reports.

On CUDA a stage is bracketed by CUDA events after a synchronisation (kernels are asynchronous, so
``perf_counter`` alone would time the launch, not the work); on CPU ``perf_counter`` is exact enough.
Peak memory is ``torch.cuda.max_memory_allocated`` after a reset at the start of the stage; on CPU
it is left blank (``None``): no allocator statistic there measures the same thing.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from ..errors import DeviceError

__all__ = ["Measurement", "stopwatch", "quantile", "spread", "check_device"]


def check_device(device: str | torch.device) -> torch.device:
    """The torch device to measure on; a clear error for CUDA on a machine without a GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:  # torch's message lists dozens of device types
        raise DeviceError(f"device {device!r} is not a device torch knows ({err}); use cpu or cuda (cuda:N).") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"--device {device} was requested but torch sees no CUDA GPU here (torch {torch.__version__}, "
            "cuda build: " + str(torch.version.cuda) + "). Measure on CPU with --device cpu, or run "
            "`make bench-gpu` on a machine with a GPU."
        )
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not supported for latency; use cpu or cuda.")
    return dev


@dataclass
class Measurement:
    """One timed call: wall time in ms and peak device memory in MiB (None on CPU)."""

    ms: float = math.nan
    peak_mem_mb: float | None = None


@contextmanager
def stopwatch(device: torch.device) -> Iterator[Measurement]:
    """``with stopwatch(dev) as m: work()`` -> ``m.ms``, ``m.peak_mem_mb`` once the block exits."""
    result = Measurement()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield result
        end.record()
        torch.cuda.synchronize(device)
        result.ms = start.elapsed_time(end)
        result.peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        t0 = time.perf_counter()
        yield result
        result.ms = (time.perf_counter() - t0) * 1e3


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spread(values: Sequence[float]) -> dict[str, float]:
    """median, p10, p90 of a list of times (ms)."""
    return {"median_ms": quantile(values, 0.5), "p10_ms": quantile(values, 0.1), "p90_ms": quantile(values, 0.9)}
