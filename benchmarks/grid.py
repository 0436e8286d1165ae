"""The grid harness as a script, for checkouts and older notes: the same as ``python -m recbole_bet grid``.

    python benchmarks/grid.py --grid=grids/ml100k-lightgcn-5seeds.yaml [--only=GLOB,...] [--dry-run]
    python benchmarks/grid.py --grid=tiny --executor=ray

The code lives in recbole_bet/grid/ (docs/reproduction.md).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not another install

from recbole_bet.grid.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/grid.py"))
