"""Every bad input of docs/errors.md: exit 2, exactly the documented error line, no traceback, no output."""
import re
import shlex
from pathlib import Path

import pytest

from conftest import check_refused, run_python
from error_fixtures import make_error_fixtures

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (\d+) \| (.+?) \| `python (.+?)` \| `(error: .+)` \|$")


def _rows():
    rows = [ROW.match(line) for line in (REPO / "docs" / "errors.md").read_text().splitlines()]
    return [m.groups() for m in rows if m]


ROWS = _rows()


def test_the_table_documents_at_least_15_bad_inputs():
    assert len(ROWS) >= 15


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, cli_run):
    tmp = tmp_path_factory.mktemp("errors")
    lightgcn, ngcf = cli_run("LightGCN", "es"), cli_run("NGCF", "es")
    make_error_fixtures(tmp, lightgcn.out, ngcf.out)
    return tmp


@pytest.mark.parametrize("number,what,command,message", ROWS, ids=[r[1] for r in ROWS])
def test_bad_input_gives_the_documented_error(fixtures, number, what, command, message):
    args = [a.replace("<TMP>", str(fixtures)) for a in shlex.split(command)]
    proc = run_python(*args, timeout=300)
    check_refused(proc, fixtures / "out", "")  # exit 2, one last error line, no traceback, no output dir
    error = proc.stderr.strip().splitlines()[-1]
    assert error.replace(str(fixtures), "<TMP>") == message
