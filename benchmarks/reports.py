"""BET run reports below grid output roots or run folders, for the benchmark scripts that read them."""
from __future__ import annotations

import json
from pathlib import Path


def bet_reports(roots):
    """(path, report, its search, label) of every BET ``report.json`` below ``roots``, in path order; the label is
    the grid's method folder (``<label>/<sparsity>/seed<seed>``) or, for a single run, the method."""
    for root in roots:
        for path in sorted(Path(root).rglob("report.json")):
            report = json.loads(path.read_text())
            if report.get("method") != "bet":
                continue
            label = path.parent.parent.parent.name if path.parent.name.startswith("seed") else report["method"]
            yield path, report, report.get("search") or {}, label
