"""Row-prefix masks on stock RecBole models: zero reads, zero gradients, frozen masked entries."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from torch import nn

from conftest import make_context
from recbole_bet.errors import BadInput
from recbole_bet.masking import MaskedTables, find_tables, load_plain_state_dict, plain_state_dict

MODELS = {"LightGCN": 1, "NGCF": 1, "NeuMF": 2}  # model -> tables_per_entity


def table_mask(masked, table):
    """The expected 0/1 mask of one table from the sizes (padding row: size 0)."""
    sizes = torch.as_tensor(masked.row_sizes(table.entity))
    return (torch.arange(masked.d_max)[None, :] < sizes[:, None]).float()


@pytest.fixture(scope="module", params=list(MODELS))
def stepped(request, tmp_path_factory):
    """A model with random sizes after ONE RecBole-style training step (Adam), and what changed."""
    torch.manual_seed(7)
    ctx = make_context(request.param, tmp_path_factory.mktemp(request.param))
    model, masked = ctx.model, ctx.masked
    rng = np.random.default_rng(11)
    n = masked.n_users + masked.n_items
    sizes = rng.integers(1, masked.d_max, n)  # every row has masked entries
    sizes[rng.choice(n, 5, replace=False)] = masked.d_max  # and a few rows are full
    masked.set_sizes(sizes)

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = next(iter(ctx.train_data))
    raw = {t.name: t.module.weight for t in masked.tables}  # the parameter itself: no parametrization
    before = {name: p.detach().clone() for name, p in raw.items()}
    optimizer.zero_grad()
    loss = model.calculate_loss(batch)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in raw.items()}
    optimizer.step()
    after = {name: p.detach().clone() for name, p in raw.items()}
    item_fields = [f for f in (model.ITEM_ID, model.NEG_ITEM_ID) if f in batch.interaction]
    rows = {
        "user": torch.unique(batch[model.USER_ID]),
        "item": torch.unique(torch.cat([batch[f] for f in item_fields])),
    }
    model.eval()
    return SimpleNamespace(name=request.param, ctx=ctx, sizes=sizes, loss=loss.item(), grads=grads,
                           before=before, after=after, rows=rows)


def test_tables_found(stepped):
    masked, budget = stepped.ctx.masked, stepped.ctx.budget
    tpe = MODELS[stepped.name]
    assert len(masked.tables) == 2 * tpe
    assert budget.tables_per_entity == tpe
    assert sorted(t.entity for t in masked.tables) == ["item"] * tpe + ["user"] * tpe
    assert (masked.n_users, masked.n_items) == (943, 1682)
    for t in masked.tables:
        assert t.module.weight.shape == ((944 if t.entity == "user" else 1683), 128)
    np.testing.assert_array_equal(masked.sizes, stepped.sizes)


def test_masked_entries_get_exactly_zero_gradient(stepped):
    assert np.isfinite(stepped.loss)
    for t in stepped.ctx.masked.tables:
        grad, mask = stepped.grads[t.name], table_mask(stepped.ctx.masked, t)
        assert torch.all(grad[mask == 0] == 0), t.name
        in_batch = stepped.rows[t.entity]
        assert torch.any(grad[in_batch][mask[in_batch] == 1] != 0), f"{t.name}: no gradient reached kept entries"


def test_adam_step_leaves_masked_entries_unchanged(stepped):
    for t in stepped.ctx.masked.tables:
        before, after, mask = stepped.before[t.name], stepped.after[t.name], table_mask(stepped.ctx.masked, t)
        assert torch.equal(before[mask == 0], after[mask == 0]), t.name
        in_batch = stepped.rows[t.entity]
        changed = (before[in_batch] != after[in_batch]) & (mask[in_batch] == 1)
        assert changed.any(dim=1).float().mean() > 0.5, f"{t.name}: kept entries of batch rows did not move"


def test_weight_reads_zero_where_masked(stepped):
    masked = stepped.ctx.masked
    for t in masked.tables:
        weight, mask = t.module.weight.detach(), table_mask(masked, t)
        assert torch.all(weight[mask == 0] == 0), t.name
        assert torch.equal(weight[mask == 1], stepped.after[t.name][mask == 1])
        assert torch.all(weight[0] == 0), "padding row has size 0"
        idx = torch.arange(weight.shape[0])
        assert torch.equal(t.module(idx).detach(), weight)  # calling the module (NeuMF, BPR) is masked too


def test_scored_embeddings_are_masked(stepped):
    ctx = stepped.ctx
    masked, model = ctx.masked, ctx.model
    users = table_mask(masked, next(t for t in masked.tables if t.entity == "user"))
    items = table_mask(masked, next(t for t in masked.tables if t.entity == "item"))
    with torch.no_grad():
        if stepped.name == "NeuMF":
            uid, iid = torch.arange(users.shape[0]), torch.arange(items.shape[0])
            for name, ids, mask in (("user_mf_embedding", uid, users), ("user_mlp_embedding", uid, users),
                                    ("item_mf_embedding", iid, items), ("item_mlp_embedding", iid, items)):
                emb = getattr(model, name)(ids)
                assert torch.all(emb[mask == 0] == 0), name
        else:
            ego = model.get_ego_embeddings()
            assert ego.shape == (users.shape[0] + items.shape[0], masked.d_max)
            assert torch.all(ego[: users.shape[0]][users == 0] == 0)
            assert torch.all(ego[users.shape[0]:][items == 0] == 0)


def test_pair_blocks_cover_every_user_item_pair_once():
    """The scoring blocks tile users x items exactly, whether a block holds several users' whole rows or a
    part of one user's row (large catalogues), and none exceeds the device's chunk."""
    from recbole_bet import models

    for chunk, n_users, n_items, per_pair in ((1000, 7, 30, 4), (1000, 7, 600, 4), (1 << 18, 5, 1683, 128)):
        seen = torch.zeros(n_users, n_items, dtype=torch.int64)
        old = models._CHUNK_ELEMENTS["cpu"]
        models._CHUNK_ELEMENTS["cpu"] = chunk
        try:
            for us, its in models._pair_blocks(n_users, n_items, per_pair, torch.device("cpu")):
                seen[us, its] += 1
                assert seen[us, its].numel() * per_pair <= max(chunk, n_items * per_pair)
        finally:
            models._CHUNK_ELEMENTS["cpu"] = old
        assert torch.all(seen == 1), (chunk, n_users, n_items)


@pytest.mark.parametrize("stepped", ["NeuMF"], indirect=True)
def test_neumf_full_sort_is_the_same_in_any_block_size(stepped, monkeypatch):
    from recbole_bet import models

    model = stepped.ctx.model
    model.eval()
    users = Interaction({model.USER_ID: torch.tensor([1, 2, 50, 400, 943])})
    with torch.no_grad():
        default = model.full_sort_predict(users)
        monkeypatch.setitem(models._CHUNK_ELEMENTS, "cpu", 500 * 128)  # a user's row in four blocks
        small = model.full_sort_predict(users)
    torch.testing.assert_close(small, default, rtol=0, atol=1e-6)


@pytest.mark.parametrize("stepped", ["NeuMF"], indirect=True)
def test_neumf_chunked_full_sort_ranks_like_predict(stepped):
    model = stepped.ctx.model
    model.eval()
    n_items = model.n_items  # padding item 0 included
    users = torch.tensor([1, 2, 50, 400, 943])
    with torch.no_grad():
        full = model.full_sort_predict(Interaction({model.USER_ID: users})).view(len(users), n_items)
        pairs = Interaction({model.USER_ID: users.repeat_interleave(n_items),
                             model.ITEM_ID: torch.arange(n_items).repeat(len(users))})
        stock = model.predict(pairs).view(len(users), n_items)
    torch.testing.assert_close(torch.sigmoid(full), stock, rtol=0, atol=1e-5)
    for u in range(len(users)):
        top_full = torch.topk(full[u, 1:], 10).indices
        top_stock = torch.topk(stock[u, 1:], 10).indices
        if not torch.equal(top_full, top_stock):  # only exact ties in the sigmoid may reorder
            assert torch.equal(torch.sort(stock[u, 1:][top_full]).values, torch.sort(stock[u, 1:][top_stock]).values)


class _NoTables(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(1683, 64)


class _Unbalanced(nn.Module):
    def __init__(self):
        super().__init__()
        self.user_a, self.user_b = nn.Embedding(944, 8), nn.Embedding(944, 8)
        self.item = nn.Embedding(1683, 8)


def test_models_without_balanced_tables_are_refused():
    with pytest.raises(BadInput, match="no user or item embedding tables"):
        find_tables(_NoTables(), 944, 1683)
    with pytest.raises(BadInput, match="2 user and 1 item"):
        find_tables(_Unbalanced(), 944, 1683)


def test_equal_counts_use_module_names_and_width_must_be_d_max():
    model = nn.Module()
    model.user_embedding, model.item_embedding = nn.Embedding(11, 8), nn.Embedding(11, 8)
    tables = find_tables(model, 11, 11)
    assert {t.name: t.entity for t in tables} == {"user_embedding": "user", "item_embedding": "item"}
    with pytest.raises(BadInput, match="d_max"):
        MaskedTables(model, tables, 16)
    masked = MaskedTables(model, tables, 8)
    full_weights = plain_state_dict(model)
    masked.set_sizes(np.arange(20) % 9)
    assert torch.all(model.user_embedding.weight[3, 2:] == 0) and torch.all(model.user_embedding.weight[3, :2] != 0)
    masked.set_full()
    load_plain_state_dict(model, full_weights)  # full width again: loaded values are no longer masked
    assert torch.all(model.item_embedding.weight != 0)
    with pytest.raises(ValueError):
        masked.set_sizes(np.ones(19))


def test_validation_subset_is_a_fixed_fraction_of_users(tmp_path):
    from conftest import make_context
    from recbole_bet.training import validation_subset

    ctx = make_context("LightGCN", tmp_path)
    uid = ctx.valid_data._dataset.uid_field
    all_users = set(ctx.valid_data._dataset.inter_feat[uid].numpy())
    half = validation_subset(ctx.config, ctx.valid_data, 0.5, seed=1)
    again = validation_subset(ctx.config, ctx.valid_data, 0.5, seed=1)
    users = set(half._dataset.inter_feat[uid].numpy())
    assert users == set(again._dataset.inter_feat[uid].numpy()) and users < all_users
    assert abs(len(users) - len(all_users) / 2) <= 1
    result = ctx.evaluate(half)  # RecBole's evaluator runs on the subset loader
    assert 0 <= result["recall@20"] <= 1


def test_loading_weights_keeps_masked_entries_zero_and_overhead_measure_changes_nothing(tmp_path):
    from recbole_bet.export import artifact_overhead_bytes
    from recbole_bet.masking import load_plain_state_dict, plain_state_dict

    ctx = make_context("NeuMF", tmp_path)
    sizes = np.random.default_rng(0).integers(1, ctx.masked.d_max, ctx.masked.n_users + ctx.masked.n_items)
    ctx.masked.set_sizes(sizes)
    load_plain_state_dict(ctx.model, ctx.init_state)  # full-width values: the masked part is zeroed again
    for t in ctx.masked.tables:
        mask = table_mask(ctx.masked, t)
        assert torch.all(t.module.weight[mask == 0] == 0)
        assert torch.equal(t.module.weight[mask == 1], ctx.init_state[f"{t.name}.weight"][mask == 1])
    before = plain_state_dict(ctx.model)
    assert artifact_overhead_bytes(ctx.model, ctx.masked, {"model": "NeuMF"}) > 0
    after = plain_state_dict(ctx.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_early_stopping_waits_for_the_warm_up(tmp_path):
    """Patience counts only after warmup_epochs: with patience 1 a run still trains the warm-up through."""
    from conftest import make_context
    from recbole_bet.training import BestStateTrainer

    trained = {}
    for warmup in (0, 6):
        ctx = make_context("LightGCN", tmp_path / str(warmup), epochs=6, stopping_step=1, warmup_epochs=warmup)
        trainer = BestStateTrainer(ctx.config, ctx.model)
        trainer.fit(ctx.train_data, ctx.valid_data, verbose=False)
        trained[warmup] = len(trainer.train_loss_dict)
    assert trained[0] < 6  # this seed's validation score dips: patience 1 stops early...
    assert trained[6] == 6  # ...unless the warm-up holds it


def test_ranking_follows_new_weights_and_sizes_not_a_stale_cache(tmp_path):
    """LightGCN caches its propagated embeddings on the first full ranking and drops them only in
    calculate_loss: loading other weights (a best epoch) or other sizes must not rank with the old ones."""
    ctx = make_context("LightGCN", tmp_path)
    model, masked = ctx.model, ctx.masked
    users = Interaction({model.USER_ID: torch.arange(1, 6)})
    model.eval()
    first = model.full_sort_predict(users).clone()
    assert model.restore_user_e is not None  # the cache this test is about
    other = {k: torch.randn_like(v) if k.endswith("embedding.weight") else v for k, v in ctx.init_state.items()}
    masked.load(other)
    after_load = model.full_sort_predict(users).clone()
    model.restore_user_e = model.restore_item_e = None
    assert torch.equal(after_load, model.full_sort_predict(users))
    assert not torch.allclose(first, after_load)
    masked.set_sizes(np.full(masked.n_users + masked.n_items, 3))
    after_resize = model.full_sort_predict(users).clone()
    model.restore_user_e = model.restore_item_e = None
    assert torch.equal(after_resize, model.full_sort_predict(users))
    assert not torch.allclose(after_load, after_resize)


@pytest.mark.parametrize("model_name,mode", [("NeuMF", "lookup"), ("LightGCN", "direct")])
def test_masked_entries_stay_frozen_after_the_checked_steps(tmp_path, model_name, mode):
    """Past the first VERIFY_STEPS backward passes a table read only through its module gets no gradient
    masking pass (the gradient of each lookup is masked instead); one read directly keeps the gradient hook.
    Either way masked entries get exactly zero gradient and stay zero for every later step."""
    from recbole_bet.masking import VERIFY_STEPS

    torch.manual_seed(3)
    ctx = make_context(model_name, tmp_path)
    model, masked = ctx.model, ctx.masked
    sizes = np.random.default_rng(5).integers(1, masked.d_max, masked.n_users + masked.n_items)
    masked.set_sizes(sizes)
    assert set(masked.modes().values()) == {"auto"}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    start = {t.name: t.module.weight.detach().clone() for t in masked.tables}
    batches = iter(ctx.train_data)
    for step in range(VERIFY_STEPS + 3):
        optimizer.zero_grad()
        model.calculate_loss(next(batches)).backward()
        for t in masked.tables:
            grad, keep = t.module.weight.grad, table_mask(masked, t)
            assert torch.all(grad[keep == 0] == 0), (step, t.name)
        optimizer.step()
    assert set(masked.modes().values()) == {mode}
    for t in masked.tables:
        weight, keep = t.module.weight.detach(), table_mask(masked, t)
        assert torch.all(weight[keep == 0] == 0), t.name
        assert not torch.equal(weight[keep == 1], start[t.name][keep == 1]), f"{t.name} did not train"
    masked.set_sizes(sizes[::-1].copy())  # new masked entries: checked again before trusted
    assert set(masked.modes().values()) == {"auto" if mode == "lookup" else "direct"}


class _LookupAndDirect(nn.Module):
    """Reads its tables through the module and, when ``direct`` is set, also directly (a penalty on the
    whole item table), as a model outside RecBole's zoo might."""

    def __init__(self, direct: bool):
        super().__init__()
        self.user_embedding, self.item_embedding = nn.Embedding(5, 4), nn.Embedding(7, 4)
        self.direct = direct

    def loss(self, users, items):
        score = (self.user_embedding(users) * self.item_embedding(items)).sum()
        if self.direct:
            score = score + 0.1 * self.item_embedding.weight.sum()
        return -score


