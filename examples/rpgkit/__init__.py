"""The RPG autoencoder's kit: everything the example needs that is not the fastinr library.

    rpgkit.data       the Dungeon Crawl tiles: loading, splits, augmentation, stream order
    rpgkit.models     encoders, decoders by name, the encoder + decoder autoencoder
    rpgkit.training   checkpoints, metrics, plots, TensorBoard, DDP setup, clean stops

examples/rpg_autoencoder.py, ablation.py, compare_runs.py and render_check.py import it from
their own folder (a script's folder is on sys.path); tests and benchmarks put examples/ on the path.
"""
