"""Run examples/rpg_autoencoder.py in this process and send it a signal at a chosen point.

    python tests/fault_driver.py PHASE N SIGNAL -- EXAMPLE_ARGS...

PHASE says where the N-th occurrence (counted in this process) gets the signal:
    step        inside the N-th training step, after backward and before the optimizer update
    validation  inside the N-th validation, after its first chunk of tiles
    checkpoint  inside the N-th checkpoint write, half of the file's bytes on disk
SIGNAL is KILL (no cleanup at all, like an OOM kill or a power cut) or TERM (a clean stop).
Used by tests/test_faults.py; the example itself carries no test hooks.
"""
import io
import os
import signal
import sys
from pathlib import Path

import torch

# The example's command line and its kit, rpgkit, live in examples/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import rpg_autoencoder  # noqa: E402
import rpgkit.training.checkpoint as checkpoint_module  # noqa: E402
import rpgkit.training.evaluation as evaluation_module  # noqa: E402
import rpgkit.training.loop as loop_module  # noqa: E402


def main() -> int:
    phase, n, signal_name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    args = sys.argv[sys.argv.index("--") + 1:]
    sig = getattr(signal, f"SIG{signal_name}")
    count = [0]

    def due() -> bool:
        count[0] += 1
        return count[0] == n

    def send():
        os.kill(os.getpid(), sig)

    if phase == "step":
        real_step = loop_module.train_step

        def step(*a, check=None, **k):
            def checked(loss):
                if check is not None:
                    check(loss)
                if due():
                    send()
            return real_step(*a, check=checked, **k)
        loop_module.train_step = step
    elif phase == "validation":
        real_edges = evaluation_module.sobel_edge_l1_sum  # once per chunk inside evaluate()

        def edges(*a, **k):
            result = real_edges(*a, **k)
            if due():
                send()
            return result
        evaluation_module.sobel_edge_l1_sum = edges
    elif phase == "checkpoint":
        class TorchSavingHalf:
            """torch, as the checkpoint module sees it, whose N-th save is cut by the signal."""
            def __getattr__(self, name):
                return getattr(torch, name)

            def save(self, obj, f):
                if not due():
                    return torch.save(obj, f)
                if sig != signal.SIGKILL:  # a clean stop lets the write finish
                    send()
                    return torch.save(obj, f)
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                data = buffer.getvalue()
                f.write(data[:len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                send()
        checkpoint_module.torch = TorchSavingHalf()
    else:
        raise SystemExit(f"unknown PHASE {phase!r}: step, validation or checkpoint")
    return rpg_autoencoder.main(args)


if __name__ == "__main__":
    sys.exit(main())
