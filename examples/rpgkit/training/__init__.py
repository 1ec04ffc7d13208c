"""Training helpers for the examples: checkpoints, metrics, plots, TensorBoard, DDP setup, clean
stops, divergence."""
from rpgkit.training.atomic import atomic_write, json_safe, remove_temporaries, write_json
from rpgkit.training.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, load_checkpoint,
                                         previous_checkpoint, rng_states, save_checkpoint,
                                         set_rng_states)
from rpgkit.training.distributed import Distributed, init_distributed
from rpgkit.training.divergence import Diverged, nonfinite_report
from rpgkit.training.interrupt import GracefulStop
from rpgkit.training.metrics import (COLLAPSE_RATIO, is_collapsed, nearest_render_l1_sum,
                                      psnr_from_mse, reconstruction_spread, sobel_edge_l1_sum,
                                      write_csv)
from rpgkit.training.plots import plot_losses, plot_reconstructions, plot_renders
from rpgkit.training.tensorboard import TensorBoardLog, metric_tag, open_tensorboard

__all__ = ["CHECKPOINT_FORMAT", "COLLAPSE_RATIO", "CheckpointError", "Distributed", "Diverged",
           "GracefulStop", "TensorBoardLog", "atomic_write", "init_distributed", "is_collapsed",
           "json_safe", "load_checkpoint", "metric_tag", "nearest_render_l1_sum",
           "nonfinite_report", "open_tensorboard", "plot_losses", "plot_reconstructions",
           "plot_renders", "previous_checkpoint", "psnr_from_mse", "reconstruction_spread",
           "remove_temporaries", "rng_states", "save_checkpoint", "set_rng_states",
           "sobel_edge_l1_sum", "write_csv", "write_json"]
