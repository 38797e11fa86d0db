"""The README's command examples run, on small data, so the README cannot drift from the tool.

Every line of a ```-block that starts with `$ cnn ` is run, in the README's order, in one working
folder (so `cnn evaluate` finds the run `cnn train` made before it), through the real entry point
in-process (JAX stays warm). A command must exit 0, or N when its block shows `exit N` after it.
The substitutions that keep the whole README under a minute:
- `--epochs N` becomes `--epochs 1`, the commands that train (train, compare, compare-pooling) take
  `--limit 300` digits (compilation, evaluation and the figures are the same; an epoch is 5x shorter),
  and `cnn bench` times `--repeats 1 --steps 2 --warmup 0`;
- `--vs PEERS` is dropped (the peers are the optional `.[bench]` extra, not installed by the tests);
- paths under `examples/` are the repository's.
Printed output is not compared (it holds times); test_recipes.py compares the `cnn recipes` block.
"""

import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
REPO = README.parent
LIMIT = 300  # training images per run: enough for every command's output (errors, calibration, a winner)


def examples() -> list[tuple[list[str], int]]:
    """(arguments after `cnn`, expected exit code) for each `$ cnn` line, in order."""
    found, in_block = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and line.startswith("$ cnn "):
            found.append([shlex.split(line[2:], comments=True)[1:], 0])
        elif in_block and found and line.startswith("exit "):
            found[-1][1] = int(line.split()[1])
    return [(args, code) for args, code in found]


def small(args: list[str]) -> list[str]:
    out, it = [], iter(args)
    for a in it:
        if a == "--epochs":
            next(it)
            out += ["--epochs", "1"]
        elif a == "--vs":
            next(it)
        elif a.startswith("examples/"):
            out.append(str(REPO / a))
        else:
            out.append(a)
    if out[:1] == ["bench"]:
        out += ["--repeats", "1", "--steps", "2", "--warmup", "0"]
    if out[:1] in (["train"], ["compare"], ["compare-pooling"]) and "--limit" not in out:
        out += ["--limit", str(LIMIT)]
    return out


def test_readme_has_examples_of_every_command():
    commands = {args[0] for args, _ in examples()}
    for c in ("download", "datasets", "summary", "train", "evaluate", "predict", "explain", "compare",
              "compare-pooling", "bench", "recipes"):
        assert c in commands, c


def test_readme_examples_run(run_cnn, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, expected in examples():
        code, _, err = run_cnn(*small(args))
        assert (code or 0) == expected, f"cnn {' '.join(args)}: exit {code}\n{err}"
        assert "Traceback" not in err


@pytest.mark.parametrize("args, expected", [
    (["train", "--epochs", "16", "--dataset", "digits"], ["train", "--epochs", "1", "--dataset", "digits", "--limit",
                                                          "300"]),
    (["compare", "--limit", "50"], ["compare", "--limit", "50"]),
    (["bench", "--vs", "torch,keras", "--arch", "net2"], ["bench", "--arch", "net2", "--repeats", "1", "--steps",
                                                          "2", "--warmup", "0"]),
])
def test_substitutions(args, expected):
    assert small(args) == expected
