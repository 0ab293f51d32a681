"""Write the optimizer and schedule recipe files from the registries (so their defaults cannot drift):
    python -m pretrain.tools.recipe_defaults            # (re)write recipes/optim/*.yaml and recipes/schedule/*.yaml
    python -m pretrain.tools.recipe_defaults --check    # write nothing; exit 1 listing the files that differ

`recipes/optim/<name>.yaml` for every registered optimizer and `recipes/schedule/<name>.yaml` for every registered
schedule: a header comment (the name, the spec's paper and notes), `name: <name>`, then every default in the spec's
order. Hydra needs every key present so that `optim.lr=3e-4` style overrides work. A default is declared once: in
the optimizer class's signature (`OptimizerSpec.of_class`), on the spec (torch's and the official packages'
optimizers, `optim/torch_optimizers.py`) or in the schedule factory's signature (`ScheduleSpec`); a note on the
spec's `notes`. Recipe files that no name is registered for are left alone.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

import yaml

from ..config import RECIPES_DIR

WIDTH = 118
COMMAND = "python -m pretrain.tools.recipe_defaults"


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent="# ", subsequent_indent="# ", break_long_words=False,
                         break_on_hyphens=False)


def _yaml_value(value) -> str:
    """One value as YAML flow text of the same YAML type (a tuple as a list, 1e-08 as 1.0e-08, None as null)."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text[:-len("...")].strip() if text.endswith("\n...") else text


def declared_in(spec) -> str:
    """Where the spec's defaults are declared: a class's signature (`of_class`, a schedule class) or the spec."""
    cls = getattr(spec, "cls", spec.factory)  # a ScheduleSpec has no `cls`: its factory is the class
    if isinstance(cls, type):
        return f"the signature of {cls.__module__}.{cls.__qualname__}"
    return f"the spec in {spec.factory.__module__}"


def render(name: str, spec) -> str:
    """The text of `recipes/<group>/<name>.yaml` for a registered spec."""
    source = getattr(spec, "source", "here")
    title = f"{name}: {spec.paper}" + (f" ({source})" if source != "here" else "") + "."
    notes = spec.notes.strip()
    lines = _comment(f"{title} {notes}" + ("." if notes and not notes.endswith(".") else ""))
    lines += _comment(f"Generated from the registry by `{COMMAND}`: edit the defaults in {declared_in(spec)} and "
                      "the notes on the spec, not here.")
    lines.append(f"name: {name}")
    lines += [f"{key}: {_yaml_value(value)}" for key, value in spec.defaults.items()]
    return "\n".join(lines) + "\n"


def expected_files(recipes_dir: str = RECIPES_DIR) -> dict[str, str]:
    """{path: text} of every generated recipe file."""
    from pretrain.optim import OPTIMIZERS
    from pretrain.schedules import SCHEDULES
    out = {}
    for group, registry in (("optim", OPTIMIZERS), ("schedule", SCHEDULES)):
        for name, spec in registry.items():
            out[os.path.join(recipes_dir, group, f"{name}.yaml")] = render(name, spec)
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def check(recipes_dir: str = RECIPES_DIR) -> list[str]:
    """The generated recipe files that are missing or differ from what `write` would write (nothing written)."""
    return [path for path, text in expected_files(recipes_dir).items() if _read(path) != text]


def write(recipes_dir: str = RECIPES_DIR) -> list[str]:
    """Write every generated recipe file that differs; returns the paths written."""
    written = []
    for path, text in expected_files(recipes_dir).items():
        if _read(path) != text:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="Write recipes/optim/*.yaml and recipes/schedule/*.yaml from the registries.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    parser.add_argument("--recipes", default=RECIPES_DIR, help="the recipes directory (default: the repo's)")
    args = parser.parse_args(argv)
    top = os.path.dirname(os.path.abspath(args.recipes))
    if args.check:
        stale = check(args.recipes)
        for path in stale:
            state = "differs from the registry" if os.path.exists(path) else "missing"
            print(f"{state}: {os.path.relpath(path, top)}")
        if stale:
            print(f"run `{COMMAND}` to regenerate them", file=sys.stderr)
        return 1 if stale else 0
    for path in write(args.recipes):
        print(f"wrote {os.path.relpath(path, top)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