@pytest.mark.parametrize("direct", [False, True])
def test_a_direct_read_is_detected_and_its_gradient_masked(direct):
    torch.manual_seed(0)
    model = _LookupAndDirect(direct)
    masked = MaskedTables(model, find_tables(model, 5, 7), 4)
    masked.set_sizes(np.array([1, 2, 3, 4, 1, 2, 3, 4, 1, 2]))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    users, items = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 3, 5, 6])
    for _ in range(6):
        optimizer.zero_grad()
        model.loss(users, items).backward()
        optimizer.step()
    modes = masked.modes()
    assert modes["user_embedding"] == "lookup"
    assert modes["item_embedding"] == ("direct" if direct else "lookup")
    for t in masked.tables:
        keep = table_mask(masked, t)
        assert torch.all(t.module.weight[keep == 0] == 0), t.name
        assert torch.all(t.module.weight.grad[keep == 0] == 0), t.name


def test_fused_adam_trains_like_adam_and_keeps_masked_entries_frozen(tmp_path):
    """fused_adam=True: RecBole's trainer and BET's finetuner get torch's fused Adam; its steps match the
    stock Adam's up to rounding, and masked entries stay exactly zero under it."""
    from recbole_bet.training import BestStateTrainer, Finetuner, adam

    ctx = make_context("NeuMF", tmp_path, fused_adam=True)
    assert BestStateTrainer(ctx.config, ctx.model).optimizer.defaults["fused"] is True
    assert Finetuner(ctx.config, ctx.model).optimizer.defaults["fused"] is True
    masked = ctx.masked
    sizes = np.random.default_rng(2).integers(1, masked.d_max, masked.n_users + masked.n_items)
    batches = [b for _, b in zip(range(5), ctx.train_data)]
    weights = {}
    for fused in (False, True):
        masked.load(ctx.init_state, sizes)
        torch.manual_seed(0)  # NeuMF's dropout
        optimizer = adam(ctx.model.parameters(), 0.01, 0.0, {"fused_adam": fused, "device": "cpu"})
        assert bool(optimizer.defaults["fused"]) is fused
        ctx.model.train()
        for batch in batches:
            optimizer.zero_grad()
            ctx.model.calculate_loss(batch).backward()
            optimizer.step()
        weights[fused] = {t.name: t.module.weight.detach().clone() for t in masked.tables}
    for t in masked.tables:
        keep = table_mask(masked, t)
        assert torch.all(weights[True][t.name][keep == 0] == 0), t.name
        assert not torch.equal(weights[True][t.name], ctx.init_state[f"{t.name}.weight"] * keep)
        torch.testing.assert_close(weights[True][t.name], weights[False][t.name], rtol=1e-4, atol=1e-5)


