"""Statistics over seeds: mean ± std per method and sparsity, BET's paired t-test against its best rival,
BET's wins/ties/losses against every baseline, and each BET variant (ablation) against BET. numpy and scipy are
imported when first needed."""
from __future__ import annotations

import math

from recbole_bet.grid.load import METRICS


def mean_std(values):
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) >= 2 else None)


def paired(a: dict, b: dict) -> tuple:
    """(mean of a - b, p, n) over the seeds both have: the paired t-test and the difference it tests. The mean
    is None with no shared seed, p None with fewer than two (or all differences equal)."""
    seeds = sorted(set(a) & set(b))
    delta = sum(a[s] - b[s] for s in seeds) / len(seeds) if seeds else None
    if len(seeds) < 2:
        return delta, None, len(seeds)
    from scipy.stats import ttest_rel

    p = float(ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return delta, (None if math.isnan(p) else p), len(seeds)


def summarize(rows: list, expected: dict, model: str) -> tuple:
    """(groups, sparsities, labels): groups[(label, sparsity)] = per-seed values and summaries."""
    labels, sparsities, groups = [], [], {}
    for (m, label, s), asked in expected.items():  # grid order
        if m != model:
            continue
        if label not in labels:
            labels.append(label)
        if s not in sparsities:
            sparsities.append(s)
        groups[label, s] = {"expected": asked["n"], "rows": [], "base": asked["base"]}
    for row in rows:
        if row["model"] == model:
            groups[row["method"], row["sparsity"]]["rows"].append(row)
    for g in groups.values():
        g["seeds"] = {r["seed"]: r for r in g["rows"]}
        g["stats"] = {m: mean_std([r[f"test_{m}"] for r in g["rows"]]) for m in METRICS}
        g["valid"] = mean_std([r.get("valid_ndcg@20") for r in g["rows"]])  # what every choice is made on
        g["realized"] = mean_std([r["realized_sparsity"] for r in g["rows"]])[0]
        g["budget_applied"] = all(r["budget_applied"] for r in g["rows"])
        froms = sorted({r.get("selected_from") or 1 for r in g["rows"]})
        g["selected_from"] = "/".join(str(f) for f in froms) if froms else "–"
        conv = [r.get("all_converged") for r in g["rows"] if r.get("all_converged") is not None]
        g["converged"] = f"{sum(conv)}/{len(conv)}" if conv else "–"
        walls = [r["wall_s"] if r["wall_s"] is not None else r["total_s"] for r in g["rows"]]
        g["wall"] = sum(w for w in walls if w is not None) if g["rows"] else None
    return groups, sorted(sparsities), labels


def plotted_labels(groups: dict, labels: list) -> tuple:
    """(drawn, left to the tables): with a default ``bet`` row, the picture shows it and every label of another
    method; BET's other labels (its variants and ``@1`` rows) stay in the .md, where the variants table compares
    each with ``bet``. Without a ``bet`` row everything is drawn."""
    if "bet" not in labels:
        return list(labels), []
    base = {label: g["base"] for (label, _), g in groups.items()}
    drawn = [label for label in labels if label == "bet" or base.get(label) != "bet"]
    return drawn, [label for label in labels if label not in drawn]


def significance(groups: dict, sparsities: list, labels: list) -> list:
    """Per sparsity: BET (label ``bet``) against the non-BET method with the best mean test Recall@20 among
    those that met the budget (a method run without one keeps more parameters: no fair rival)."""
    out = []
    for s in sparsities:
        bet = groups.get(("bet", s))
        if bet is None or not bet["rows"]:
            continue
        rivals = [(groups[l, s]["stats"]["recall@20"][0], l) for l in labels
                  if (l, s) in groups and groups[l, s]["rows"] and groups[l, s]["base"] != "bet"
                  and groups[l, s]["budget_applied"]]
        if not rivals:
            out.append({"sparsity": s, "rival": None})
            continue
        _, rival = max(rivals)
        entry = {"sparsity": s, "rival": rival}
        for m in ("recall@20", "ndcg@20"):
            a = {k: r[f"test_{m}"] for k, r in bet["seeds"].items()}
            b = {k: r[f"test_{m}"] for k, r in groups[rival, s]["seeds"].items()}
            entry[f"delta_{m}"], entry[m], entry["n"] = paired(a, b)
        out.append(entry)
    return out


def wins_ties_losses(groups: dict, sparsities: list, labels: list, metric: str = "recall@20") -> dict:
    """BET (label ``bet``) against every other label that met the budget and is not a BET variant: per rival, the
    count of sparsities where BET wins / ties / loses (paired t-test on ``metric``, p < 0.05), with (sparsity, Δ,
    p) each."""
    out = {}
    for rival in labels:
        if rival == "bet":
            continue
        for s in sparsities:
            bet, other = groups.get(("bet", s)), groups.get((rival, s))
            if not bet or not other or not bet["rows"] or not other["rows"] or not other["budget_applied"]:
                continue
            if other.get("base") == "bet":  # BET's own variants: variants_against_bet compares them
                continue
            a = {k: r[f"test_{metric}"] for k, r in bet["seeds"].items()}
            b = {k: r[f"test_{metric}"] for k, r in other["seeds"].items()}
            delta, p, n = paired(a, b)
            if n < 2:
                continue
            outcome = "tie" if p is None or p >= 0.05 else ("win" if delta > 0 else "loss")
            t = out.setdefault(rival, {"win": 0, "tie": 0, "loss": 0, "detail": []})
            t[outcome] += 1
            t["detail"].append((s, delta, p))
    return out


def variants_against_bet(groups: dict, sparsities: list, labels: list) -> list:
    """Every other label run by the BET method (an ablation's lever; ``@1`` rows left out) against ``bet`` over
    their paired seeds: the difference in validation NDCG@20 (what a default is chosen on) and in test
    Recall@20 (reported only), each with its paired t-test, and both rows' mean retraining seconds."""
    out = []
    for s in sparsities:
        bet = groups.get(("bet", s))
        if not bet or not bet["rows"]:
            continue
        for label in labels:
            other = groups.get((label, s))
            if label == "bet" or label.endswith("@1") or not other or other["base"] != "bet" or not other["rows"]:
                continue
            seeds = sorted(set(other["seeds"]) & set(bet["seeds"]))
            entry = {"sparsity": s, "label": label, "n": len(seeds)}
            for key, column in (("valid", "valid_ndcg@20"), ("test", "test_recall@20")):
                a = {k: other["seeds"][k].get(column) for k in seeds if other["seeds"][k].get(column) is not None}
                b = {k: bet["seeds"][k].get(column) for k in seeds if bet["seeds"][k].get(column) is not None}
                entry[f"delta_{key}"], entry[f"p_{key}"], _ = paired(a, b)
            for name, g in (("retrain_s", other), ("bet_retrain_s", bet)):
                values = [g["seeds"][k].get("retrain_s") for k in seeds]
                entry[name] = mean_std(values)[0] if seeds and None not in values else None
            out.append(entry)
    return out
