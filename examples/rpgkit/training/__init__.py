"""Training for the examples: the step, validation and the run's loop (step, evaluation, loop),
and their helpers: checkpoints, metrics, plots, TensorBoard, DDP setup, clean stops, divergence."""
from rpgkit.training.atomic import atomic_write, json_safe, remove_temporaries, write_json
from rpgkit.training.budget import CPU_TRAIN_SECONDS, timed_budget, training_rate
from rpgkit.training.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, load_checkpoint,
                                         previous_checkpoint, rng_states, save_checkpoint,
                                         set_rng_states)
from rpgkit.training.distributed import Distributed, init_distributed
from rpgkit.training.divergence import Diverged, nonfinite_report
from rpgkit.training.evaluation import collapse_message, evaluate, sample_pictures, save_pictures
from rpgkit.training.interrupt import GracefulStop
from rpgkit.training.loop import EXIT_DIVERGED, EXIT_INTERRUPTED, Training, run_training
from rpgkit.training.metrics import (COLLAPSE_RATIO, is_collapsed, nearest_render_l1_sum,
                                      psnr_from_mse, reconstruction_spread, sobel_edge_l1_sum,
                                      write_csv)
from rpgkit.training.plots import plot_curves, plot_losses, plot_reconstructions, plot_renders
from rpgkit.training.step import (batch_for_step, make_optimizer, make_scheduler, set_seeds,
                                  subpixel_jitter, train_step)
from rpgkit.training.tensorboard import TensorBoardLog, metric_tag, open_tensorboard

__all__ = ["CHECKPOINT_FORMAT", "COLLAPSE_RATIO", "CPU_TRAIN_SECONDS", "CheckpointError", "Distributed", "Diverged",
           "EXIT_DIVERGED", "EXIT_INTERRUPTED", "GracefulStop", "TensorBoardLog", "Training",
           "atomic_write", "batch_for_step", "collapse_message", "evaluate", "init_distributed",
           "is_collapsed", "json_safe", "load_checkpoint", "make_optimizer", "make_scheduler",
           "metric_tag", "nearest_render_l1_sum", "nonfinite_report", "open_tensorboard",
           "plot_curves", "plot_losses", "plot_reconstructions", "plot_renders",
           "previous_checkpoint", "psnr_from_mse", "reconstruction_spread", "remove_temporaries",
           "rng_states", "run_training", "sample_pictures", "save_checkpoint", "save_pictures",
           "set_rng_states", "set_seeds", "sobel_edge_l1_sum", "subpixel_jitter", "timed_budget",
           "train_step", "training_rate", "write_csv", "write_json"]
