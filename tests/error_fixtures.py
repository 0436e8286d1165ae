"""Fixture folders for the bad inputs of docs/errors.md (shared by tests/test_errors.py)."""
import shutil
from pathlib import Path

import torch


class NotAllowed:
    """A class a malicious pickle could instantiate: torch.load(weights_only=True) must refuse it."""


def make_error_fixtures(tmp: Path, lightgcn_run: Path = None, ngcf_run: Path = None) -> None:
    bad = tmp / "bad-lightgcn"
    bad.mkdir()
    (bad / "train.txt").write_text("0 1 2\n1 2 oops\n")
    (bad / "test.txt").write_text("0 3\n")
    empty = tmp / "empty-lightgcn"
    empty.mkdir()
    (empty / "train.txt").write_text("")
    (empty / "test.txt").write_text("")
    truncated = tmp / "truncated-run"
    truncated.mkdir()
    (truncated / "checkpoint.pt").write_bytes(b"PK\x03\x04\x14\x00truncated")
    pickled = tmp / "pickled-run"
    pickled.mkdir()
    torch.save({"meta": NotAllowed()}, pickled / "checkpoint.pt")
    if lightgcn_run is not None and ngcf_run is not None:
        mixed = tmp / "mixed-run"
        shutil.copytree(lightgcn_run, mixed)
        shutil.copy(ngcf_run / "table.npz", mixed / "table.npz")
