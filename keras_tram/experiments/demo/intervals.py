"""Means over seeds, and paired differences with 95% confidence intervals.

Every method of a demo run sees the same seeds, so two methods are compared
seed by seed: the differences `a_s − b_s` have a mean and a Student-t 95%
interval, `mean ± t(0.975, n − 1) · sd / √n`. An interval that excludes 0 is
what "established" means in the demo's conclusions.

    >>> from keras_tram.experiments.demo import intervals
    >>> round(intervals.t_quantile(4), 3)
    2.776
    >>> d = intervals.paired([0.80, 0.82, 0.81], [0.78, 0.795, 0.795])
    >>> round(d["mean"], 4), d["excludes_zero"]
    (0.02, True)
"""

import math

import numpy as np

# t(0.975, df) for df = 1..30 (standard tables).
_T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_Z_975 = 1.959963984540054


def t_quantile(df):
    """The 97.5% quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"A t quantile needs at least 1 degree of freedom; got {df}.")
    if df <= len(_T_975):
        return _T_975[int(df) - 1]
    # Cornish-Fisher expansion in 1/df: within 1e-5 of the exact value beyond 30.
    z = _Z_975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def mean_std(values):
    """`{"mean", "std"}` over seeds; `std` is the sample standard deviation
    (0 for a single value)."""
    values = np.asarray(values, "float64")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std}


def paired(values, baseline):
    """The mean of `values − baseline` (seed by seed) and its 95% interval.

    Returns `{"mean", "low", "high", "excludes_zero", "seeds"}`.

    Raises:
        ValueError: for fewer than 2 pairs, or lists of different lengths.
    """
    values, baseline = np.asarray(values, "float64"), np.asarray(baseline, "float64")
    if values.shape != baseline.shape:
        raise ValueError(f"Paired values need the same seeds; got {len(values)} and "
                         f"{len(baseline)}.")
    if len(values) < 2:
        raise ValueError(
            f"A confidence interval needs at least 2 seeds; got {len(values)}."
        )
    differences = values - baseline
    mean = float(np.mean(differences))
    half = t_quantile(len(differences) - 1) * float(np.std(differences, ddof=1)) / math.sqrt(
        len(differences))
    low, high = mean - half, mean + half
    return {"mean": mean, "low": low, "high": high,
            "excludes_zero": bool(low > 0 or high < 0), "seeds": len(differences)}
