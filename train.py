#!/usr/bin/env python
"""Pretrain a GPT from a recipe.

    python train.py                                   # the tiny recipe on the embedded corpus (CPU, minutes)
    python train.py recipe=125m_cosine optim=lion optim.lr=3e-4 train.steps=200 run_dir=/tmp/run
    accelerate launch --config_file launch/ddp.yaml train.py recipe=1b_wsd
    python train.py --help                            # groups, recipes, keys
    python train.py recipe=1b_wsd --cfg job           # the composed, resolved config, without running

Exit codes (pretrain.errors): 0 done, 2 bad input (one line on stderr, nothing run, nothing in run_dir touched),
3 diverged (train.max_bad_steps non-finite steps in a row), 75 preempted (a checkpoint was saved; `resume=auto`
continues).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from pretrain.errors import EXIT_BAD_INPUT, EXIT_OK, ConfigError, RunStopped  # noqa: E402


def usage() -> str:
    """The --help text: how to call, the config groups with their files, the keys of each section."""
    import dataclasses

    from pretrain import config as C

    sections = {f.name: f.type for f in dataclasses.fields(C.RunConfig)}
    lines = ["usage: python train.py [key=value ...]          one process (Hydra override syntax)",
             "       accelerate launch [--config_file launch/<engine>.yaml] train.py [key=value ...]",
             "       python train.py [key=value ...] --cfg job  (or print_config=true): print the composed, resolved",
             "                                                  config and exit",
             "",
             "groups (pick a file with group=name, e.g. optim=lion; recipe=<name> sets several at once):"]
    lines += [f"  {g:<9} {', '.join(C.group_names(g))}" for g in C.GROUPS]
    lines += ["", "keys (override with key=value, e.g. train.steps=200 optim.lr=3e-4; defaults: recipes/train.yaml):"]
    for name, tp in sections.items():
        cls = getattr(C, tp, None) if isinstance(tp, str) else tp
        if dataclasses.is_dataclass(cls):
            lines.append(f"  {name}.{{{', '.join(f.name for f in dataclasses.fields(cls))}}}")
    lines += ["  optim.*     the chosen optimizer's hyperparameters (lr, betas, ...; recipes/optim/<name>.yaml)",
              "  schedule.*  the chosen schedule's keywords (warmup_steps or warmup_fraction, ...; recipes/schedule/)",
              "  " + ", ".join(n for n, tp in sections.items() if n not in ("model", "data", "optim", "schedule")
                              and not dataclasses.is_dataclass(getattr(C, tp, None) if isinstance(tp, str) else tp)),
              "",
              "exit codes: 0 done; 2 bad input (one line on stderr, nothing run, run_dir untouched); 3 diverged "
              "(train.max_bad_steps non-finite steps in a row); 75 preempted (checkpoint saved, resume=auto continues)"]
    return "\n".join(lines)


def split_flags(argv: list[str]) -> tuple[list[str], str | None]:
    """(overrides, request): request is "help", "config" (--cfg job / print_config=true) or None. Options other
    than these are left in the overrides, where load_config refuses them by name."""
    rest, request, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            return [], "help"
        if a in ("--cfg", "-c") or a.startswith("--cfg="):
            what = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in a else 2
            if what not in ("job", "all"):
                raise ConfigError("--cfg", f"cannot print {what!r}: train.py prints the composed recipe", ["job"],
                                  got=what)
            request = "config"
            continue
        if a.startswith("print_config="):
            value = a.split("=", 1)[1].lower()
            if value not in ("true", "false"):
                raise ConfigError("print_config", f"must be true or false, got {value!r}", ["true", "false"])
            request = "config" if value == "true" else request
        else:
            rest.append(a)
        i += 1
    return rest, request


def main(argv) -> int:
    try:
        overrides, request = split_flags(list(argv))
        if request == "help":
            print(usage())
            return EXIT_OK
        from pretrain.config import load_config
        cfg = load_config(overrides)
        if request == "config":
            from omegaconf import OmegaConf
            print(OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict())), end="")
            return EXIT_OK
        from pretrain.loop import train
        train(cfg)
    except ConfigError as e:
        print("config error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message
        return EXIT_BAD_INPUT
    except RunStopped as e:
        print(" ".join(str(e).split()), file=sys.stderr)
        return e.exit_code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
