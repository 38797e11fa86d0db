"""The command line as its users meet it: help, choices, ranges, version, completion, file modes, --config.

Bad values are refused before any work, so these run the real entry point in-process (`run_cnn`) and
take milliseconds; the two trainings (--config rerun) are 300 digits for one epoch.
"""

import json
import os
import re
import stat
from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from cnncli import __version__
from cnncli.cli import app
from cnncli.fsutil import write_text

COMMANDS = ["download", "datasets", "summary", "train", "evaluate", "predict", "explain", "export", "serve",
            "compare-pooling", "compare", "bench", "recipes"]


def help_text(*args) -> str:
    r = CliRunner().invoke(app, [*args, "--help"])
    assert r.exit_code == 0, r.output
    return r.output


def option_help(text: str, flag: str) -> str:
    """One option's entry in --help, its wrapped lines joined."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("  -"):
            blocks.append(current)
            current = []
        current.append(line.strip())
    blocks.append(current)
    return next(" ".join(b) for b in blocks if b and b[0].split(" ")[0].split(",")[-1] == flag)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_no_type_placeholders(command):
    text = help_text(*([command] if command else []))
    assert not re.search(r"<(str|int|float|bool|path|list)\b", text), text


def test_help_lists_choices_and_real_defaults_as_written():
    train = help_text("train")
    line = lambda flag: option_help(train, flag)  # noqa: E731
    assert "[default: 10]" in line("--epochs") and "[default: 128]" in line("--batch-size")
    assert "[default: net1]" in line("--arch") and "[default: digits]" in line("--dataset")
    for flag, values in (("--precision", "[fp32|bf16|auto]"), ("--schedule", "[constant|cosine|onecycle]"),
                         ("--normalize", "[unit|standard]")):
        assert values in line(flag), line(flag)
    assert "One of: adam, rmsprop, sgd, adadelta, adagrad, adamw, nadam." in line("--optimizer")
    assert "resnet_photo" in line("--arch") and "cats_vs_dogs, digits, or an image folder" in line("--dataset")
    assert "Must be > 0." in line("--lr") and "Must be in [0, 1)." in line("--label-smoothing")
    assert "[default: no-" in line("--lookahead")  # a switch shows its default side
    # Printed as written: Rich markup would have eaten "[bench]".
    assert "pip install -e '.[bench]'" in option_help(help_text("bench"), "--vs")
    assert "[required]" in help_text("download") and "mnist, cifar10, cats_vs_dogs, digits" in help_text("download")


# Each a value users typed (#33 lists most); each refused in one line naming the option, exit 2, before
# any work. The folder holds a file `f` and a run `run` (its config.json) for the options that name one.
REJECTED = [
    (["train", "--lr", "-0.001"], "--lr must be > 0, not -0.001"),
    (["train", "--lr", "0"], "--lr must be > 0, not 0"),
    (["train", "--lr", "nan"], "--lr must be a finite number > 0, not nan"),
    (["train", "--epochs", "0"], "--epochs must be >= 1, not 0"),
    (["train", "--epochs", "-3"], "--epochs must be >= 1, not -3"),
    (["train", "--batch-size", "0"], "--batch-size must be >= 1, not 0"),
    (["train", "--limit", "0"], "--limit must be >= 1, not 0"),
    (["train", "--label-smoothing", "5"], "--label-smoothing must be in [0, 1), not 5"),
    (["train", "--ema", "1.5"], "--ema must be in [0, 1), not 1.5"),
    (["train", "--momentum", "-1"], "--momentum must be in [0, 1), not -1"),
    (["train", "--weight-decay", "-1"], "--weight-decay must be >= 0, not -1"),
    (["train", "--early-stopping", "-1"], "--early-stopping must be >= 0, not -1"),
    (["train", "--warmup-epochs", "-1"], "--warmup-epochs must be >= 0, not -1"),
    (["train", "--seed", "1.5"], "--seed: Input should be a valid integer"),  # any integer, but an integer
    (["train", "--optimizer", "adamx"], "--optimizer must be one of adam, rmsprop, sgd, adadelta, adagrad, adamw, "
                                        "nadam, not 'adamx'"),
    (["train", "--precision", "fp16"], "--precision must be one of fp32, bf16, auto, not 'fp16'"),
    (["train", "--dataset", "mnis"], "--dataset must be one of mnist, cifar10, cats_vs_dogs, digits or an image "
                                     "folder, not 'mnis'"),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent"],
     "--data-dir must be an existing folder, not '/nonexistent'"),  # not silently the cache's copy
    (["train", "--resume", "run", "--lr", "0.5", "--arch", "net2"],
     "--resume continues run with its recorded options; only --epochs may change (drop --arch, --lr)"),
    (["train", "--out", "f"], "--out f is a file; --out names the folder that holds run directories"),
    (["train", "--name", "a/b/c"], "--name must be a single folder name (no '/', no '..'), not 'a/b/c'"),
    (["train", "--name", "../../escaped"], "--name must be a single folder name (no '/', no '..'), not "),
    (["train", "--name", ".."], "--name must be a single folder name (no '/', no '..'), not '..'"),
    (["train", "--recipe", "mnist-slow"], "--recipe must be one of mnist-fast, "),
    (["evaluate", "--min-accuracy", "95"], "--min-accuracy must be in [0, 1], not 95 (did you mean 0.95?)"),
    (["evaluate", "--checkpoint", "first"], "--checkpoint must be one of best, last, not 'first'"),
    (["predict", "x.png", "--top-k", "0"], "--top-k must be >= 1, not 0"),
    (["predict", "x.png", "--invert", "maybe"], "--invert must be one of auto, yes, no, not 'maybe'"),
    (["bench", "--batch-size", "0"], "--batch-size must be >= 1, not 0"),
    (["bench", "--modes", "train,eval"], "--modes must be a comma list of train, infer, not 'train,eval'"),
    (["compare", "--dataset", "digits", "--vary", "lr=1,2", "--repeats", "0"], "--repeats must be >= 1, not 0"),
    (["compare", "--dataset", "digits", "--arch", "net2", "--vary", "lr=-0.001,0.1"],
     "--vary lr must be > 0, not -0.001"),  # the rule `train --lr` has
    (["compare", "--dataset", "digits", "--arch", "net2", "--vary", "lr=0.1,0.2", "--batch-size", "0"],
     "--batch-size must be >= 1, not 0"),
    (["compare-pooling", "--epochs", "0"], "--epochs must be >= 1, not 0"),
    (["export", "run", "--format", "pdf"], "--format must be one of onnx, stablehlo, savedmodel, tflite, not 'pdf'"),
    (["export", "run", "--checkpoint", "first"], "--checkpoint must be one of best, last, not 'first'"),
    (["export", "run", "--precision", "fp16"], "--precision must be one of fp32, bf16, not 'fp16'"),
    (["serve", "run", "--port", "0"], "--port must be in [1, 65535], not 0"),
    (["serve", "run", "--max-batch", "0"], "--max-batch must be in [1, 1024], not 0"),
    (["serve", "run", "--checkpoint", "first"], "--checkpoint must be one of best, last, not 'first'"),
    (["compare-pooling", "--datasets", "digits,nope"], "--datasets must be a comma list of mnist, "),
    (["summary", "--arch", "net1", "--input-shape", "8,8,1", "--classes", "1"], "--classes must be >= 2, not 1"),
    (["download", "imagenet"], "NAME must be one of mnist, cifar10, cats_vs_dogs, digits, not 'imagenet'"),
    (["train", "--epochs", "x"], "--epochs: "),
    (["train", "--epoch", "3"], "No such option: --epoch"),
    (["trian"], "No such command 'trian'"),
]


@pytest.mark.parametrize("args, message", REJECTED, ids=[" ".join(a) for a, _ in REJECTED])
def test_bad_values_are_one_usage_line(args, message, run_cnn, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"arch": "net2", "dataset": "digits"}))
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_cnn(*args)
    assert (code, out) == (2, "") and err.startswith("error: " + message) and err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == before and not (tmp_path.parent / "escaped").exists()  # nothing written


def test_any_integer_is_a_seed_kept_as_typed(run_cnn, tmp_path):
    for seed in (-1, 2**70, -(2**70)):
        code, out, err = run_cnn("train", "--seed", seed, "--print-config")
        assert code == 0 and json.loads(out)["seed"] == seed, err
    (tmp_path / "c.json").write_text(json.dumps({"arch": "net2", "seed": 2**70}))  # JSON keeps big ints exactly
    code, out, _ = run_cnn("train", "--config", tmp_path / "c.json", "--print-config")
    assert code == 0 and json.loads(out)["seed"] == 2**70
    (tmp_path / "c.json").write_text(json.dumps({"arch": "net2", "seed": 1.5}))
    code, _, err = run_cnn("train", "--config", tmp_path / "c.json", "--print-config")
    assert code == 2 and err == "error: --seed must be an integer, not 1.5\n"


def test_the_cli_lists_what_the_library_takes():
    from cnncli.checks import EXPORT_FORMATS
    from cnncli.export import FORMATS

    assert tuple(FORMATS) == EXPORT_FORMATS  # listed in checks.py: the CLI may not import NumPy


def test_version_everywhere(run_cnn):
    code, out, _ = run_cnn("--version")
    assert (code, out) == (0, f"cnn {__version__}\n") and version("cnncli") == __version__
    code, out, _ = run_cnn("recipes", "--json")
    assert code == 0 and json.loads(out)["cnn_version"] == __version__
    code, out, _ = run_cnn("summary", "--arch", "net2", "--dataset", "digits", "--json")
    assert code == 0 and json.loads(out)["cnn_version"] == __version__


def test_shell_completion_is_typers_and_completes_choices():
    r = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="cnn")
    assert r.exit_code == 0 and "_CNN_COMPLETE=complete_bash" in r.output
    env = {"_CNN_COMPLETE": "complete_bash", "COMP_WORDS": "cnn train --optimizer ad", "COMP_CWORD": "3"}
    r = CliRunner().invoke(app, [], env=env, prog_name="cnn")
    assert r.output.split() == ["adam", "adadelta", "adagrad", "adamw"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == mode


def test_typed_options_override_a_recipe_and_defaults_do_not(run_cnn):
    def printed(*args):
        code, out, err = run_cnn("train", *args, "--print-config")
        assert code == 0, err
        return json.loads(out)

    recipe = printed("--recipe", "mnist-fast")
    assert (recipe["epochs"], recipe["batch_size"], recipe["recipe"]) == (1, 64, "mnist-fast")  # not the defaults
    typed = printed("--recipe", "mnist-fast", "--epochs", "10", "--batch-size", "128")  # typed, though defaults
    assert (typed["epochs"], typed["batch_size"], typed["lr"]) == (10, 128, recipe["lr"])
    assert printed("--arch", "airbench94", "--dataset", "cifar10")["optimizer"] == "sgd"  # the arch's default
    assert printed()["cnn_version"] == __version__


def test_rerun_from_config_gives_the_same_first_epoch(run_cnn, tmp_path):
    args = ["--arch", "net2", "--dataset", "digits", "--limit", "300", "--epochs", "1", "--batch-size", "32"]
    code, out, err = run_cnn("train", *args, "--out", tmp_path, "--json")
    assert code == 0, err
    first = json.loads(out)
    run = tmp_path / "net2-digits"
    config = json.loads((run / "config.json").read_text())
    assert config["cnn_version"] == __version__ and first["cnn_version"] == __version__
    for f in [*run.iterdir(), *(run / "checkpoints").iterdir()]:  # shared as `open()` makes files (umask 022 here)
        assert f.is_dir() or stat.S_IMODE(f.stat().st_mode) == 0o666 & ~_umask(), f

    # --print-config shows what would run, with the typed override, and trains nothing.
    code, out, _ = run_cnn("train", "--config", run / "config.json", "--seed", "3", "--print-config")
    shown = json.loads(out)
    assert code == 0 and shown["seed"] == 3 and shown["limit"] == 300 and sorted(tmp_path.iterdir()) == [run]

    code, out, err = run_cnn("train", "--config", run / "config.json", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["run_dir"] == str(tmp_path / "net2-digits-2")
    history = [(tmp_path / d / "history.csv").read_text().splitlines()[1].split(",") for d in ("net2-digits", "net2-digits-2")]
    assert history[0][1] == history[1][1]  # the first epoch's train loss, to the digit recorded


def test_config_with_an_unknown_or_bad_value_is_one_line(run_cnn, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"arch": "net2", "learning_rate": 0.1}))
    code, _, err = run_cnn("train", "--config", tmp_path / "a.json", "--print-config")
    assert code == 2 and err == "error: unknown training option(s) in the config: learning_rate\n"
    (tmp_path / "b.json").write_text(json.dumps({"arch": "net2", "lr": -1}))
    code, _, err = run_cnn("train", "--config", tmp_path / "b.json", "--print-config")
    assert code == 2 and err == "error: --lr must be > 0, not -1\n"


def _umask() -> int:
    from cnncli.fsutil import current_umask

    return current_umask()
