"""Command-line front ends: ``run_bet.py`` and ``python -m recbole_bet``.

Bad input exits 2 with one ``error:`` line on stderr and no traceback; anything else unexpected exits 1.
"""
from __future__ import annotations

import argparse
import os
import sys

from recbole_bet.errors import BadInput


def guarded(func, *args, **kwargs) -> int:
    """Run ``func``; turn BadInput into ``error: ...`` on stderr and exit status 2."""
    try:
        result = func(*args, **kwargs)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def _run_bet(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="run_bet.py",
        description="Fit a RecBole model's user/item embedding tables into a parameter budget.",
        epilog="Any other --KEY=VALUE is a RecBole or recbole-bet config key (see docs/config.md).",
    )
    parser.add_argument("--model", "-m", default=None, help="stock RecBole general recommender, e.g. LightGCN")
    parser.add_argument("--dataset", "-d", default=None, help="RecBole dataset name, e.g. ml-100k")
    parser.add_argument("--config_files", default=None, help='space-separated YAML files, e.g. "a.yaml b.yaml"')
    args, _ = parser.parse_known_args(argv)  # the rest is read by RecBole's Config from sys.argv
    from recbole_bet.pipeline import quick_start

    files = args.config_files.split() if args.config_files else None
    saved_argv = sys.argv  # RecBole's Config reads --key=value from sys.argv: give it exactly these options
    sys.argv = [saved_argv[0] if saved_argv else "run_bet.py", *argv]
    try:
        result = quick_start(args.model, args.dataset, config_file_list=files)
    finally:
        sys.argv = saved_argv
    for report in result.get("reports", [result]):  # one per budget for a RULE sparsity list
        report_dir = report["config"]["output_dir"]
        print(f"report: {os.path.join(report_dir, 'report.json')}")
        print(f"table:  {os.path.join(report_dir, 'table.npz')}")
    if "reports" in result:
        print(f"reports: {os.path.join(result['config']['output_dir'], 'reports.json')}")
    return 0


def run_bet_main(argv=None) -> int:
    return guarded(_run_bet, sys.argv[1:] if argv is None else argv)


def package_main(argv=None) -> int:
    """``python -m recbole_bet COMMAND ...``"""
    argv = sys.argv[1:] if argv is None else argv
    commands = {"convert": "convert LightGCN-format train/test(/valid).txt into RecBole atomic files",
                "run": "the same as run_bet.py",
                "recommend": "top-k items for users from a finished run's table.npz",
                "grid": "run a benchmark grid (here or on a Ray cluster) and build its tables"}
    if argv and argv[0] not in commands and argv[0] not in ("-h", "--help"):
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(commands)}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        usage = "\n".join(f"  {name:<10} {text}" for name, text in commands.items())
        print(f"usage: python -m recbole_bet COMMAND [options]\ncommands:\n{usage}")
        return 0
    if argv[0] == "convert":
        from recbole_bet.convert import main as convert_main

        return guarded(convert_main, argv[1:])
    if argv[0] == "recommend":
        from recbole_bet.recommend import main as recommend_main

        return guarded(recommend_main, argv[1:])
    if argv[0] == "grid":
        from recbole_bet.grid.command import main as grid_main

        return guarded(grid_main, argv[1:])
    return run_bet_main(argv[1:])
