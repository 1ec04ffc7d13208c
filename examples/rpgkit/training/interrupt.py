"""Stop a training loop cleanly on Ctrl-C (SIGINT) or SIGTERM.

Inside `GracefulStop()` the first signal only sets `.requested`; the loop checks it between
steps, writes its checkpoint and exits, so the checkpoint never holds a half-done step. A second
signal raises KeyboardInterrupt at once (the last interval checkpoint then stands). Outside the
main thread signal handlers cannot be installed and signals keep their default behaviour.
"""
import signal
import threading

__all__ = ["GracefulStop"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False
