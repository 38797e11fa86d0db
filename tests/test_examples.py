"""Every script in examples/ runs as is, shrunken (CNN_EXAMPLE_SMOKE=1: a few images, 1 epoch),
so that none of them can rot; and each header states its command, what it reproduces, a result
and a runtime (measured, or marked "not yet measured")."""

import json
import os
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.sh"))

# script -> the comparison directories it must leave under CNN_OUT, and their data sets
COMPARISONS = {
    "001_pooling.sh": {"pooling": ["mnist", "cifar10"]},
    "001_optimizers.sh": {"optimizers": ["cifar10"]},
    "003_mnist_sweeps.sh": {"mlp-activation-optimizer": ["mnist"], "mlp-dropout": ["mnist"], "mlp-vs-cnn": ["mnist"]},
    "004_workshop_lenet5.sh": {"workshop-lenet5": ["mnist"]},
}


def test_every_seed_experiment_has_a_script():
    assert SCRIPTS == ["000_cats_vs_dogs.sh", *sorted(COMPARISONS)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_header_states_command_result_and_runtime(script):
    text = (EXAMPLES / script).read_text()
    head = text.split("set -euo pipefail")[0]
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert "# Command:" in head or "# Commands:" in head
    for field in ("Reproduces:", "Seed result:", "Our result:", "Runtime:", "CNN_EXAMPLE_SMOKE"):
        assert f"# {field}" in head, field
    assert "${CNN_DATA_DIR:-" in text and "${CNN_OUT:-" in text
    assert os.access(EXAMPLES / script, os.X_OK)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every script in smoke mode, two at a time: each process spends most of its time in single-threaded
    Python (imports, tracing), so the second core cuts the wall time (measured: 125 s -> 95 s on a busy
    2-core machine). Longest first, for even packing.
    The tests ask for `data_dir` first, so without the real data they skip before this runs."""
    from concurrent.futures import ThreadPoolExecutor

    data_dir = os.environ["CNN_DATA_DIR"]

    def run(script):
        out = tmp_path_factory.mktemp(script.removesuffix(".sh"))
        env = dict(os.environ, CNN_EXAMPLE_SMOKE="1", CNN_OUT=str(out), CNN_DATA_DIR=str(data_dir))
        r = subprocess.run(["bash", str(EXAMPLES / script)], capture_output=True, text=True, env=env, timeout=900)
        return script, (r, out)

    longest_first = sorted(SCRIPTS, key=lambda s: s not in ("003_mnist_sweeps.sh", "000_cats_vs_dogs.sh"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, longest_first))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_in_smoke_mode(script, data_dir, smoke_runs):
    r, tmp_path = smoke_runs[script]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    if script == "000_cats_vs_dogs.sh":
        run = tmp_path / "catsdogs"
        cfg = json.loads((run / "config.json").read_text())
        assert (cfg["arch"], cfg["epochs"], cfg["limit"]) == ("catsdogs", 1, 40)
        assert (run / "report.json").is_file() and (run / "confusion_matrix.png").is_file()
        assert "cat.4001.jpg" in r.stdout and "dog.4001.jpg" in r.stdout  # the predictions' table
        return
    for name, datasets in COMPARISONS[script].items():
        res = json.loads((tmp_path / name / "comparison.json").read_text())
        assert list(res["summary"]) == datasets
        assert all(run["epochs"] == 1 for run in res["runs"])
        assert (tmp_path / name / "comparison.png").is_file()
        for dataset in datasets:
            assert res["conclusions"][dataset] in r.stdout
