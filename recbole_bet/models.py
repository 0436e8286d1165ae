"""Building stock RecBole models at full width, and fast full ranking for models that lack it."""
from __future__ import annotations

import contextlib
import types

import torch
from recbole.utils import get_model
from torch import nn
from torch.overrides import TorchFunctionMode

# Score at most this many (user, item, hidden) floats at once: bounds memory on any dataset size. On CPU a
# block that stays in cache (1 MB) scores ml-100k's NeuMF validation 2.5-2.8x faster than 64 MB blocks
# (docs/performance.md, "Small data"); GPUs want large blocks.
_CHUNK_ELEMENTS = {"cpu": 1 << 18}
_CHUNK_ELEMENTS_DEFAULT = 1 << 24


def _pair_blocks(n_users: int, n_items: int, per_pair: int, device: torch.device):
    """(user slice, item slice) blocks covering users x items, each at most the device's chunk of floats."""
    chunk = _CHUNK_ELEMENTS.get(torch.device(device).type, _CHUNK_ELEMENTS_DEFAULT)
    if n_items * per_pair <= chunk:
        user_step, item_step = chunk // (n_items * per_pair), n_items
    else:
        user_step, item_step = 1, max(1, chunk // per_pair)
    for u in range(0, n_users, user_step):
        for i in range(0, n_items, item_step):
            yield slice(u, u + user_step), slice(i, i + item_step)


def build_model(config, dataset) -> nn.Module:
    """The stock model on RecBole's configured device, with a full-ranking scorer attached if it has none
    and, on CPU, its graph held as CSR (``use_csr_adjacency``)."""
    return use_csr_adjacency(attach_full_sort(get_model(config["model"])(config, dataset).to(config["device"])))


def use_csr_adjacency(model: nn.Module) -> nn.Module:
    """Hold a graph model's normalised adjacency in CSR instead of RecBole's uncoalesced COO, on CPU.

    Why: LightGCN and NGCF spend most of a CPU train epoch in ``torch.sparse.mm`` with this matrix, and the
    same products are faster from CSR (docs/performance.md, "Graph models"). Same matrix, same products; sums may round in another order, as they already do
    between thread counts. Only where the matrix is used through ``torch.sparse.mm`` alone: LightGCN, and NGCF
    without node dropout (its dropout reads COO indices). Other devices keep RecBole's layout (not measured).
    """
    name = type(model).__name__
    adjacency = getattr(model, "norm_adj_matrix", None)
    usable = name == "LightGCN" or (name == "NGCF" and not getattr(model, "node_dropout", 0.0))
    if usable and isinstance(adjacency, torch.Tensor) and adjacency.layout == torch.sparse_coo \
            and adjacency.device.type == "cpu":
        adjacency = adjacency.coalesce()
        model.norm_adj_matrix = adjacency.to_sparse_csr()
        transposed = adjacency.t().coalesce()
        if torch.equal(adjacency.indices(), transposed.indices()) and torch.equal(adjacency.values(),
                                                                                  transposed.values()):
            model._bet_symmetric_adjacency = model.norm_adj_matrix
    return model


class _SymmetricSparseMM(torch.autograd.Function):
    """``A @ X`` for a sparse A equal to its transpose: the gradient ``A^T @ G`` is ``A @ G``."""

    @staticmethod
    def forward(ctx, adjacency, x):
        ctx.adjacency = adjacency
        return torch.sparse.mm(adjacency, x)

    @staticmethod
    def backward(ctx, grad):
        return None, torch.sparse.mm(ctx.adjacency, grad)


# what torch.sparse.mm dispatches through (torch 2.x); without it the mode below changes nothing
_SPARSE_MM = getattr(getattr(torch._C, "_sparse", None), "_sparse_mm", None)


class _SymmetricAdjacencyMode(TorchFunctionMode):
    def __init__(self, adjacency: torch.Tensor):
        super().__init__()
        self.adjacency = adjacency

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is _SPARSE_MM and args and args[0] is self.adjacency and not kwargs \
                and torch.is_grad_enabled() and args[1].requires_grad:
            return _SymmetricSparseMM.apply(*args)
        return func(*args, **(kwargs or {}))


def symmetric_backward(model: nn.Module):
    """A context in which the model's products with its (exactly symmetric, CSR) adjacency take their gradient
    as ``A @ G``; a no-op context for other models.

    Why: torch's backward of ``torch.sparse.mm(A, X)`` multiplies by the transpose of a CSR matrix, which
    costs more than the forward product (docs/performance.md, "Graph models"). The model's code is not touched: the torch-function
    mode reroutes only products with this exact tensor that need a gradient.
    """
    adjacency = getattr(model, "_bet_symmetric_adjacency", None)
    if adjacency is None or getattr(model, "norm_adj_matrix", None) is not adjacency:
        return contextlib.nullcontext()
    return _forward_in_mode(model, _SymmetricAdjacencyMode(adjacency))


@contextlib.contextmanager
def _forward_in_mode(model: nn.Module, mode: TorchFunctionMode):
    """Run only the model's ``forward`` (where the graph products are) inside ``mode``.

    Why not the whole epoch: a torch-function mode intercepts every torch call made inside it (batch collation,
    loss, Adam's per-parameter steps), about 140 per LightGCN batch, a tenth of a ml-100k epoch in Python."""
    if "forward" in vars(model):  # already patched (nested use): nothing to add
        yield
        return
    stock_forward = model.forward

    def forward(*args, **kwargs):
        with mode:
            return stock_forward(*args, **kwargs)

    model.forward = forward
    try:
        yield
    finally:
        del model.forward


def attach_full_sort(model: nn.Module) -> nn.Module:
    """Give the model instance a bounded-memory full-ranking scorer if its class lacks one."""
    scorer = FULL_SORT_SCORERS.get(type(model).__name__)
    if scorer is not None:
        model.full_sort_predict = types.MethodType(scorer, model)
    return model


def _first_linear(mlp: nn.Sequential) -> int:
    for i, module in enumerate(mlp):
        if isinstance(module, nn.Linear):
            return i
    raise ValueError("MLP without a Linear layer")


@torch.no_grad()
def neumf_full_sort_predict(self, interaction) -> torch.Tensor:
    """Scores of every item for each user of the batch, in bounded chunks (stock NeuMF has none).

    The first MLP layer on [e_u; e_i] splits into W_u e_u + W_i e_i, each computed once per ranking;
    only the remaining layers run per (user, item) pair, a few users at a time. Returns the logits
    (before NeuMF's sigmoid): same ranking, without the ties float32 sigmoid makes at large logits.
    """
    users = interaction[self.USER_ID]
    n_items = self.item_mf_embedding.num_embeddings
    parts = []
    w = self.predict_layer.weight[0]
    bias = self.predict_layer.bias[0]
    if self.mf_train:
        w_mf = w[: self.mf_embedding_size]
        mf_scores = (self.user_mf_embedding(users) * w_mf) @ self.item_mf_embedding.weight.T
        parts.append(mf_scores)
    if self.mlp_train:
        w_mlp = w[-self.mlp_hidden_size[-1]:]
        seq = self.mlp_layers.mlp_layers
        first = _first_linear(seq)
        lin = seq[first]
        d = self.mlp_embedding_size
        user_part = self.user_mlp_embedding(users) @ lin.weight[:, :d].T + lin.bias
        item_part = self.item_mlp_embedding.weight @ lin.weight[:, d:].T
        rest = seq[first + 1:]
        mlp_scores = torch.empty(len(users), n_items, device=users.device)
        for us, its in _pair_blocks(len(users), n_items, lin.out_features, users.device):
            x = user_part[us, None, :] + item_part[None, its, :]
            mlp_scores[us, its] = rest(x) @ w_mlp
        parts.append(mlp_scores)
    return (sum(parts) + bias).reshape(-1)


FULL_SORT_SCORERS = {"NeuMF": neumf_full_sort_predict}


def configure_width(config, d_max: int) -> None:
    """Make every user/item table d_max wide: the width keys RecBole's general models use."""
    for key in ("embedding_size", "mf_embedding_size", "mlp_embedding_size"):
        config[key] = d_max
