"""Every recipe runs end to end, shrunken (a few hundred images, one epoch), so none can rot."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnncli.errors import CnnError
from cnncli.recipes import RECIPES, get_recipe
from cnncli.train import resolve
from cnncli.train.optim import DEFAULT_LR


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_shrunken(name, tmp_path, data_dir):
    # Test-time views off: 10 views of the 10,000 CIFAR-10 test images would take airbench94 ~2 min
    # here (they are tested in test_train.py).
    # The pretrained network at 64x64, not 224: its 256 photos' frozen layers then take seconds, not a minute.
    small = ["--image-size", "64"] if RECIPES[name]["options"].get("pretrained") else []
    r = subprocess.run([sys.executable, "-m", "cnncli.cli", "train", "--recipe", name, "--limit", "256",
                        "--epochs", "1", "--batch-size", "32", "--no-tta-flip", "--tta-shift", "0", *small,
                        "--out", str(tmp_path), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    cfg = json.loads((tmp_path / out["run_dir"].split("/")[-1] / "config.json").read_text())
    opts = RECIPES[name]["options"]
    # The recipe's options were applied, except the ones overridden on the command line.
    assert cfg["recipe"] == name and cfg["epochs"] == 1 and cfg["batch_size"] == 32
    assert all(cfg[k] == v for k, v in opts.items()
               if k not in ("epochs", "batch_size", "tta_flip", "tta_shift") and not (small and k == "image_size"))
    assert 0.0 <= out["test_accuracy"] <= 1.0


def test_recipe_options_are_valid_training_options():
    for name, r in RECIPES.items():
        cfg = resolve({"recipe": name}, r["options"])
        assert cfg.arch == r["options"]["arch"]


def test_unknown_recipe():
    with pytest.raises(CnnError, match="known: "):
        get_recipe("cifar10-99")


def test_recipes_command_table_and_json():
    from typer.testing import CliRunner

    from cnncli.cli import app

    r = CliRunner().invoke(app, ["recipes", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["recipes"] == json.loads(json.dumps(RECIPES))
    table = CliRunner().invoke(app, ["recipes"])
    assert table.exit_code == 0, table.output
    blocks = _blocks(table.output)
    assert list(blocks) == list(RECIPES)
    for name, recipe in RECIPES.items():
        # Every recipe says what it measured, where, and which split chose it (#42).
        assert blocks[name]["measured"] == recipe["expected"] and blocks[name]["machine"] == recipe["machine"]
        assert blocks[name]["chosen on"] == recipe["chosen_on"]
        assert blocks[name]["chosen on"].startswith(("validation split", "test split"))
        assert blocks[name]["options"].startswith("--arch " + recipe["options"]["arch"] + " ")
    # README's `cnn recipes` block is this command's real output, so its figures cannot drift from recipes.py.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("$ cnn recipes\n", 1)[1].split("```", 1)[0]
    assert [ln.rstrip() for ln in block.splitlines()] == [ln.rstrip() for ln in table.output.splitlines()]


def test_mnist_net1_keeps_the_seed_protocol():
    # The recipe may only add what seed 001 left open: its network, optimizer, learning rate, batch
    # and epochs must stay those of the plain seed command `cnn train --arch net1 --dataset mnist`.
    seed = resolve({"arch": "net1", "dataset": "mnist"})
    recipe = resolve({"recipe": "mnist-net1"}, RECIPES["mnist-net1"]["options"])
    for key in ("arch", "dataset", "optimizer", "batch_size", "epochs", "activation", "dropout"):
        assert getattr(recipe, key) == getattr(seed, key), key
    # The seed ran Keras' default learning rate; the recipe states it, as the peak of its schedule.
    assert seed.lr is None and recipe.lr == DEFAULT_LR["adam"] and seed.optimizer == "adam"


def test_recipes_options_column_is_a_valid_command_line():
    # The options column is meant to be pasted after `cnn train`: switches must read --x / --no-x.
    from typer.testing import CliRunner

    from cnncli.cli import app

    line = _blocks(CliRunner().invoke(app, ["recipes"]).output)["cifar10-90"]["options"]
    assert "--lookahead --val-split" in line and "--tta-flip --tta-shift" in line and " True" not in line


def _blocks(output: str) -> dict[str, dict[str, str]]:
    """`cnn recipes`'s plain output: a name line, then indented "label  text" lines."""
    blocks, name = {}, None
    for ln in output.splitlines()[1:]:
        if ln and not ln.startswith(" "):
            name = ln
            blocks[name] = {}
        elif ln.strip():
            label = "chosen on" if ln.strip().startswith("chosen on ") else ln.split()[0]
            blocks[name][label] = ln.strip()[len(label):].strip()
    return blocks


def test_recipes_with_a_time_goal_carry_it_as_a_budget():
    # A recipe may state more epochs than a slow host fits (cifar10-90's 12 need ~24 min at ~460
    # GFLOP/s, ~44 at ~200) only because `--time-budget` cuts them to the goal. A goal in seconds
    # (mnist-fast) is one epoch: nothing to cut, and timing the step would cost more than the goal.
    for name, r in RECIPES.items():
        goal = re.search(r"in (\d+) (s|min)$", r["description"])
        if goal is None:
            assert "time_budget" not in r["options"], name
        elif goal[2] == "min":
            assert r["options"].get("time_budget") == float(goal[1]), name
        else:
            assert r["options"]["epochs"] == 1 and "time_budget" not in r["options"], name


def test_every_recipe_carves_a_validation_split():
    # The split picks the best epoch and fits the calibration that lets `cnn predict` mark unsure
    # answers (#42); a recipe trained on all of train would leave predict without a threshold.
    for name, r in RECIPES.items():
        assert 0.0 < r["options"]["val_split"] < 0.5, name
        assert "calibrated on" in r["description"], name
