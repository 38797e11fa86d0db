"""Every recipe runs end to end, shrunken (a few hundred images, one epoch), so none can rot."""

import json
import subprocess
import sys

import pytest

from cnncli.errors import CnnError
from cnncli.recipes import RECIPES, get_recipe
from cnncli.train import resolve


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_shrunken(name, tmp_path, data_dir):
    r = subprocess.run([sys.executable, "-m", "cnncli.cli", "train", "--recipe", name, "--limit", "256",
                        "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    cfg = json.loads((tmp_path / out["run_dir"].split("/")[-1] / "config.json").read_text())
    opts = RECIPES[name]["options"]
    # The recipe's options were applied, except the ones overridden on the command line.
    assert cfg["recipe"] == name and cfg["epochs"] == 1 and cfg["batch_size"] == 32
    assert all(cfg[k] == v for k, v in opts.items() if k not in ("epochs", "batch_size"))
    assert 0.0 <= out["test_accuracy"] <= 1.0


def test_recipe_options_are_valid_training_options():
    for name, r in RECIPES.items():
        cfg = resolve({"recipe": name}, r["options"])
        assert cfg.arch == r["options"]["arch"]


def test_unknown_recipe():
    with pytest.raises(CnnError, match="known: "):
        get_recipe("cifar10-99")
