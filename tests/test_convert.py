"""Tests for recbole_bet.convert (LightGCN folder -> RecBole .inter file)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the package is not installed into the venv
    sys.path.insert(0, str(REPO))

from recbole_bet.convert import HEADER, convert_lightgcn, main  # noqa: E402
from recbole_bet.errors import BadInput  # noqa: E402

GOWALLA = REPO.parent / "shared" / "datasets" / "gowalla"


def make_folder(root: Path, **files: str) -> Path:
    """Create a LightGCN folder; keyword ``train`` becomes train.txt, etc."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, text in files.items():
        (root / f"{stem}.txt").write_text(text)
    return root


def read_inter(path) -> list[str]:
    return Path(path).read_text().splitlines()


@pytest.fixture
def gowalla_slice(tmp_path):
    if not (GOWALLA / "train.txt").is_file() or not (GOWALLA / "test.txt").is_file():
        pytest.skip(f"Gowalla data not found at {GOWALLA}")
    src = tmp_path / "gowalla_slice"
    src.mkdir()
    for f in ("train.txt", "test.txt"):
        with open(GOWALLA / f) as fin:
            head = [next(fin) for _ in range(50)]
        (src / f).write_text("".join(head))
    return src


def expected_pairs(folder: Path) -> set[tuple[int, int]]:
    pairs = set()
    for f in ("train.txt", "valid.txt", "test.txt"):
        if (folder / f).exists():
            for line in (folder / f).read_text().splitlines():
                ids = [int(t) for t in line.split()]
                pairs.update((ids[0], i) for i in ids[1:])
    return pairs


def test_gowalla_slice(gowalla_slice, tmp_path):
    out = tmp_path / "out"
    info = convert_lightgcn(gowalla_slice, out)
    pairs = expected_pairs(gowalla_slice)
    n_raw = sum(
        len(line.split()) - 1
        for f in ("train.txt", "test.txt")
        for line in (gowalla_slice / f).read_text().splitlines()
    )

    assert info["path"] == str(out / "gowalla_slice" / "gowalla_slice.inter")
    lines = read_inter(info["path"])
    assert lines[0] == "user_id:token\titem_id:token"
    body = lines[1:]
    assert len(body) == len(set(body)), "duplicate lines written"
    assert {tuple(map(int, line.split("\t"))) for line in body} == pairs
    assert info["n_interactions"] == len(pairs) == len(body)
    assert info["n_users"] == len({u for u, _ in pairs}) == 50
    assert info["n_items"] == len({i for _, i in pairs})
    assert info["duplicates_dropped"] == n_raw - len(pairs)
    assert info["files"] == [str(gowalla_slice / "train.txt"), str(gowalla_slice / "test.txt")]
    # Nothing but the .inter file is left behind (no temp files).
    assert os.listdir(out / "gowalla_slice") == ["gowalla_slice.inter"]


def test_recbole_reads_output(gowalla_slice, tmp_path, monkeypatch):
    from recbole.config import Config
    from recbole.data import create_dataset

    out = tmp_path / "out"
    info = convert_lightgcn(gowalla_slice, out, name="gslice")
    monkeypatch.setattr(sys, "argv", ["x"])  # Config parses --key=value from sys.argv
    config = Config(
        model="BPR",
        dataset="gslice",
        config_dict={
            "data_path": str(out),
            "load_col": {"inter": ["user_id", "item_id"]},
            "eval_args": {
                "split": {"RS": [0.5, 0.25, 0.25]},
                "group_by": "user",
                "order": "RO",
                "mode": "full",
            },
            "checkpoint_dir": str(tmp_path / "saved"),
        },
    )
    dataset = create_dataset(config)
    # RecBole reserves id 0 for padding, hence the -1.
    assert dataset.user_num - 1 == info["n_users"]
    assert dataset.item_num - 1 == info["n_items"]
    assert dataset.inter_num == info["n_interactions"]


def test_duplicates_across_files_written_once(tmp_path):
    src = make_folder(tmp_path / "d", train="0 1 2 2\n1 3\n", test="0 2 4\n1 3\n")
    info = convert_lightgcn(src, tmp_path / "out")
    assert read_inter(info["path"]) == [HEADER.strip("\n"), "0\t1", "0\t2", "0\t4", "1\t3"]
    assert info["n_interactions"] == 4
    assert info["duplicates_dropped"] == 3
    assert (info["n_users"], info["n_items"]) == (2, 4)


def test_valid_included_and_user_only_and_blank_lines(tmp_path):
    src = make_folder(
        tmp_path / "v",
        train="0 1 2  \n\n7\n",  # trailing spaces, blank line, user-only line
        valid="1 5\n",
        test="0 3\n   \n",
    )
    info = convert_lightgcn(src, tmp_path / "out", name="custom")
    assert info["path"] == str(tmp_path / "out" / "custom" / "custom.inter")
    assert read_inter(info["path"])[1:] == ["0\t1", "0\t2", "0\t3", "1\t5"]
    assert info["files"] == [str(src / f) for f in ("train.txt", "valid.txt", "test.txt")]
    # User 7 has no items, so it is not part of the interaction file.
    assert (info["n_users"], info["n_items"], info["n_interactions"]) == (2, 4, 4)


