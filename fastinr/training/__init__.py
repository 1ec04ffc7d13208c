"""Training helpers for the examples: checkpoints, metrics, plots, TensorBoard, DDP setup, clean
stops."""
from fastinr.training.atomic import atomic_write
from fastinr.training.checkpoint import load_checkpoint, rng_states, save_checkpoint, set_rng_states
from fastinr.training.distributed import Distributed, init_distributed
from fastinr.training.interrupt import GracefulStop
from fastinr.training.metrics import (COLLAPSE_RATIO, is_collapsed, nearest_render_l1_sum,
                                      psnr_from_mse, reconstruction_spread, sobel_edge_l1_sum,
                                      write_csv)
from fastinr.training.plots import plot_losses, plot_reconstructions, plot_renders
from fastinr.training.tensorboard import TensorBoardLog, metric_tag, open_tensorboard

__all__ = ["COLLAPSE_RATIO", "Distributed", "GracefulStop", "atomic_write", "init_distributed",
           "is_collapsed", "load_checkpoint", "metric_tag", "nearest_render_l1_sum",
           "open_tensorboard", "plot_losses", "plot_reconstructions", "plot_renders",
           "psnr_from_mse", "reconstruction_spread", "rng_states", "save_checkpoint",
           "set_rng_states", "sobel_edge_l1_sum", "TensorBoardLog", "write_csv"]
