"""Benchmark grids: datasets x models x methods x sparsities x seeds, one ``python -m recbole_bet run``
subprocess per cell, on this machine or as Ray tasks on a cluster, then tables shaped like the paper's.

    python -m recbole_bet grid --grid=FILE.yaml|NAME [--only=GLOB,...] [--dry-run] [--tables-only]
                               [--executor=local|ray] [--ray_address=auto|HOST:PORT]

Modules, by what they do (none imports torch or RecBole; Ray only when ``--executor=ray`` is chosen):

- ``load``: reading a grid file (``Grid``, ``load_grid``, ``find_grid``, the bundled ``grids/``);
- ``cells``: the cells of a grid and the state of each on disk (done, resume, rerun, new);
- ``running``: running one cell as a subprocess, and the local executor (one cell after another);
- ``ray_executor``: every cell a Ray task with the resources the grid asks for;
- ``rows``: collecting one row per finished cell (and the committed rows of cells whose folders are gone);
- ``stats``: mean ± std over seeds, paired t-tests, wins/ties/losses;
- ``tables``: writing ``<dataset>.csv``, ``.md`` and ``.png``;
- ``command``: the command line.

docs/reproduction.md describes the grid file format, the outputs and both executors.
"""
