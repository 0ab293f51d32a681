"""The README's tables come from the registries (no drift), every registered name has a recipe file with its
defaults, and the command-line tools run."""
import os

import yaml

from helpers import ROOT
from pretrain.optim import OPTIMIZERS
from pretrain.schedules import SCHEDULES
from pretrain.tools.optim_table import optimizer_table, schedule_table


def _between(text, tag):
    start, end = f"<!-- {tag} -->\n", f"\n<!-- /{tag} -->"
    return text[text.index(start) + len(start):text.index(end)]


def test_readme_tables_match_the_registries():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert _between(readme, "optimizers") == optimizer_table()
    assert _between(readme, "schedules") == schedule_table()


def test_every_registered_name_has_a_recipe_file_with_its_defaults():
    for group, registry in (("optim", OPTIMIZERS), ("schedule", SCHEDULES)):
        for name, spec in registry.items():
            data = yaml.safe_load(open(os.path.join(ROOT, "recipes", group, f"{name}.yaml")))
            assert data.pop("name") == name
            expected = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.defaults.items()}
            assert data == expected, (group, name)


def test_recipe_files_are_the_generated_ones():
    """recipes/optim and recipes/schedule are written by `python -m pretrain.tools.recipe_defaults`."""
    from pretrain.tools.recipe_defaults import check
    assert check(os.path.join(ROOT, "recipes")) == [], "run `python -m pretrain.tools.recipe_defaults`"


def test_plot_schedule_from_a_recipe(tmp_path):
    from pretrain.tools.plot_schedule import main
    out = tmp_path / "s.png"
    main(["recipe=1b_wsd", "--out", str(out)])
    assert out.stat().st_size > 1000 and open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
