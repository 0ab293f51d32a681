"""The optimizer and schedule tables of the README, from the registries (so they cannot drift):
    python -m pretrain.tools.optim_table            # print them
    python -m pretrain.tools.optim_table --write    # rewrite them in README.md (between the table markers)
"""
from __future__ import annotations

import os
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                      "README.md")


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def optimizer_table() -> str:
    from pretrain.optim import OPTIMIZERS
    lines = ["| name | paper | from | defaults | state per parameter | notes |", "|---|---|---|---|---|---|"]
    for name, s in OPTIMIZERS.items():
        defaults = ", ".join(f"{k}={_fmt(v)}" for k, v in s.defaults.items())
        lines.append(f"| `{name}` | {s.paper} | {s.source} | {defaults} | {s.state} | {s.notes} |")
    return "\n".join(lines)


def schedule_table() -> str:
    from pretrain.schedules import SCHEDULES
    lines = ["| name | paper | keywords (defaults) | notes |", "|---|---|---|---|"]
    for name, s in SCHEDULES.items():
        kw = ", ".join(f"{k}={_fmt(v)}" for k, v in s.defaults.items())
        lines.append(f"| `{name}` | {s.paper} | {kw} | {s.notes} |")
    return "\n".join(lines)


def write_readme(path: str = README) -> None:
    """Replace the text between `<!-- optimizers -->` / `<!-- schedules -->` and their closing markers."""
    text = open(path).read()
    for tag, table in (("optimizers", optimizer_table()), ("schedules", schedule_table())):
        start, end = f"<!-- {tag} -->\n", f"\n<!-- /{tag} -->"
        text = text[:text.index(start) + len(start)] + table + text[text.index(end):]
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--write"]:
        write_readme()
        return 0
    print(optimizer_table())
    print()
    print(schedule_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
