"""One run of the example from its config: data, model and optimizer set up or restored from a
checkpoint, the training loop with validations and checkpoints, the final pictures and summary.
The test tiles are scored once, when the run has finished (never during it), with the references.

`run_training` returns the process's exit code: 0 finished, EXIT_INTERRUPTED (Ctrl-C, SIGTERM;
the checkpoint is saved), EXIT_DIVERGED (a non-finite loss, gradient or validation metric).
"""
import hashlib
import math
import sys
import time
from pathlib import Path

import torch

import fastinr
from rpgkit.config import (SHAPE, VALIDATIONS_PER_RUN, decoder_backend, describe_run,
                           per_image_batch_norm, precision_of)
from rpgkit.data import load_tiles_uint8, split_indices
from rpgkit.models import build_autoencoder
from rpgkit.training.atomic import remove_temporaries, write_json
from rpgkit.training.checkpoint import rng_states, save_checkpoint, set_rng_states
from rpgkit.training.divergence import Diverged, nonfinite_report
from rpgkit.training.evaluation import collapse_message, evaluate, sample_pictures, save_pictures
from rpgkit.training.interrupt import GracefulStop
from rpgkit.training.metrics import is_collapsed, reconstruction_spread, write_csv
from rpgkit.training.plots import plot_losses
from rpgkit.training.references import cached_pca, reference_scores
from rpgkit.training.step import (batch_for_step, make_optimizer, make_scheduler, set_seeds,
                                  subpixel_jitter, train_step)
from rpgkit.training.tensorboard import open_tensorboard

METRIC_COLUMNS = ["images", "step", "train_l1", "val_l1", "val_psnr", "val_edge_l1", "val_spread",
                  "lr",
                  "images_per_second", "elapsed_s"]
EXIT_INTERRUPTED = 130
EXIT_DIVERGED = 3  # a non-finite loss, gradient or validation metric stopped the run


def run_training(parser, cfg, device, dist, checkpoint, tqdm) -> int:
    """Train the run `cfg` describes (continuing `checkpoint` if one is given) until it finishes,
    is stopped or diverges; the process's exit code. `parser.error` reports bad data or settings."""
    training = Training(parser, cfg, device, dist, checkpoint, tqdm)
    training.loop()
    training.finish()
    return {"finished": 0, "interrupted": EXIT_INTERRUPTED, "diverged": EXIT_DIVERGED}[training.status]


def load_data(cfg: dict, dist, parser):
    """(train, val, test) uint8 tiles on the CPU by the run's --split, and a fingerprint of the
    whole tile set."""
    def load():
        try:
            tiles = load_tiles_uint8(cfg["tiles"])
            return tiles, split_indices(tiles, cfg["split"])
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}")
    if dist.is_main:  # builds the caches once; the other ranks then read them
        tiles, split = load()
    dist.barrier()
    if not dist.is_main:
        tiles, split = load()
    fingerprint = hashlib.sha256(tiles.numpy().tobytes()).hexdigest()
    train, val, test = (tiles[part] for part in split)
    if len(train) == 0 or len(val) < 1:
        parser.error(f"need at least 2 tiles for a training and a validation set, got {len(tiles)}")
    return train, val, test, fingerprint


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


