"""Convert LightGCN-format data into a RecBole atomic ``.inter`` file.

LightGCN format: a folder with ``train.txt``, ``test.txt`` and optionally
``valid.txt``; each line is ``user_id item_id item_id ...`` (0-based
non-negative integers separated by spaces). A line with only a user id adds no
interactions; blank lines are skipped.

All interactions of all files are pooled (RecBole re-splits them itself) into
``<output>/<name>/<name>.inter`` with the header ``user_id:token\\titem_id:token``,
one line per distinct (user, item) pair, keeping the original ids as tokens.

With ``sample_users`` N, only N users drawn uniformly at random (seeded) are kept, with all their
interactions; items none of them interacted with disappear with them. The dataset is named
``<input folder>-u<N>`` unless ``name`` is given, and gets a properties file ``<name>.yaml`` beside its
``.inter``, which ``make_config`` reads (``dataset_sample``: source, users, seed, so every report says which
sample it ran on).

Command line::

    python -m recbole_bet convert --input=DIR [--output=dataset/] [--name=NAME] [--sample_users=N --seed=S]
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np

from recbole_bet.errors import BadInput
from recbole_bet.files import atomic_write

DEFAULT_OUTPUT = "dataset/"  # RecBole's default data_path
FILES = ("train.txt", "valid.txt", "test.txt")
REQUIRED = ("train.txt", "test.txt")
HEADER = "user_id:token\titem_id:token\n"

# Anything but ASCII digits and whitespace makes a token invalid ("-1", "2.5",
# "abc"); one regex over the whole text is far cheaper than checking each token.
_BAD_CHAR = re.compile(r"[^0-9 \t\r\n]")
# More than 18 digits may not fit in int64.
_TOO_LONG = re.compile(r"[0-9]{19,}")


def _find_bad_token(path: Path, text: str) -> BadInput:
    """Locate the first bad token (slow path, only taken on error) and describe it."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not (_BAD_CHAR.search(line) or _TOO_LONG.search(line)):
            continue
        for token in line.split():
            if token[:1] == "-" and token[1:].isascii() and token[1:].isdigit():
                why = "ids must be non-negative"
            elif not (token.isascii() and token.isdigit()):
                why = "ids must be non-negative integers"
            elif len(token) > 18:
                why = "ids must have at most 18 digits"
            else:
                continue
            break
        else:  # the bad character is a separator that str.split() swallowed
            token = _BAD_CHAR.search(line).group()
            why = "separate ids with plain spaces"
        return BadInput(
            f"{path}:{lineno}: bad token {token!r} ({why}); each line must be "
            f"'user_id item_id item_id ...' with 0-based integer ids separated by spaces"
        )
    raise AssertionError("caller saw a bad character")


def _read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (users, items) int64 arrays of all pairs in one LightGCN file."""
    # errors="replace" turns undecodable bytes into U+FFFD, which the check below reports.
    text = path.read_text(encoding="utf-8", errors="replace")
    if _BAD_CHAR.search(text) or _TOO_LONG.search(text):
        raise _find_bad_token(path, text)
    users: list[int] = []
    counts: list[int] = []
    items: list[str] = []
    for line in text.split("\n"):  # same line numbering as _find_bad_token
        tokens = line.split()
        if len(tokens) > 1:
            users.append(int(tokens[0]))
            counts.append(len(tokens) - 1)
            items.extend(tokens[1:])
    user_arr = np.repeat(np.array(users, dtype=np.int64), np.array(counts, dtype=np.int64))
    item_arr = np.array(items, dtype=np.int64) if items else np.empty(0, dtype=np.int64)
    return user_arr, item_arr


def sample_users(users: np.ndarray, items: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of ``n`` users drawn uniformly without replacement (``numpy.random.default_rng(seed)``)."""
    distinct = np.unique(users)
    if not 1 <= n <= len(distinct):
        raise BadInput(f"--sample_users={n} but the data has {len(distinct)} users with interactions; "
                       f"choose 1 to {len(distinct)}")
    chosen = np.random.default_rng(seed).choice(distinct, size=n, replace=False)
    keep = np.isin(users, chosen)
    return users[keep], items[keep]


QUANTILES = (0.5, 0.9, 0.99)


def describe(users: np.ndarray, items: np.ndarray) -> dict:
    """Counts of a set of distinct pairs: users, items, interactions, density, and the median / 90th / 99th
    percentile and maximum of the interactions per item and per user."""
    _, per_user = np.unique(users, return_counts=True)
    _, per_item = np.unique(items, return_counts=True)
    n_users, n_items, n = len(per_user), len(per_item), len(users)

    def shape(counts):
        return {**{f"p{round(q * 100)}": float(np.quantile(counts, q)) for q in QUANTILES}, "max": int(counts.max())}

    return {"n_users": n_users, "n_items": n_items, "n_interactions": n,
            "density": n / (n_users * n_items), "item_frequency": shape(per_item), "user_frequency": shape(per_user)}