def test_overwrite_replaces_previous_output(tmp_path):
    src = make_folder(tmp_path / "o", train="0 1\n", test="0 2\n")
    convert_lightgcn(src, tmp_path / "out")
    (src / "test.txt").write_text("0 9\n")
    info = convert_lightgcn(src, tmp_path / "out")
    assert read_inter(info["path"])[1:] == ["0\t1", "0\t9"]


@pytest.mark.parametrize(
    "bad_line, token",
    [("12 abc 3", "abc"), ("-1 5", "-1"), ("1 2.5", "2.5"), ("4 -7", "-7")],
)
def test_malformed_line_names_file_line_and_token(tmp_path, bad_line, token):
    src = make_folder(tmp_path / "m", train="0 1 2\n\n3 4\n", test=f"0 5\n{bad_line}\n1 1\n")
    with pytest.raises(BadInput) as exc:
        convert_lightgcn(src, tmp_path / "out")
    msg = str(exc.value)
    assert f"{src / 'test.txt'}:2:" in msg
    assert repr(token) in msg
    # An error must not leave a half-written dataset behind.
    assert not (tmp_path / "out" / "m").exists()


def test_malformed_line_number_counts_blank_lines(tmp_path):
    src = make_folder(tmp_path / "m", train="0 1\n\n\n2 x\n", test="0 1\n")
    with pytest.raises(BadInput, match=r"train\.txt:4: bad token 'x'"):
        convert_lightgcn(src, tmp_path / "out")


def test_missing_folder(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        convert_lightgcn(tmp_path / "nope", tmp_path / "out")


def test_missing_test_txt(tmp_path):
    src = make_folder(tmp_path / "t", train="0 1\n")
    with pytest.raises(BadInput, match="test.txt missing"):
        convert_lightgcn(src, tmp_path / "out")


def test_missing_train_txt(tmp_path):
    src = make_folder(tmp_path / "t", test="0 1\n")
    with pytest.raises(BadInput, match="train.txt missing"):
        convert_lightgcn(src, tmp_path / "out")


def test_no_interactions(tmp_path):
    src = make_folder(tmp_path / "e", train="0\n1\n", test="\n")
    with pytest.raises(BadInput, match="no interactions"):
        convert_lightgcn(src, tmp_path / "out")


def test_main_prints_summary_and_hint(tmp_path, capsys):
    src = make_folder(tmp_path / "mini", train="0 1 2\n", test="1 2\n")
    out = tmp_path / "out"
    assert main(["--input", str(src), f"--output={out}"]) == 0
    stdout = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("read ")]
    assert stdout[0].startswith("wrote 3 interactions (2 users, 2 items")
    assert str(out / "mini" / "mini.inter") in stdout[0]
    assert stdout[1] == "  2 users, 2 items, 3 interactions, density 0.75000"
    assert stdout[2] == "  interactions per item: p50 1.5, p90 1.9, p99 1.99, max 2"
    assert stdout[-1].startswith("then run: python run_bet.py --model=LightGCN --dataset=mini")
    assert (out / "mini" / "mini.inter").is_file()
    assert not (out / "mini" / "mini.yaml").exists()  # only a sample gets a properties file


def test_main_default_output_and_name(tmp_path, capsys, monkeypatch):
    src = make_folder(tmp_path / "mini", train="0 1\n", test="0 2\n")
    monkeypatch.chdir(tmp_path)
    assert main([f"--input={src}", "--name=other"]) == 0
    assert (tmp_path / "dataset" / "other" / "other.inter").is_file()
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint == "then run: python run_bet.py --model=LightGCN --dataset=other"


def test_main_raises_bad_input(tmp_path):
    src = make_folder(tmp_path / "b", train="0 1\n", test="0 x\n")
    with pytest.raises(BadInput, match=r"test\.txt:1:"):
        main([f"--input={src}", f"--output={tmp_path / 'out'}"])


