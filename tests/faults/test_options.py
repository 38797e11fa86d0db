"""Options that used to be refused or ignored: any seed, a --data-dir without the files (the refusals: test_cli)."""

import json

from cnncli.data import load_dataset
from cnncli.checks import SEED_SPAN, seed_value

DIGITS = ("train", "--dataset", "digits", "--arch", "net2", "--batch-size", "64", "--epochs", "1")


def _first_loss(run) -> str:
    return (run / "history.csv").read_text().splitlines()[1].split(",")[1]  # epoch 1's train loss, as recorded


def test_any_integer_seed_trains_and_reruns_alike(run_cnn, tmp_path):
    """-1 and 2**70 train (the CLI used to refuse both); a rerun from config.json repeats the huge seed's
    first epoch to the digit, another seed does not, and a resume continues the run it recorded."""
    tiny = (*DIGITS, "--limit", "300", "--out", tmp_path)
    for name, seed in (("neg", -1), ("huge", 2**70)):
        rc, _, err = run_cnn(*tiny, "--seed", seed, "--name", name)
        assert rc == 0 and "Traceback" not in err, err
        assert json.loads((tmp_path / name / "config.json").read_text())["seed"] == seed  # as typed
    rc, _, err = run_cnn("train", "--config", tmp_path / "huge" / "config.json", "--name", "again")
    assert rc == 0, err
    assert _first_loss(tmp_path / "again") == _first_loss(tmp_path / "huge") != _first_loss(tmp_path / "neg")
    rc, _, err = run_cnn("train", "--resume", tmp_path / "neg", "--epochs", "2")
    history = (tmp_path / "neg" / "history.csv").read_text().splitlines()
    assert rc == 0 and len(history) == 3 and json.loads((tmp_path / "neg" / "config.json").read_text())["seed"] == -1


def test_seed_values_keep_every_recorded_seed_and_spread_the_others():
    assert [seed_value(s) for s in (0, 1, 12345, SEED_SPAN - 1)] == [0, 1, 12345, SEED_SPAN - 1]
    other = [seed_value(s) for s in (-1, -2, SEED_SPAN, 2**32 - 1, 2**70, -(2**70))]  # -1 is not 2**32-1 wrapped
    assert len(set(other)) == 6 and all(0 <= s < SEED_SPAN for s in other)


def test_a_data_dir_without_the_files_says_the_cache_served(data_dir, tmp_path):
    ds = load_dataset("mnist", data_dir=data_dir)  # the cache entry the run fell back on
    # (A folder that does not exist is refused by --data-dir's rule: tests/test_cli.py's REJECTED.)
    # A folder that exists but lacks the files: the cache serves, and says so.
    (tmp_path / "empty").mkdir()
    again = load_dataset("mnist", data_dir=tmp_path / "empty")
    assert again.fingerprint == ds.fingerprint and "loaded from the cache" in again.info["note"]
