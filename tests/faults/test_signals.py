"""Real signals: SIGKILL at named points while checkpoints are written, Ctrl-C (SIGINT) after the
last epoch and twice; a second writer of a run directory; a closed stdout.

The signalled run is a process of its own; what follows it (resume, a second writer) runs in this
one, where JAX is already warm.
"""

import json
import os
import signal
import subprocess
import sys
import time

from cnncli.runs import checkpoint

from faultkit import cli, one_line

DIGITS = ("train", "--dataset", "digits", "--arch", "net2", "--batch-size", "64", "--seed", "0")


def kill_at(point: str, sig: str = "KILL") -> dict:
    return {"CNN_FAULT_AT": point, "CNN_FAULT_SIGNAL": sig}


def resume_completes(run_cnn, run, epochs: int) -> None:
    rc, _, err = run_cnn("train", "--resume", run)
    assert rc == 0 and "Traceback" not in err, err
    assert (run / "metrics.json").is_file() and not list(run.rglob(".*.tmp"))
    meta, _ = checkpoint.load(run / "checkpoints" / "best.msgpack")
    assert meta["loop"]["epoch"] >= 1
    assert checkpoint.load(run / "checkpoints" / "last.msgpack")[0]["loop"]["epoch"] == epochs


def test_kill_while_best_is_first_written_leaves_a_resumable_run(run_cnn, tmp_path):
    """#2 of the issue: killed while best.msgpack was first written, the resumed run could not end."""
    run = tmp_path / "r"
    r = cli(*DIGITS, "--epochs", "2", "--out", tmp_path, "--name", "r", env=kill_at("checkpoint-written:best"))
    assert r.returncode == -signal.SIGKILL
    assert list(run.rglob(".best.msgpack.*.tmp"))  # what the kill left: cleaned up on the next start
    resume_completes(run_cnn, run, 2)


def test_ctrl_c_during_test_evaluation_then_resume_finishes_the_run(run_cnn, tmp_path):
    run = tmp_path / "r"
    r = cli(*DIGITS, "--epochs", "2", "--tta-flip", "--out", tmp_path, "--name", "r",
            env=kill_at("test-evaluation", "INT"))
    one_line(r.stderr, 130, r.returncode, "interrupted", f"cnn train --resume {run}")
    assert not (run / "metrics.json").exists()
    rc, out, err = run_cnn("train", "--resume", run)
    assert rc == 0 and "training is complete; testing the best epoch" in out, err
    assert (run / "metrics.json").is_file()
    rc, _, err = run_cnn("train", "--resume", run)  # and now it is finished
    one_line(err, 2, rc, "already finished")


def test_a_second_ctrl_c_exits_at_once_and_a_second_writer_is_refused(run_cnn, tmp_path):
    """One long run: a second writer is refused naming the holder's pid; two Ctrl-C end it at once
    with the last checkpoint kept; then a stale lock (its holder killed) is taken over."""
    run = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-m", "cnncli.cli", *DIGITS, "--epochs", "400", "--out", tmp_path,
                          "--name", "r"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:  # off a terminal: one line per epoch
            if line.startswith("epoch") and "2/400" in line:
                break
        rc, _, err = run_cnn("train", "--resume", run, "--epochs", "401")
        one_line(err, 2, rc, "is in use", f"process {p.pid}")
        p.send_signal(signal.SIGINT)
        time.sleep(0.3)  # two pending SIGINTs would be delivered as one
        p.send_signal(signal.SIGINT)
        t = time.monotonic()
        _, err = p.communicate(timeout=30)
        assert time.monotonic() - t < 5 and p.returncode == 130 and "Traceback" not in err, err
    finally:
        p.kill()
    assert checkpoint.load(run / "checkpoints" / "last.msgpack")[0]["loop"]["epoch"] >= 2
    # The lock of a process that is gone is free (the kernel dropped it); its pid file remains.
    assert (run / ".lock").read_text().strip() == str(p.pid)
    rc, _, err = run_cnn("train", "--resume", run, "--epochs", "3")
    assert rc == 0 and (run / "metrics.json").is_file(), err


def test_a_closed_stdout_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # `cnn ... | head` after head has gone
    p = subprocess.run([sys.executable, "-m", "cnncli.cli", "recipes"], stdout=write, stderr=subprocess.PIPE,
                       text=True)
    os.close(write)
    assert p.returncode == 141 and p.stderr == "", p.stderr


def test_a_process_started_with_ctrl_c_ignored_keeps_ignoring_it():
    """nohup and a script's background job start a process with SIGINT ignored: the training loop's
    handler must not take Ctrl-C over for the epochs only (the run then ignored it before and after
    them, and stopped in the middle: #43's two tests, under a pytest started that way)."""
    from cnncli.train.epochs import _Interrupt

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _Interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with _Interrupt() as i:
            assert signal.getsignal(signal.SIGINT) == i._handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_while_an_extended_run_is_tested_then_its_resume_command_finishes(run_cnn, tmp_path):
    """#43: the epoch-1 metrics.json stayed beside the epoch-2 checkpoints, so the printed resume
    command answered 'already finished'. The old figures are kept under another name."""
    run = tmp_path / "r"
    rc, _, err = run_cnn(*DIGITS, "--epochs", "1", "--tta-flip", "--out", tmp_path, "--name", "r")
    assert rc == 0, err
    r = cli("train", "--resume", run, "--epochs", "2", env=kill_at("test-evaluation", "INT"))
    one_line(r.stderr, 130, r.returncode, "interrupted", f"cnn train --resume {run}")
    assert not (run / "metrics.json").exists() and (run / "metrics.1-epochs.json").is_file()
    rc, out, err = run_cnn("train", "--resume", run)  # the command the message printed
    assert rc == 0 and "training is complete; testing the best epoch" in out, err
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
