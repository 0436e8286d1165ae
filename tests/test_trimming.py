"""trim_columns: fixed-mask LightGCN trainings on the kept columns reach the weights the full-width training
reaches (to float rounding), and the full model ends up holding them under the action's masks."""
import numpy as np
import pytest
import torch

from conftest import make_context
from recbole_bet.budget import equal_sizes
from recbole_bet.trimming import kept_columns


def test_kept_columns_are_those_some_row_keeps():
    assert list(kept_columns(128, sizes=[3, 1, 5])) == list(range(16))  # prefixes: rounded up to 16 columns
    assert list(kept_columns(128, sizes=[17, 1])) == list(range(32))
    assert kept_columns(128, sizes=[120, 1]) is None  # 128 columns: nothing to trim
    assert kept_columns(8, sizes=[3, 1]) is None
    assert kept_columns(8) is None  # full width
    keep = np.zeros((3, 8), dtype=bool)
    keep[0, 3] = keep[2, 7] = keep[1, 3] = True
    assert list(kept_columns(8, keep=keep)) == [3, 7]


def _train(tmp_path, trim: bool, sizes=None, keep=None):
    ctx = make_context("LightGCN", tmp_path / str(trim), sparsity=0.9, epochs=4, trim_columns=trim)
    if keep is not None:
        state, valid, _ = ctx.train_from(ctx.init_state, keep=keep(ctx), label="keep")
    else:
        state, valid, _ = ctx.train_from_scratch(sizes(ctx))
    return ctx, state, valid


@pytest.mark.parametrize("mask", ["sizes", "keep"])
def test_trimmed_training_reaches_the_full_width_weights(tmp_path, mask):
    if mask == "sizes":
        args = {"sizes": lambda ctx: equal_sizes(ctx.budget, ctx.user_freq, ctx.item_freq)}
    else:  # an element mask on columns 5 and 9 (not a prefix): the narrow model is two columns wide
        def keep(ctx):
            k = np.zeros((ctx.budget.n_entities, ctx.masked.d_max), dtype=bool)
            k[:, [5, 9]] = True
            k[::3, 9] = False
            return k
        args = {"keep": keep}
    full_ctx, full_state, full_valid = _train(tmp_path, False, **args)
    ctx, state, valid = _train(tmp_path, True, **args)
    width = 16 if mask == "sizes" else 2  # equal sizes of 12-13 columns, rounded up
    assert ctx.trainings[-1]["columns"] == width and "columns" not in full_ctx.trainings[-1]
    assert valid == pytest.approx(full_valid, abs=1e-4)
    for key in full_state:
        torch.testing.assert_close(state[key], full_state[key], rtol=1e-4, atol=1e-5, msg=key)
    # the full model holds the trained weights under the action's masks: it scores as the narrow one did
    assert ctx.evaluate(ctx.valid_data) == pytest.approx(valid, abs=1e-6)
    weight = ctx.model.user_embedding.weight.detach()
    if mask == "sizes":
        assert torch.all(weight[:, width:] == 0) and torch.any(weight[1:, :width] != 0)
    else:
        others = np.setdiff1d(np.arange(weight.shape[1]), [5, 9])
        assert torch.all(weight[:, others] == 0) and torch.all(weight[1::3, 9] == 0)  # row 0 is padding


def test_models_that_mix_columns_train_at_full_width(tmp_path):
    ctx = make_context("NGCF", tmp_path, sparsity=0.9, epochs=1)
    assert ctx.trimmer.columns(sizes=equal_sizes(ctx.budget)) is None
    ctx.train_from_scratch(equal_sizes(ctx.budget))
    assert "columns" not in ctx.trainings[-1]


def test_bet_probes_and_retrainings_trimmed_match_full_width(tmp_path):
    """BET on LightGCN at sparsity 0.95 (its probes' widths well under 128): with trim_columns the probes and
    retrainings run narrow, and the search's fitness values, the chosen action and its weights agree with the
    full-width run's."""
    from recbole_bet.methods import get_method

    selections, widths = {}, {}
    for trim in (True, False):
        ctx = make_context("LightGCN", tmp_path / str(trim), method="bet", sparsity=0.95, epochs=2,
                           trim_columns=trim, pretrain_cache_dir=str(tmp_path / "cache"))
        ctx.checkpoint_path = str(tmp_path / f"{trim}.pt")
        built = widths[trim] = []
        narrow = ctx.trimmer.narrow
        ctx.trimmer.narrow = lambda width, narrow=narrow, built=built: built.append(width) or narrow(width)
        selections[trim] = (get_method("bet").select(ctx), ctx.trainings)
    (trimmed, trimmed_trainings), (full, full_trainings) = selections[True], selections[False]
    probes = len(trimmed.search["iterations"])
    assert len(widths[True]) == probes + 2 and all(w < 128 for w in widths[True]) and not widths[False]
    assert [m["fitness"] for m in trimmed.search["iterations"]] == pytest.approx(
        [m["fitness"] for m in full.search["iterations"]], abs=1e-4)
    assert trimmed.search["chosen"] == full.search["chosen"] and np.array_equal(trimmed.sizes, full.sizes)
    assert trimmed.valid == pytest.approx(full.valid, abs=1e-4)
    for key in full.state:
        torch.testing.assert_close(trimmed.state[key], full.state[key], rtol=1e-4, atol=1e-5, msg=key)
    assert all(t["columns"] < 128 for t in trimmed_trainings if t["label"] == "from scratch")
    assert not any("columns" in t for t in full_trainings)
