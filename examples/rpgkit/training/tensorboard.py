"""TensorBoard event files for a training run, next to its metrics.csv.

`open_tensorboard(folder, resume_step)` returns a `TensorBoardLog` writing into `folder` itself,
so a folder of runs (`runs/`, or a campaign's `<variant>/seed<k>` tree) is a TensorBoard log dir
with one run per training run. The x-axis is whatever step the caller passes (training images).

    row {"images": 640, "train_l1": 0.11, "val_l1": 0.09, "lr": 0.001, ...}
        -> scalars train/l1, val/l1, lr, ... at step 640 (`metric_tag`: the first "_" of a
           train_/val_/test_ column becomes "/"; None values are left out)
    originals, reconstructions (N, 3, H, W), renders (N, 3, sH, sW), all in [0, 1]
        -> one image: a row per picture, columns original | reconstruction | render, the first
           two enlarged (nearest neighbour) to the render's size

A resumed run appends to the same folder without duplicate or out-of-order steps: the new event
file starts with a purge at `resume_step + 1` (TensorBoard then drops every earlier-written event
past the checkpoint, e.g. a validation that ran after the last checkpoint before a kill), and
the resumed run writes those steps again. A fresh run (`resume_step=None`) purges from step 0:
leftovers of an earlier attempt that never checkpointed disappear. If the `tensorboard` package
is missing, `open_tensorboard` says so once and returns None; the caller goes on without it.
"""
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import torch

__all__ = ["TensorBoardLog", "metric_tag", "open_tensorboard"]

SPLITS = ("train", "val", "test")
EVENT_FILE_GLOB = "events.out.tfevents.*"
_missing_said = False


def metric_tag(column: str) -> str:
    """metrics.csv column -> TensorBoard tag: train_l1 -> train/l1, val_edge_l1 -> val/edge_l1;
    other names (lr, images_per_second) unchanged."""
    split, sep, rest = column.partition("_")
    return f"{split}/{rest}" if sep and split in SPLITS and rest else column


def has_event_files(folder) -> bool:
    return any(Path(folder).glob(EVENT_FILE_GLOB))


def open_tensorboard(folder, resume_step: Optional[int] = None, config: Optional[Dict] = None,
                     say: Callable[[str], None] = print) -> Optional["TensorBoardLog"]:
    """A TensorBoardLog on `folder`, or None (said once per process) without tensorboard.

    `config` is logged (`log_config`) when the run has no event files yet: at step 0 for a fresh
    run, at the resume step for a run resumed with TensorBoard on for the first time."""
    global _missing_said
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises this when the tensorboard package is absent
        if not _missing_said:
            say(f"TensorBoard logging is off: {err} (pip install tensorboard); "
                "metrics.csv and the PNGs are written as usual")
            _missing_said = True
        return None
    log = TensorBoardLog(SummaryWriter, folder, resume_step)
    if config is not None and (resume_step is None or log.is_new):
        log.log_config(config, resume_step or 0)
        log.flush()
    return log


class TensorBoardLog:
    """One run's event files. Use `open_tensorboard`, which handles a missing tensorboard."""

    def __init__(self, summary_writer, folder, resume_step: Optional[int] = None):
        if resume_step is not None and resume_step < 0:
            raise ValueError(f"resume_step must be >= 0 or None, got {resume_step}")
        self.folder = Path(folder)
        # Written before this session's writer exists: whether the run already has a config.
        self.is_new = not has_event_files(self.folder)
        purge_step = 0 if resume_step is None else resume_step + 1
        self.writer = summary_writer(log_dir=str(self.folder), purge_step=purge_step)

    def log_row(self, row: Dict, step_column: str = "images",
                exclude: Iterable[str] = ("step", "elapsed_s")) -> None:
        """Every number in `row` (a metrics.csv row) as a scalar at step row[step_column]."""
        step, skip = int(row[step_column]), {step_column, *exclude}
        for column, value in row.items():
            if column in skip or value is None or isinstance(value, (str, bool)):
                continue
            self.writer.add_scalar(metric_tag(column), float(value), step)

    def log_reconstructions(self, originals: torch.Tensor, reconstructions: torch.Tensor,
                            renders: torch.Tensor, step: int, tag: str = "reconstructions") -> None:
        self.writer.add_image(tag, reconstruction_grid(originals, reconstructions, renders), step)

    def log_config(self, config: Dict, step: int = 0) -> None:
        """The run's settings as a text table and as hparams (TensorBoard's HPARAMS tab then
        lists every run of a log dir with its settings and its val/... scalars)."""
        from torch.utils.tensorboard.summary import hparams

        rows = "\n".join(f"| {key} | {_hparam_value(value)} |" for key, value in config.items())
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + rows, step)
        values = {key: _hparam_value(value) for key, value in config.items() if value is not None}
        # Only the session's own hparams: the plugin builds the experiment (the columns and the
        # metrics) from all runs of the log dir, so runs with different settings line up.
        _, session_start, _ = hparams(values, {})
        self.writer.file_writer.add_summary(session_start, step)

    def flush(self) -> None:
        """On disk now: a run killed later keeps everything up to here."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _hparam_value(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor,
                        renders: torch.Tensor, padding: int = 2) -> torch.Tensor:
    """(3, rows, cols) in [0, 1]: per picture original | reconstruction | render on white."""
    if originals.ndim != 4 or originals.shape != reconstructions.shape or \
            renders.ndim != 4 or renders.shape[:2] != originals.shape[:2] or len(originals) == 0:
        raise ValueError(f"originals and reconstructions must be the same (N, C, H, W) and renders "
                         f"(N, C, sH, sW), N > 0; got {tuple(originals.shape)}, "
                         f"{tuple(reconstructions.shape)} and {tuple(renders.shape)}")
    height, width = renders.shape[-2:]
    scale_h, scale_w = height // originals.shape[-2], width // originals.shape[-1]
    if (scale_h * originals.shape[-2], scale_w * originals.shape[-1]) != (height, width):
        raise ValueError(f"renders {height}x{width} must be a whole multiple of the images "
                         f"{originals.shape[-2]}x{originals.shape[-1]}")

    def enlarged(images):
        return images.repeat_interleave(scale_h, -2).repeat_interleave(scale_w, -1)

    cells = torch.stack([enlarged(originals), enlarged(reconstructions), renders], dim=1)
    cells = cells.detach().float().cpu().clamp(0, 1)                   # (N, 3 columns, C, h, w)
    n, columns, channels = cells.shape[:3]
    padded = torch.nn.functional.pad(cells, (padding, 0, padding, 0), value=1.0)
    grid = padded.permute(2, 0, 3, 1, 4).reshape(channels, n * (height + padding),
                                                 columns * (width + padding))
    return torch.nn.functional.pad(grid, (0, padding, 0, padding), value=1.0)
