"""The RPG autoencoder's kit: everything the example needs that is not the fastinr library.

    rpgkit.config     presets and defaults, a run's resolved config and its description
    rpgkit.data       the Dungeon Crawl tiles: loading, splits, augmentation, stream order
    rpgkit.models     encoders, decoders by name, the encoder + decoder autoencoder
    rpgkit.training   the training step, validation, the run's loop; checkpoints, metrics,
                      plots, TensorBoard, DDP setup, clean stops
    rpgkit.results    several runs side by side: mean ± standard deviation over seeds

examples/rpg_autoencoder.py, ablation.py, compare_runs.py and render_check.py import it from
their own folder (a script's folder is on sys.path); tests and benchmarks put examples/ on the path.
"""
import sys
from pathlib import Path

try:
    import fastinr  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: the library is two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
