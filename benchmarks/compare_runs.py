"""Compare two run folders: the same report (metrics, sizes, budget) and the same artifact, array by array.

    python benchmarks/compare_runs.py OLD_OUTPUT_DIR NEW_OUTPUT_DIR

Used to show that a change which should not change results does not: run the same command (same seed,
``OMP_NUM_THREADS=1`` so that CPU kernels sum in one order) with the code before and after, then compare.
The artifact's zip members are compared by content (``np.savez`` stamps each member with the time it was
written, so the files' bytes differ between any two runs). Timings (``timings_s``, ``seconds``, ``*_s`` at any depth) and ``output_dir`` are ignored.
Exit status 0 when everything matches, 1 otherwise (each difference is printed).
"""
from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

IGNORED = {"timings_s"}


def _timing(key) -> bool:
    return key == "seconds" or str(key).endswith("_s") or key in IGNORED


def _flatten(value, prefix=""):
    """(dotted key, leaf) pairs; timings (``seconds``, ``*_s``, ``timings_s``) are left out at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not _timing(k):
                yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), value


def compare(old: Path, new: Path) -> list[str]:
    diffs = []
    with open(old / "report.json") as fh:
        a = json.load(fh)
    with open(new / "report.json") as fh:
        b = json.load(fh)
    for k in sorted(set(a) | set(b)):
        if k in IGNORED:
            continue
        fa, fb = dict(_flatten(a.get(k), k)), dict(_flatten(b.get(k), k))
        for key in sorted(set(fa) | set(fb)):
            if key.endswith("output_dir"):
                continue
            if fa.get(key) != fb.get(key):
                diffs.append(f"report {key}: {fa.get(key)!r} vs {fb.get(key)!r}")
    with zipfile.ZipFile(old / "table.npz") as za, zipfile.ZipFile(new / "table.npz") as zb:
        names_a, names_b = sorted(za.namelist()), sorted(zb.namelist())
        if names_a != names_b:
            diffs.append(f"artifact members differ: {set(names_a) ^ set(names_b)}")
        for name in sorted(set(names_a) & set(names_b)):
            if za.read(name) != zb.read(name):
                diffs.append(f"artifact {name}: contents differ")
    return diffs


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    diffs = compare(Path(args[0]), Path(args[1]))
    for d in diffs:
        print(d)
    print(f"{'identical' if not diffs else f'{len(diffs)} differences'}: {args[0]} vs {args[1]}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
