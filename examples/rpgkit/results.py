"""Several runs side by side: the mean ± standard deviation cells of the tables that
ablation.py, compare_runs.py and render_check.py print (runs that share a variant are its seeds),
the references table and the line on the split the runs used."""
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


def references_table(refs: dict) -> list:
    """Markdown lines of the references {"val": {name: scores}, "test": {name: scores} or None}
    (a run's summary.json "references"), validation and test side by side."""
    lines = ["References (no training; fitted on the training tiles): a variant is only "
             "interesting below all of them.", "",
             "| reference | val L1 | val PSNR dB | val Sobel-edge L1 | test L1 | test PSNR dB | "
             "test Sobel-edge L1 |", "|---|---|---|---|---|---|---|"]
    for name, val in refs["val"].items():
        test = (refs.get("test") or {}).get(name)
        cells = [f"{val['l1']:.4f}", f"{val['psnr']:.2f}", f"{val['edge_l1']:.4f}"]
        cells += ([f"{test['l1']:.4f}", f"{test['psnr']:.2f}", f"{test['edge_l1']:.4f}"]
                  if test else ["-"] * 3)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def references_of_runs(summaries) -> list:
    """references_table of the runs' summary.json "references", one table per split they used
    (labelled when there are several); [] when none has references."""
    by_split = {}
    for summary in summaries:
        if summary.get("references"):
            by_split.setdefault(summary["config"].get("split", "index"), summary["references"])
    if len(by_split) == 1:
        return references_table(next(iter(by_split.values())))
    lines = []
    for split, refs in by_split.items():
        lines += [f"On the {split} split:", ""] + references_table(refs)
    return lines


def split_line(summaries) -> list:
    """The split the runs used, with its counts (runs from before --split: the index split)."""
    splits = sorted({(s["config"].get("split", "index"), s["tiles"]["train"], s["tiles"]["val"],
                      s["tiles"].get("test")) for s in summaries}, key=str)
    said = "; ".join(f"{name} ({train:,} training, {val:,} validation, "
                     f"{'-' if test is None else f'{test:,}'} test tiles)"
                     for name, train, val, test in splits)
    warning = " (the runs differ: their scores are not comparable)" if len(splits) > 1 else ""
    return [f"Split: {said}{warning}.", ""] if splits else []