class Training:
    """One run of the example: its state (model, optimizer, data order, history) and the stages
    that use it: set up or restore, the training loop with validations and checkpoints, the
    final pictures and summary. Everything a checkpoint holds lives on `self`."""

    def __init__(self, parser, cfg, device, dist, checkpoint, tqdm):
        self.cfg, self.device, self.dist, self.tqdm = cfg, device, dist, tqdm
        self.output = Path(cfg["output"])
        set_seeds(cfg["seed"], cfg["deterministic"], device)
        # A saturated sigmoid (the seed's collapse) drives values into the denormal range, where
        # CPU float math is ~5x slower; flushing them to zero changes nothing measurable.
        torch.set_flush_denormal(True)
        train_cpu, val_cpu, self.test_cpu, self.fingerprint = load_data(cfg, dist, parser)
        if checkpoint is not None and checkpoint["data_fingerprint"] != self.fingerprint:
            parser.error("--resume: the tiles differ from the ones the checkpoint was trained on "
                         "(same sources and sheets needed)")
        self.n_train, self.n_val, self.n_test = len(train_cpu), len(val_cpu), len(self.test_cpu)
        if cfg["batch_size"] > self.n_train:
            parser.error(f"--batch-size {cfg['batch_size']} is larger than the {self.n_train} "
                         "training tiles")
        self.train_tiles, self.val_tiles = train_cpu.to(device), val_cpu.to(device)
        self.target_spread = reconstruction_spread(val_cpu.float() / 255) if len(val_cpu) > 1 else 0.0
        if dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            remove_temporaries(self.output)  # half-written files of a killed run

        try:
            self.model = build_autoencoder(cfg).to(device)
        except FileNotFoundError as err:  # resnet18 ImageNet weights not on disk
            raise SystemExit(f"error: {err}")
        self.backend = decoder_backend(cfg, device)
        self.precision = precision_of(cfg, device)
        self.train_model = self.model
        if dist.enabled:
            # Each process's BatchNorm running statistics see every image of the global batch.
            fastinr.sync_running_stats(self.model)
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.batch = batch = cfg["batch_size"]
        self.total_steps = -(-cfg["max_inputs"] // batch)
        self.val_steps = (max(1, round(cfg["val_every"] / batch)) if cfg["val_every"]
                          else max(1, self.total_steps // VALIDATIONS_PER_RUN))
        self.ckpt_steps = (max(1, round(cfg["checkpoint_every"] / batch)) if cfg["checkpoint_every"]
                           else self.val_steps)
        self.optimizer = make_optimizer(self.model, cfg["lr"], device)
        self.scheduler = make_scheduler(self.optimizer, self.total_steps, -(-cfg["warmup"] // batch))
        self.generator = torch.Generator().manual_seed(cfg["seed"] + 1)  # augmentation
        # Sum of per-rank batch losses and their count since the last validation (over all ranks
        # when saved, so a resumed run reports the same interval mean).
        self.loss_acc = torch.zeros(2, dtype=torch.float64, device=device)
        self.step, self.history, self.train_seconds, self.collapse = 0, [], 0.0, None
        self.divergence = None  # what went non-finite, once the run has diverged
        self.checkpoint_step = None if checkpoint is None else checkpoint["step"]
        if checkpoint is not None:
            try:
                self.restore(checkpoint)
            except (KeyError, RuntimeError, ValueError) as err:
                parser.error(f"--resume: {self.output / 'checkpoint.pt'} does not fit the run its "
                             f"settings describe ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:300]})"
                             "; start a new run with another --output")
        self.say = tqdm.write if dist.is_main else (lambda *a, **k: None)
        if dist.is_main:
            self.say(describe_run(cfg, self.model, self.backend, device, dist, self.n_train,
                                  self.n_val, self.n_test, self.total_steps, self.step))
        # Rank 0 alone; a resumed run drops the events written after its checkpoint.
        resume_images = self.step * batch if checkpoint is not None else None
        self.board = (open_tensorboard(self.output, resume_images, cfg, self.say)
                      if dist.is_main and cfg.get("tensorboard", True) else None)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    @property
    def status(self) -> str:
        if self.divergence:
            return "diverged"
        return "finished" if self.finished else "interrupted"

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_states(checkpoint["rng"])
        self.generator.set_state(checkpoint["augment_rng"])
        self.step, self.history = checkpoint["step"], checkpoint["history"]
        self.train_seconds, self.collapse = checkpoint["train_seconds"], checkpoint["collapse"]
        if self.dist.is_main:
            self.loss_acc.copy_(checkpoint["loss_acc"])

    def validate(self, interval_seconds: float, interval_images: int):
        """Validation row (main process; None elsewhere): metrics.csv, loss.png, collapse check."""
        totals = self.dist.all_reduce_sum(self.loss_acc.clone())
        self.loss_acc.zero_()
        if not self.dist.is_main:
            return None
        row = {"images": self.step * self.batch, "step": self.step,
               "train_l1": (totals[0] / totals[1]).item() if totals[1] > 0 else None,
               **evaluate(self.model, self.val_tiles, precision=self.precision),
               "lr": self.optimizer.param_groups[0]["lr"],
               "images_per_second": (interval_images / interval_seconds if interval_seconds
                                     else None),
               "elapsed_s": self.train_seconds}
        self.history.append(row)
        # The state of the latest validation (a fresh model is not judged); said when it starts.
        was_collapsed = self.collapse is not None
        self.collapse = (collapse_message(self.cfg, row["val_spread"], self.target_spread)
                         if self.step > 0 and row["val_spread"] is not None
                         and is_collapsed(row["val_spread"], self.target_spread) else None)
        if self.collapse and not was_collapsed:
            self.say(self.collapse)
        write_csv(self.output / "metrics.csv", self.history, METRIC_COLUMNS)
        plot_losses(self.history, self.output / "loss.png", title="RPG tiles autoencoder")
        if self.board:
            self.board.log_row(row)
            # 8 tiles and their 4x renders: about a third of the validation's time (hidden 256, CPU)
            self.board.log_reconstructions(*sample_pictures(self.model, self.val_tiles),
                                           step=row["images"])
            self.board.flush()  # before the checkpoint that follows, so a kill keeps both
        return row

    def check_finite(self, loss: torch.Tensor) -> None:
        """Raise Diverged (on every rank) if the loss or a gradient is non-finite."""
        report = nonfinite_report(loss, self.model.named_parameters())
        if self.dist.any(report is not None, self.device):
            raise Diverged(f"at step {self.step + 1}, "
                           + (report or "another process's loss or gradients are non-finite"))

    def check_validation(self, row) -> None:
        """Raise Diverged (on every rank) if the main process validated a non-finite L1."""
        bad = row is not None and not math.isfinite(row["val_l1"])
        if self.dist.any(bad, self.device):
            raise Diverged(f"after step {self.step}, the validation L1 is "
                           + (f"{row['val_l1']}" if row else "non-finite"))

    def write_checkpoint(self) -> None:
        totals = self.dist.all_reduce_sum(self.loss_acc.clone())
        if self.dist.is_main:
            save_checkpoint(self.output / "checkpoint.pt", {
                "config": self.cfg, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_states(), "augment_rng": self.generator.get_state(),
                "loss_acc": totals.cpu(), "history": self.history,
                "train_seconds": self.train_seconds, "collapse": self.collapse,
                "data_fingerprint": self.fingerprint})
        self.checkpoint_step = self.step
        self.dist.barrier()

    def loop(self) -> None:
        """Train to the budget or to Ctrl-C / SIGTERM, validating and checkpointing on schedule."""
        cfg, dist, batch = self.cfg, self.dist, self.batch
        if self.step == 0:
            self.validate(0.0, 0)
        last = self.history[-1] if self.history else {}
        bar = self.tqdm(total=self.total_steps * batch, initial=self.step * batch, unit="img",
                        unit_scale=True, dynamic_ncols=True, disable=cfg["quiet"] or not dist.is_main,
                        smoothing=0.05)
        bar.set_postfix(val_l1=_fmt(last.get("val_l1")))
        with GracefulStop() as stop:
            try:
                self.train(stop, bar, last)
            except Diverged as err:
                kept = self.output / "checkpoint.pt"
                kept = (f"{kept} holds step {self.checkpoint_step}, the last checkpoint written"
                        if self.checkpoint_step is not None else "no checkpoint was written")
                self.divergence = (
                    f"training diverged {err} ({self.step * batch:,} images trained, lr "
                    f"{self.optimizer.param_groups[0]['lr']:.3g}); {kept}. Lower --lr, or look "
                    "for bad tiles")
            self.stop_signal = stop.signal_name
        bar.close()

    def train(self, stop, bar, last) -> None:
        """The steps with their validations and checkpoints, to the budget or a stop request."""
        cfg, dist, batch = self.cfg, self.dist, self.batch
        # Training time only (validation, pictures and checkpoints excluded) for images/s.
        segment_start, val_seconds, val_start_step = time.perf_counter(), 0.0, self.step
        while self.step < self.total_steps:
            images = batch_for_step(self.step, cfg, self.train_tiles, self.generator, dist.rank,
                                    dist.world_size)
            jitter = subpixel_jitter(self.step, cfg, self.device) if cfg["subpixel"] else None
            loss = train_step(self.train_model, self.optimizer, self.scheduler, images, jitter,
                              self.precision, check=self.check_finite)
            self.loss_acc += torch.stack([loss.double(), loss.new_ones((), dtype=torch.float64)])
            self.step += 1
            step = self.step
            bar.update(batch)
            # Every rank must stop at the same step; asking the others costs a host sync, so
            # a distributed run asks every 8 steps (a single process checks every step).
            stopped = (dist.any(stop.requested, self.device)
                       if step % 8 == 0 or step == self.total_steps else False) \
                if dist.enabled else stop.requested
            due_val = step % self.val_steps == 0 or step == self.total_steps
            due_ckpt = step % self.ckpt_steps == 0 or step == self.total_steps or stopped
            if step % 25 == 0 and dist.is_main:
                bar.set_postfix(train_l1=_fmt(loss.item()), val_l1=_fmt(last.get("val_l1")))
            if due_val or due_ckpt:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds = time.perf_counter() - segment_start
                self.train_seconds += seconds
                val_seconds += seconds
                if due_val:
                    row = self.validate(val_seconds, (step - val_start_step) * batch)
                    self.check_validation(row)
                    last = row or last
                    val_seconds, val_start_step = 0.0, step
                    if dist.is_main:
                        bar.set_postfix(train_l1=_fmt(last.get("train_l1")),
                                        val_l1=_fmt(last.get("val_l1")))
                if due_ckpt:
                    self.write_checkpoint()
                segment_start = time.perf_counter()
            if stopped:
                break

    def score_test(self, images: int):
        """The finished model's test metrics (None without test tiles; TensorBoard test/... at
        the last step) and the references {"val": ..., "test": ...} (references.py)."""
        train, code_size = self.train_tiles.cpu(), self.cfg["code_size"]
        pca = cached_pca(train, code_size)
        references = {"val": reference_scores(train, self.val_tiles.cpu(), code_size, pca)}
        if not self.n_test:
            return None, {**references, "test": None}
        references["test"] = reference_scores(train, self.test_cpu, code_size, pca)
        test = {**self.refined_scores(self.test_cpu.to(self.device)), "tiles": self.n_test}
        if self.board:
            self.board.log_row({"images": images, **{f"test_{k}": v for k, v in test.items()
                                                     if k in ("l1", "psnr", "edge_l1")}})
            self.board.flush()
        return test, references

    def refined_scores(self, tiles: torch.Tensor) -> dict:
        """{"l1", "psnr", "edge_l1"} of the finished model on uint8 tiles, after --refine-steps
        of test-time refinement; with refinement also "refine_steps", "refine_lr" and
        "encoder": the same scores from the encoder's codes as they are."""
        steps, lr = self.cfg["refine_steps"], self.cfg["refine_lr"]
        scored = [evaluate(self.model, tiles, precision=self.precision, refine_steps=s,
                           refine_lr=lr) for s in ((0, steps) if steps else (0,))]
        short = [{"l1": s["val_l1"], "psnr": s["val_psnr"], "edge_l1": s["val_edge_l1"]}
                 for s in scored]
        if not steps:
            return short[0]
        return {**short[1], "refine_steps": steps, "refine_lr": lr, "encoder": short[0]}

    def finish(self) -> None:
        """Pictures, summary.json and the closing line (main process)."""
        if not self.dist.is_main:
            return
        cfg, model, output = self.cfg, self.model, self.output
        status = self.status
        if status != "diverged":  # a diverged model's pictures and statistics would be NaN
            save_pictures(model, self.val_tiles, output / "reconstructions.png",
                          cfg["refine_steps"], cfg["refine_lr"])
        final = self.history[-1]
        # The per-image BatchNorm hypothesis: the seed's eval mode (running statistics) against
        # its training mode (each image's own statistics) on the same final weights.
        bn_train = (evaluate(model, self.val_tiles, train_mode=True, precision=self.precision)
                    if per_image_batch_norm(cfg) and status != "diverged" else None)
        test, references = (self.score_test(self.step * self.batch) if status == "finished"
                            else (None, None))
        # The validation tiles refined as the test part is (the curves are the encoder's own).
        val_refined = (self.refined_scores(self.val_tiles)
                       if status == "finished" and cfg["refine_steps"] else None)
        summary = {
            "status": status, "divergence": self.divergence,
            "images": self.step * self.batch, "steps": self.step,
            "val_l1": final["val_l1"], "val_psnr": final["val_psnr"],
            "val_edge_l1": final.get("val_edge_l1"),  # absent in older checkpoints
            "val_l1_bn_train_mode": bn_train and bn_train["val_l1"],
            "val_psnr_bn_train_mode": bn_train and bn_train["val_psnr"],
            "decoder_macs_per_pixel": float(model.decoder.macs_per_pixel(SHAPE[1:])),
            "val_spread": final["val_spread"], "val_tiles_spread": self.target_spread,
            "val_at_images": final["images"],
            "val_refined": val_refined, "test": test, "references": references,
            "collapsed": self.collapse is not None, "collapse_message": self.collapse,
            "images_per_second": (self.step * self.batch / self.train_seconds
                                  if self.train_seconds else None),
            "train_seconds": self.train_seconds, "device": str(self.device), "backend": self.backend,
            "world_size": self.dist.world_size,
            "tiles": {"train": self.n_train, "val": self.n_val, "test": self.n_test,
                      "split": cfg["split"], "fingerprint": self.fingerprint},
            "torch": torch.__version__, "config": cfg,
        }
        write_json(output / "summary.json", summary)
        if status == "diverged":
            print(f"error: {self.divergence}; summary in {output / 'summary.json'}",
                  file=sys.stderr)
        elif status == "interrupted":
            self.say(f"stopped by {self.stop_signal} at {self.step * self.batch:,} images; "
                     f"checkpoint saved. Continue with: --output {output} --resume")
        else:
            self.say(f"done: validation L1 {final['val_l1']:.4f}, PSNR {final['val_psnr']:.2f} dB, "
                     f"{summary['images_per_second']:.1f} images/s; outputs in {output}")
            if val_refined is not None:
                self.say(f"validation with codes refined by {cfg['refine_steps']} steps: L1 "
                         f"{val_refined['l1']:.4f}, PSNR {val_refined['psnr']:.2f} dB")
            if test is not None:
                refined = (f", codes refined by {cfg['refine_steps']} steps" if cfg["refine_steps"]
                           else "")
                self.say(f"test ({self.n_test} tiles, scored once{refined}): L1 {test['l1']:.4f}, "
                         f"PSNR {test['psnr']:.2f} dB; references "
                         + ", ".join(f"{name} {r['l1']:.4f}"
                                     for name, r in references["test"].items()))
        if self.collapse:
            self.say(self.collapse)
        if self.board:
            self.board.close()