@pytest.mark.skipif(
    not os.path.exists(REPO / "recbole_bet" / "__main__.py"),
    reason="recbole_bet/__main__.py (the CLI wrapper) is not written yet",
)
def test_cli_exit_code_on_bad_input(tmp_path):
    src = make_folder(tmp_path / "b", train="0 1\n3 4 oops\n", test="0 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "recbole_bet", "convert", f"--input={src}",
         f"--output={tmp_path / 'out'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"{src / 'train.txt'}:2:" in errors[0]
    assert "'oops'" in errors[0]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ user samples

def pairs_by_user(inter_path) -> dict[int, set[int]]:
    by_user: dict[int, set[int]] = {}
    for line in read_inter(inter_path)[1:]:
        u, i = map(int, line.split("\t"))
        by_user.setdefault(u, set()).add(i)
    return by_user


@pytest.fixture
def twenty_users(tmp_path):
    """20 users with 1-6 items each out of 30; item 29 belongs to user 19 alone."""
    rng = __import__("random").Random(7)
    train, test = [], []
    for u in range(20):
        items = rng.sample(range(29), 1 + u % 6) + ([29] if u == 19 else [])
        train.append(" ".join(map(str, [u] + items[: max(1, len(items) - 1)])))
        test.append(" ".join(map(str, [u] + items[max(1, len(items) - 1):])))
    return make_folder(tmp_path / "twenty", train="\n".join(train) + "\n", test="\n".join(test) + "\n")


def test_sample_keeps_all_interactions_of_n_users(twenty_users, tmp_path):
    full = pairs_by_user(convert_lightgcn(twenty_users, tmp_path / "full")["path"])
    info = convert_lightgcn(twenty_users, tmp_path / "out", sample_users_n=5, seed=3)
    assert info["path"] == str(tmp_path / "out" / "twenty-u5" / "twenty-u5.inter")
    sample = pairs_by_user(info["path"])
    assert len(sample) == 5 and info["n_users"] == 5
    assert all(sample[u] == full[u] for u in sample)  # every interaction of a chosen user
    items = set().union(*sample.values())
    assert info["n_items"] == len(items)  # items of no chosen user are gone
    assert info["n_interactions"] == sum(map(len, sample.values()))
    assert info["stats"]["density"] == pytest.approx(info["n_interactions"] / (5 * len(items)))
    assert info["stats"]["item_frequency"]["max"] >= 1
    # the same seed draws the same users; other seeds draw others
    again = pairs_by_user(convert_lightgcn(twenty_users, tmp_path / "again", sample_users_n=5, seed=3)["path"])
    assert again == sample
    others = [set(pairs_by_user(convert_lightgcn(twenty_users, tmp_path / f"s{s}", sample_users_n=5,
                                                 seed=s)["path"])) for s in (4, 5, 6)]
    assert any(o != set(sample) for o in others)


def test_sample_of_all_users_is_the_full_data(twenty_users, tmp_path):
    full = convert_lightgcn(twenty_users, tmp_path / "full")
    whole = convert_lightgcn(twenty_users, tmp_path / "out", sample_users_n=20, seed=1)
    assert pairs_by_user(whole["path"]) == pairs_by_user(full["path"])
    assert whole["stats"] == full["stats"]


@pytest.mark.parametrize("n", [0, 21, -3])
def test_sample_size_out_of_range(twenty_users, tmp_path, n):
    with pytest.raises(BadInput, match=r"sample_users"):
        convert_lightgcn(twenty_users, tmp_path / "out", sample_users_n=n)
    assert not (tmp_path / "out").exists()


def test_sample_properties_file_is_read_by_make_config(twenty_users, tmp_path, monkeypatch):
    from recbole_bet.config import make_config

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    info = convert_lightgcn(twenty_users, tmp_path / "data", sample_users_n=8, seed=11, name="tw8")
    props = Path(info["properties"])
    assert props == tmp_path / "data" / "tw8" / "tw8.yaml"
    text = props.read_text()
    assert "--sample_users=8 --seed=11 --name=tw8" in text and "8 users," in text
    config = make_config("LightGCN", "tw8", config_dict={"data_path": str(tmp_path / "data"), "method": "es"})
    assert config["dataset_sample"] == {"source": "twenty", "users": 8, "seed": 11}
    # converting the full data over the same name removes the sample's properties
    convert_lightgcn(twenty_users, tmp_path / "data", name="tw8")
    assert not props.exists()
    config = make_config("LightGCN", "tw8", config_dict={"data_path": str(tmp_path / "data"), "method": "es"})
    assert config["dataset_sample"] is None


def test_cli_sample(twenty_users, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "recbole_bet", "convert", f"--input={twenty_users}", f"--output={tmp_path / 'o'}",
         "--sample_users=4", "--seed=9"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(4 users," in proc.stdout and "interactions per item:" in proc.stdout
    assert f"wrote its properties to {tmp_path / 'o' / 'twenty-u4' / 'twenty-u4.yaml'}" in proc.stdout
    assert "--dataset=twenty-u4" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "recbole_bet", "convert", f"--input={twenty_users}", f"--output={tmp_path / 'o'}",
         "--sample_users=99"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2
    assert "error: --sample_users=99 but the data has 20 users with interactions; choose 1 to 20" in bad.stderr


def test_gowalla_slice_sample(gowalla_slice, tmp_path):
    info = convert_lightgcn(gowalla_slice, tmp_path / "out", sample_users_n=10, seed=2020)
    full = pairs_by_user(convert_lightgcn(gowalla_slice, tmp_path / "full")["path"])
    sample = pairs_by_user(info["path"])
    assert len(sample) == 10 and all(sample[u] == full[u] for u in sample)
