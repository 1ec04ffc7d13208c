"""Several runs side by side: the mean ± standard deviation cells of the tables that
ablation.py, compare_runs.py and render_check.py print (runs that share a variant are its seeds)."""
import statistics
from typing import Iterable, Optional, Tuple


def mean_spread(values: Iterable[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    """(mean, sample standard deviation) of the values that are not None; (None, None) if none
    are; the deviation of a single value is 0."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_spread_cell(values: Iterable[Optional[float]], digits: int) -> str:
    """A table cell "mean ± deviation" with `digits` decimals, or "-" without any value."""
    mean, spread = mean_spread(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"