def test_lookup_masking_gives_the_stock_gradient_times_the_mask_bit_for_bit(tmp_path):
    """The per-lookup path (NeuMF past its checks) changes no number: each table's gradient equals the stock
    model's gradient, at the same masked weights, multiplied by the mask."""
    from recbole_bet.masking import VERIFY_STEPS
    from recbole_bet.models import build_model

    ctx = make_context("NeuMF", tmp_path)
    masked = ctx.masked
    masked.set_sizes(np.random.default_rng(4).integers(1, masked.d_max, masked.n_users + masked.n_items))
    batches = iter(ctx.train_data)
    for _ in range(VERIFY_STEPS):
        ctx.model.zero_grad()
        ctx.model.calculate_loss(next(batches)).backward()
    assert set(masked.modes().values()) == {"lookup"}
    stock = build_model(ctx.config, ctx.train_data.dataset)
    stock.load_state_dict(ctx.model.state_dict())
    batch = next(batches)
    for model in (ctx.model, stock):
        model.eval()  # no dropout: both see the same function
        model.zero_grad()
        model.calculate_loss(batch).backward()
    stock_params = dict(stock.named_parameters())
    for name, param in ctx.model.named_parameters():
        expected = stock_params[name].grad
        mask = getattr(param, "_bet_mask", None)
        if mask is not None:
            expected = expected * mask.mask
        assert torch.equal(param.grad, expected), name


