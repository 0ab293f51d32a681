"""Print the optimizer and schedule tables of the README from the registries (so they cannot drift):
    python -m pretrain.tools.optim_table
"""
from __future__ import annotations


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


def main(argv=None) -> int:
    print(optimizer_table())
    print()
    print(schedule_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
