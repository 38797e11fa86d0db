"""Tables other tools read (CSV): figures rounded to 4 significant digits, never float reprs.

A spreadsheet or pandas user wants `0.9861`, not `0.9861111111111112`; four significant digits
keep every difference these tables are read for (accuracies to 0.01 points, seconds to 0.1%).
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

SIGNIFICANT = 4


def sig(v, digits: int = SIGNIFICANT):
    """`v` rounded to `digits` significant digits when it is a finite float (numpy's too); else `v`."""
    if isinstance(v, (float, np.floating)) and math.isfinite(v):
        return float(f"{float(v):.{digits}g}")
    return v.item() if isinstance(v, np.generic) else v


def csv_text(fields: list[str], rows: list[dict]) -> str:
    """CSV with a header: one line per row dict, floats rounded by `sig`, None as an empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else sig(r.get(k)) for k in fields})
    return buf.getvalue()
