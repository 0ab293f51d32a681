"""train.py with a planted interruption, for the reliability tests:

    python interrupt.py micro STEP  overrides...   # SIGKILL inside gradient accumulation: step STEP's 2nd micro-batch
    python interrupt.py save STEP   overrides...   # SIGKILL while checkpoint STEP is written (files done, no manifest)
    python interrupt.py sigterm STEP overrides...  # SIGTERM to itself during step STEP (a scheduler's notice)
    python interrupt.py sigint STEP overrides...   # SIGINT (Ctrl-C) to itself during step STEP
    python interrupt.py nan STEPS overrides...     # the loss (so the gradient) of steps STEPS (comma list) is NaN

STEP counts optimizer steps from 1, as the metrics rows do. Exits with train.py's exit code.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))


def main(kind, at, overrides):
    from pretrain import checkpoint, step as step_module
    import train as train_py

    if kind == "micro":
        plain = step_module.LoopEngine.micro_batches

        def micro_batches(self):
            batches = plain(self)
            if self.step == int(at) - 1 and batches is not None:
                class Dying(list):
                    def __iter__(inner):
                        for i, b in enumerate(list.__iter__(inner)):
                            if i == 1:
                                os.kill(os.getpid(), signal.SIGKILL)
                            yield b
                return Dying(batches)
            return batches
        step_module.LoopEngine.micro_batches = micro_batches
    elif kind == "save":
        plain_manifest = checkpoint.write_manifest

        def write_manifest(path):
            if path.endswith(f"step_{at}.tmp"):
                os.kill(os.getpid(), signal.SIGKILL)
            plain_manifest(path)
        checkpoint.write_manifest = write_manifest
    elif kind in ("sigterm", "sigint"):
        plain_step = step_module.LoopEngine.train_step

        def train_step(self, s, factor):
            if s + 1 == int(at):
                os.kill(os.getpid(), signal.SIGTERM if kind == "sigterm" else signal.SIGINT)
            return plain_step(self, s, factor)
        step_module.LoopEngine.train_step = train_step
    elif kind == "nan":  # the instability tool's corrupted batch, with a NaN factor, at each step
        import contextlib

        from pretrain.tools.diagnose import planted_spike
        spikes = contextlib.ExitStack()
        for s in str(at).split(","):
            spikes.enter_context(planted_spike(int(s) - 1, float("nan")))
        with spikes:
            return train_py.main(overrides)
    return train_py.main(overrides)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