@pytest.mark.parametrize("model_name", ["NeuMF", "LightGCN"])
def test_seeded_second_moments_change_no_weight_through_mask_changes(tmp_path, model_name):
    """seed_masked_moments (masked entries' Adam second moments held at a positive value, where torch's sqrt
    is fast) gives the same weights bit for bit as plain Adam, including across a mask change in the
    optimiser's life (sizes enlarged, as ESAPN does) and a renewal of the seed (beta2 small enough to need
    one within the run); the seed is really there while the mask holds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # LightGCN's sparse products sum in a thread-dependent order on 2+ threads
    try:
        _check_seeded_moments(tmp_path, model_name)
    finally:
        torch.set_num_threads(threads)


def _check_seeded_moments(tmp_path, model_name):
    from recbole_bet.masking import MOMENT_FLOOR, MOMENT_SEED, seed_masked_moments

    ctx = make_context(model_name, tmp_path)
    masked = ctx.masked
    rng = np.random.default_rng(6)
    small = rng.integers(1, masked.d_max // 2, masked.n_users + masked.n_items)
    batches = [b for _, b in zip(range(4), ctx.train_data)]
    weights, seconds = {}, {}
    for seeded in (False, True):
        masked.load(ctx.init_state, small)
        torch.manual_seed(0)  # NeuMF's dropout
        optimizer = torch.optim.Adam(ctx.model.parameters(), lr=0.01, betas=(0.9, 0.3))  # renewal every 38 steps
        if seeded:
            seed_masked_moments(optimizer)
        ctx.model.train()
        for step in range(90):
            if step == 45:
                masked.set_sizes(small * 2)  # masked entries become kept: their moments must be the stock 0
            optimizer.zero_grad()
            ctx.model.calculate_loss(batches[step % len(batches)]).backward()
            optimizer.step()
            if step in (1, 44, 89):
                seconds[seeded, step] = {t.name: (optimizer.state[t.module.weight]["exp_avg_sq"].clone(),
                                                  table_mask(masked, t) == 1) for t in masked.tables}
        weights[seeded] = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    for name, value in weights[False].items():
        assert torch.equal(weights[True][name], value), name
    for t in masked.tables:
        for step in (1, 44, 89):
            (plain, keep), (seeded, _) = seconds[False, step][t.name], seconds[True, step][t.name]
            assert torch.equal(plain[keep], seeded[keep]), (t.name, step)
            assert torch.all(plain[~keep] == 0)  # what makes plain Adam slow on CPU
            # the seed, decayed but renewed before it falls under the floor (0.3 ** 44 would be below it)
            assert torch.all(seeded[~keep] >= MOMENT_FLOOR) and torch.all(seeded[~keep] <= MOMENT_SEED), step


@pytest.mark.parametrize("model_name,extra,layout", [("LightGCN", {}, torch.sparse_csr),
                                                      ("NGCF", {}, torch.sparse_csr),
                                                      ("NGCF", {"node_dropout": 0.1}, torch.sparse_coo)])
def test_graph_models_use_csr_adjacency_with_the_stock_models_numbers(tmp_path, model_name, extra, layout):
    """On CPU the normalised adjacency is held as CSR (faster sparse products), except where RecBole reads its
    COO indices (NGCF's node dropout); loss, gradients and full-ranking scores match RecBole's own model."""
    from recbole.utils import get_model

    ctx = make_context(model_name, tmp_path, **extra)
    assert ctx.model.norm_adj_matrix.layout == layout
    stock = get_model(model_name)(ctx.config, ctx.train_data.dataset)
    assert stock.norm_adj_matrix.layout == torch.sparse_coo
    stock.load_state_dict(ctx.model.state_dict())
    batch = next(iter(ctx.train_data))
    for model in (ctx.model, stock):
        model.eval()  # no dropout: both compute the same function
        model.zero_grad()
        model.calculate_loss(batch).backward()
    for (name, ours), theirs in zip(ctx.model.named_parameters(), stock.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
    users = Interaction({ctx.model.USER_ID: torch.arange(1, 9)})
    with torch.no_grad():
        torch.testing.assert_close(ctx.model.full_sort_predict(users), stock.full_sort_predict(users),
                                   rtol=1e-4, atol=1e-5)
    if extra:  # node dropout on: trains through RecBole's COO path
        ctx.model.train()
        ctx.model.calculate_loss(batch).backward()


def test_topk_collector_builds_recboles_tensor_bit_for_bit(tmp_path):
    """TopkCollector's rec.topk equals RecBole's Collector's on scores with ties and repeated positive pairs,
    and a whole validation through Scorer gives RecBole's Trainer.evaluate metrics exactly."""
    from recbole.evaluator import Collector
    from recbole.trainer import Trainer

    from recbole_bet.training import TopkCollector

    ctx = make_context("LightGCN", tmp_path)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (7, 30), generator=gen).float()  # many ties
    positive_u = torch.tensor([0, 0, 0, 2, 2, 3, 6, 6, 6, 6])
    positive_i = torch.tensor([1, 1, 4, 0, 29, 7, 3, 5, 3, 9])  # (0, 1) and (6, 3) twice
    tensors = []
    for cls in (Collector, TopkCollector):
        collector = cls(ctx.config)
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
        collector.eval_batch_collect(scores[:3], None, positive_u[:3], positive_i[:3])
        tensors.append(collector.get_data_struct().get("rec.topk"))
    assert torch.equal(tensors[0], tensors[1])
    assert tensors[1][0, -1] == 2 and tensors[1][6, -1] == 3  # positives counted once each
    assert ctx.evaluate(ctx.valid_data) == dict(Trainer(ctx.config, ctx.model).evaluate(ctx.valid_data,
                                                                                       load_best_model=False))


