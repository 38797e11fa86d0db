"""Named fault-injection points (SQLite's and Orbax's habit): tests kill the process at a chosen one.

`CNN_FAULT_AT=<name>` makes the process send itself a signal when it reaches `point(<name>)`
(`<name>#N`: the N-th time); `CNN_FAULT_SIGNAL` names it (KILL, the default, or INT for a Ctrl-C
at exactly that point). Unset (always, outside the fault tests) a point costs one dict look-up.
The points: `checkpoint-written:<which>` (after the temporary file is written, before its rename),
`epoch-saved` (after an epoch's checkpoints), `test-evaluation` (training done, before testing),
`cache-array-written` (after one cache array's rename, before meta.json), `import-staged`
(a `download --from` folder copied, before its rename).
"""

from __future__ import annotations

import os
import signal

ENV, SIGNAL_ENV = "CNN_FAULT_AT", "CNN_FAULT_SIGNAL"
_seen: dict[str, int] = {}


def point(name: str) -> None:
    target = os.environ.get(ENV)
    if not target:
        return
    want, _, nth = target.partition("#")
    if want != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get(SIGNAL_ENV, "KILL")))