def summary_lines(stats: dict) -> list[str]:
    def shape(d):
        return ", ".join(f"{k} {v:g}" for k, v in d.items())

    return [f"{stats['n_users']} users, {stats['n_items']} items, {stats['n_interactions']} interactions, "
            f"density {stats['density']:.5f}",
            f"interactions per item: {shape(stats['item_frequency'])}",
            f"interactions per user: {shape(stats['user_frequency'])}"]


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same folder so readers never see a half file."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def convert_lightgcn(input_dir, output_dir, name=None, progress=None, sample_users_n: int | None = None,
                     seed: int = 2020) -> dict:
    """Convert the LightGCN folder ``input_dir`` to ``<output_dir>/<name>/<name>.inter``.

    ``name`` defaults to the input folder's basename (with ``-u<N>`` for a sample of ``sample_users_n``
    users, drawn with ``seed``; module docstring). ``progress``, if given, is
    called with one short line per file read. Returns a dict with ``path``,
    ``n_users``/``n_items`` (distinct ids that have at least one interaction),
    ``n_interactions`` (distinct pairs written), ``duplicates_dropped`` and
    ``files`` (the files read), ``stats`` (``describe``) and, for a sample, ``properties`` (its YAML's path).
    Raises :class:`BadInput` on unusable input.
    """
    src = Path(input_dir)
    if not src.is_dir():
        raise BadInput(
            f"input folder {str(src)!r} does not exist or is not a folder; "
            f"pass --input=DIR pointing at a folder with train.txt and test.txt"
        )
    missing = [f for f in REQUIRED if not (src / f).is_file()]
    if missing:
        raise BadInput(
            f"{' and '.join(missing)} missing in {str(src)!r}; a LightGCN folder needs "
            f"train.txt and test.txt (valid.txt is optional)"
        )
    if sample_users_n is not None and (not isinstance(sample_users_n, int) or sample_users_n < 1):
        raise BadInput(f"--sample_users must be a positive integer, got {sample_users_n!r}")
    if name is None:
        name = src.resolve().name + (f"-u{sample_users_n}" if sample_users_n is not None else "")
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise BadInput(f"invalid dataset name {name!r}; pass --name=NAME without slashes")

    files = [src / f for f in FILES if (src / f).is_file()]
    user_parts, item_parts = [], []
    for path in files:
        users, items = _read_pairs(path)
        user_parts.append(users)
        item_parts.append(items)
        if progress is not None:
            progress(f"read {path}: {len(items)} pairs")
    users = np.concatenate(user_parts)
    items = np.concatenate(item_parts)
    if len(users) == 0:
        raise BadInput(
            f"no interactions in {', '.join(str(p) for p in files)}; each line must be "
            f"'user_id item_id item_id ...' with at least one item somewhere"
        )

    # Sort by (user, item) and keep the first of each run: dedupes without a
    # Python set and without the overflow risk of a user*BIG+item key.
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    keep = np.ones(len(users), dtype=bool)
    keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    users, items = users[keep], items[keep]
    duplicates = int(len(keep) - len(users))
    if sample_users_n is not None:
        users, items = sample_users(users, items, sample_users_n, seed)

    out_dir = Path(output_dir) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{name}.inter"
    body = "\n".join(map("{}\t{}".format, users.tolist(), items.tolist()))
    _write_atomic(out_path, HEADER + body + "\n")
    stats = describe(users, items)
    info = {
        "path": str(out_path),
        "n_users": stats["n_users"],
        "n_items": stats["n_items"],
        "n_interactions": stats["n_interactions"],
        "duplicates_dropped": duplicates,
        "files": [str(p) for p in files],
        "stats": stats,
    }
    properties = out_dir / f"{name}.yaml"
    if sample_users_n is not None:
        source = src.resolve().name
        lines = [f"# {name}: {sample_users_n} users drawn uniformly at random (seed {seed}) from {source}, with all",
                 "# their interactions; items none of them interacted with are dropped. Written by",
                 f"#   python -m recbole_bet convert --input={input_dir} --sample_users={sample_users_n} --seed={seed}"
                 + (f" --name={name}" if name != f"{source}-u{sample_users_n}" else ""),
                 *[f"# {line}" for line in summary_lines(stats)],
                 f"dataset_sample: {{source: {source}, users: {sample_users_n}, seed: {seed}}}"]
        _write_atomic(properties, "\n".join(lines) + "\n")
        info["properties"] = str(properties)
    elif properties.is_file():  # a full conversion over an earlier sample of the same name
        properties.unlink()
    return info


def main(argv: list[str]) -> int:
    """CLI entry for ``python -m recbole_bet convert``; BadInput propagates to the wrapper.

    ``argv`` holds the options after ``convert`` (a leading ``convert`` is tolerated).
    """
    argv = list(argv)
    if argv[:1] == ["convert"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="python -m recbole_bet convert",
        description="Convert a LightGCN-format folder (train.txt, test.txt, optional "
        "valid.txt) into a RecBole atomic .inter file.",
    )
    parser.add_argument("--input", required=True, help="folder with train.txt and test.txt")
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help=f"RecBole data_path (default: {DEFAULT_OUTPUT})"
    )
    parser.add_argument("--name", default=None,
                        help="dataset name (default: input folder name, with -u<N> for a sample)")
    parser.add_argument("--sample_users", type=int, default=None,
                        help="keep N users drawn uniformly at random, with all their interactions")
    parser.add_argument("--seed", type=int, default=2020, help="seed of the user sample (default: 2020)")
    args = parser.parse_args(argv)

    info = convert_lightgcn(
        args.input, args.output, args.name, progress=print, sample_users_n=args.sample_users, seed=args.seed
    )
    name = Path(info["path"]).parent.name
    print(
        f"wrote {info['n_interactions']} interactions ({info['n_users']} users, "
        f"{info['n_items']} items, {info['duplicates_dropped']} duplicates dropped) "
        f"to {info['path']}"
    )
    for line in summary_lines(info["stats"]):
        print(f"  {line}")
    if "properties" in info:
        print(f"wrote its properties to {info['properties']}")
    hint = f"python run_bet.py --model=LightGCN --dataset={name}"
    if os.path.normpath(args.output) != os.path.normpath(DEFAULT_OUTPUT):
        hint += f" --data_path={args.output}"  # RecBole only looks in dataset/ by default
    print(f"then run: {hint}")
    return 0
