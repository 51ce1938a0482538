"""The percentile bootstrap written as weights over resampling units (numpy only).

A bootstrap resample is a vector of draw counts over the units (questions, or images); a statistic
is any function of such weights [R, U] -> [R] (a mean is ``w @ x / w.sum(1)``), so one matrix product
scores R resamples at once and several statistics scored on the *same* draws give paired intervals
(a difference or a ratio of two runs on the same questions). Units in different strata are resampled
separately, each stratum keeping its size.

Used by :mod:`hivtp.results.stats` (intervals of logged lmms-eval scores) and by
:mod:`hivtp.toy.calibrate` (the offline testbed's calibration), so it lives in the core, which
imports neither pandas nor matplotlib.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import ConfigError

__all__ = ["CHUNK", "LEVEL", "RESAMPLES", "SEED", "bootstrap", "interval", "mean_interval", "resample_weights"]

RESAMPLES = 2000  # bootstrap resamples per interval
SEED = 0  # every interval is reproducible; a paired interval uses the same draws for both runs
LEVEL = 0.95
CHUNK = 250  # resamples scored at once: memory is CHUNK x units floats


def resample_weights(strata: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Draw counts [resamples, U]: each stratum's units drawn with replacement, as many as it holds."""
    units = len(strata)
    weights = np.zeros((resamples, units))
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)  # [m]
        draws = rng.integers(0, len(members), size=(resamples, len(members)))  # [R, m] positions in members
        flat = draws + len(members) * np.arange(resamples)[:, None]  # one bincount for all resamples
        counts = np.bincount(flat.ravel(), minlength=resamples * len(members)).reshape(resamples, len(members))
        weights[:, members] = counts
    return weights


def bootstrap(statistics: list[Callable[[np.ndarray], np.ndarray]], strata: np.ndarray,
              resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[len(statistics), resamples]: every statistic scored on the SAME resamples (chunked)."""
    if resamples < 1:
        raise ConfigError(f"resamples must be >= 1, got {resamples}.")
    rng = np.random.default_rng(seed)
    out = np.empty((len(statistics), resamples))
    for start in range(0, resamples, CHUNK):
        w = resample_weights(strata, min(CHUNK, resamples - start), rng)
        for i, f in enumerate(statistics):
            out[i, start:start + len(w)] = f(w)
    return out


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values."""
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}.")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_interval(values, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` (one per unit) with its percentile bootstrap interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ConfigError("mean_interval needs at least one value.")
    (means,) = bootstrap([lambda w: (w @ x) / w.sum(axis=1)], np.zeros(len(x), dtype=int), resamples, seed)
    return (float(x.mean()), *interval(means))
