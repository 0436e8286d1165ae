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
    three = tmp / "three-users"  # a good LightGCN folder of 3 users, for bad --sample_users values
    three.mkdir()
    (three / "train.txt").write_text("0 1 2\n1 2\n2 3\n")
    (three / "test.txt").write_text("0 3\n")
    data = tmp / "dataset"  # malformed RecBole atomic files, one dataset each
    for name, text in (("empty", ""),
                       ("noheader", "1\t2\n3\t4\n"),
                       ("notype", "user_id:token\titem_id\n1\t2\n"),
                       ("badtype", "user_id:token\titem_id:int\n1\t2\n"),
                       ("nouser", "uid:token\titem_id:token\n1\t2\n"),
                       ("noitem", "user_id:token\tiid:token\n1\t2\n"),
                       ("badrating", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n1\t3\tfive\n")):
        (data / name).mkdir(parents=True)
        (data / name / f"{name}.inter").write_text(text)
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