def _graph_nodes(tensor) -> set:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize("model_name", ["LightGCN", "NGCF"])
def test_symmetric_backward_reroutes_the_graph_products_with_the_same_gradients(tmp_path, model_name):
    """Inside symmetric_backward the products with the (symmetric) adjacency take A @ G as their gradient:
    the gradients are those of torch's own backward, to rounding; models without such a graph get a no-op."""
    import contextlib

    from recbole_bet.models import symmetric_backward

    ctx = make_context(model_name, tmp_path)
    batch = next(iter(ctx.train_data))
    ctx.model.eval()  # no dropout
    grads, nodes = [], []
    for mode in (contextlib.nullcontext(), symmetric_backward(ctx.model)):
        ctx.model.zero_grad()
        with mode:
            loss = ctx.model.calculate_loss(batch)
            nodes.append(_graph_nodes(loss))
            loss.backward()
        grads.append([p.grad.clone() for p in ctx.model.parameters()])
    assert "_SymmetricSparseMMBackward" not in nodes[0] and "_SymmetricSparseMMBackward" in nodes[1]
    assert "forward" not in vars(ctx.model)  # the model's own forward again once the context is left
    for (name, _), plain, rerouted in zip(ctx.model.named_parameters(), *grads):
        torch.testing.assert_close(rerouted, plain, rtol=1e-5, atol=1e-7, msg=name)
    neumf = make_context("NeuMF", tmp_path / "neumf")
    assert isinstance(symmetric_backward(neumf.model), contextlib.nullcontext)
