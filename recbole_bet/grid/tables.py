"""Writing tables: ``<results_dir>/<dataset>.csv`` (one row per finished cell), ``.md`` (mean ± std over seeds,
paired t-tests, wins/ties/losses, the paper's numbers) and ``.png`` (test Recall@20 and NDCG@20 against
sparsity), built from every grid YAML in the same folder as the grid that writes its tables to the same
results_dir."""
from __future__ import annotations

import csv
import datetime as _dt
from pathlib import Path

from recbole_bet.grid.cells import shown
from recbole_bet.grid.load import METRICS, SHORT, Grid, grids_dir
from recbole_bet.grid.rows import CSV_COLUMNS, collect, merge_set, n_asked, n_finished, previous_rows
from recbole_bet.grid.stats import plotted_labels, significance, summarize, variants_against_bet, wins_ties_losses


def _fmt_ms(mean, std, digits=4) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _fmt_wall(seconds) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _table_head(intro: str, head: list, left: tuple) -> list:
    """An explaining paragraph, then a markdown table's header: the columns in ``left`` left-aligned (text), the
    others right-aligned (numbers)."""
    return [intro, "", "| " + " | ".join(head) + " |",
            "|" + "|".join("---" if k in left else "--:" for k in range(len(head))) + "|"]


def _num(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _paper_for(grids: list, dataset: str) -> tuple:
    paper, sources = {}, []
    for g in grids:
        for model, labels in g.paper.get(dataset, {}).items():
            for label, by_s in labels.items():
                for s, metrics in by_s.items():
                    paper.setdefault(model, {}).setdefault(label, {}).setdefault(s, {}).update(metrics)
        if g.paper.get(dataset) and g.paper_source and g.paper_source not in sources:
            sources.append(g.paper_source)
    return paper, sources


def grid_shown(path, workdir) -> str:
    """A grid file as the tables name it: relative to the workdir (a checkout's ``grids/...``), else the
    package's own ``recbole_bet/grids/...`` for a bundled grid, else absolute."""
    text = shown(path, workdir)
    if not Path(text).is_absolute():
        return text
    try:
        return str(Path("recbole_bet") / "grids" / Path(path).resolve().relative_to(grids_dir()))
    except (ValueError, FileNotFoundError):
        return text


def write_markdown(path: Path, dataset: str, grids: list, rows: list, expected: dict, command: str) -> None:
    models = list(dict.fromkeys(m for (m, _, _) in expected))
    paper, sources = _paper_for(grids, dataset)
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    used = [g for g in grids if dataset in g.datasets]
    lines = [f"# {dataset}: results", "",
             f"Produced by `{command}` on {now}.", "",
             "Test metrics of finished cells, `mean ± std` over seeds (std with ddof=1; a bare mean means one "
             "seed). *realised* is the mean realised sparsity (1 - kept / full parameters). *from* is how many "
             "trainings each final model was chosen from on validation (BET: its top-k retrainings; `bet@1` is the "
             "first of them, the fittest action, at no extra cost; under `bet_retrain_columns: choose` one more, "
             "and `@prefix` is the model its first columns gave, the run without that choice). *conv.* is how many "
             "cells had every training end by the convergence test rather than the epoch cap. *valid N@20* is the validation NDCG@20 of the "
             "final models, on which every setting is chosen (test metrics only report). *seeds* is finished / "
             "asked for by the grids. *wall* is the summed wall time of the cells' `run_bet.py` subprocesses "
             "(`cell.json`; the report's `timings_s.total` where that is missing). The best mean per sparsity "
             "and metric is in bold.", "",
             "Grids merged (every grid YAML in the same folder writing tables to the same place):", ""]
    for g in used:
        files = ", ".join(g.config_files) if g.config_files else "none (paper defaults)"
        extra = ", ".join(f"{k}={v}" for k, v in g.config.items()) or "none"
        lines.append(f"- `{grid_shown(g.path, g.workdir)}` (grid `{g.name}`): config_files {files}; config {extra}; "
                     f"outputs `{shown(g.output_root, g.workdir)}`")
    lines.append("")
    for model in models:
        groups, sparsities, labels = summarize(rows, expected, model)
        has_paper = bool(paper.get(model))
        lines += [f"## {model}", ""]
        head = ["method", "sparsity", "realised"]
        for m in METRICS:
            head.append(SHORT[m])
            if has_paper:
                head.append(f"{SHORT[m]} paper")
        head += ["valid N@20", "from", "conv.", "seeds", "wall"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 2)) + "|"]
        for s in sparsities:
            best = {}
            for m in METRICS:
                means = [groups[l, s]["stats"][m][0] for l in labels
                         if (l, s) in groups and groups[l, s]["budget_applied"]]
                means = [v for v in means if v is not None]
                best[m] = max(means) if means else None
            for label in labels:
                if (label, s) not in groups:
                    continue
                g = groups[label, s]
                shown_label = label if g["budget_applied"] else f"{label} ‡"
                cells = [shown_label, f"{s:g}", "–" if g["realized"] is None else f"{g['realized']:.4f}"]
                for m in METRICS:
                    mean, std = g["stats"][m]
                    text = _fmt_ms(mean, std)
                    if mean is not None and best[m] is not None and mean == best[m] and len(labels) > 1 \
                            and g["budget_applied"]:
                        text = f"**{text}**"
                    cells.append(text)
                    if has_paper:
                        value = paper.get(model, {}).get(label, {}).get(s, {}).get(m)
                        cells.append("–" if value is None else f"{value:.4f}")
                cells += [_fmt_ms(*g["valid"]), g["selected_from"], g["converged"], f"{len(g['rows'])}/{g['expected']}",
                          _fmt_wall(g["wall"])]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if any(not g["budget_applied"] for g in groups.values() if g["rows"]):
            lines += ["‡ budget not applied (the method as published cannot target one): *realised* is the "
                      "sparsity it reached, the sparsity column only places it; it is never bold and never the rival in "
                      "the t-test.", ""]
        sig = significance(groups, sparsities, labels)
        if sig:
            lines += _table_head("Paired t-test over seeds (`scipy.stats.ttest_rel`, two-sided, test metrics): BET "
                                 "(label `bet`) against the non-BET method that met the budget with the best mean test "
                                 "Recall@20 at that sparsity (over all its seeds). Δ = BET - that method, averaged "
                                 "over the paired seeds.",
                                 ["sparsity", "BET vs", "paired seeds", "Δ R@20", "p (R@20)", "Δ N@20", "p (N@20)"],
                                 left=(0, 1))
            for e in sig:
                if e["rival"] is None:
                    lines.append(f"| {e['sparsity']:g} | (no baseline finished) | – | – | n/a | – | n/a |")
                    continue
                ps = {m: _num(e[m], ".4f") for m in ("recall@20", "ndcg@20")}
                ds = {m: _num(e[f"delta_{m}"], "+.4f") for m in ("recall@20", "ndcg@20")}
                lines.append(f"| {e['sparsity']:g} | {e['rival']} | {e['n']} | {ds['recall@20']} | "
                             f"{ps['recall@20']} | {ds['ndcg@20']} | {ps['ndcg@20']} |")
            lines.append("")
            if any(e["rival"] is None or e["recall@20"] is None or e["ndcg@20"] is None for e in sig):
                lines += ["n/a: fewer than 2 seeds finished for both methods (or all paired differences equal).", ""]
        tally = wins_ties_losses(groups, sparsities, labels)
        if tally:
            lines += _table_head("BET (label `bet`) against each baseline over the sparsities where both have paired "
                                 "seeds: a win or a loss is a paired t-test on test Recall@20 with p < 0.05 in that "
                                 "direction, anything else a tie.",
                                 ["baseline", "wins", "ties", "losses", "sparsities (Δ R@20, p)"], left=(0, 4))
            for rival, t in tally.items():
                detail = "; ".join(f"{s:g}: {d:+.4f}, {'n/a' if p is None else f'{p:.3f}'}"
                                   for s, d, p in t["detail"])
                lines.append(f"| {rival} | {t['win']} | {t['tie']} | {t['loss']} | {detail} |")
            lines.append("")
        variants = variants_against_bet(groups, sparsities, labels)
        if variants:
            lines += _table_head("BET's variants (other labels of the BET method: an ablation's levers) against `bet` "
                                 "over their paired seeds: Δ = variant - bet. A default is chosen on validation "
                                 "NDCG@20; test Recall@20 only reports. Paired t-tests (`scipy.stats.ttest_rel`); "
                                 "*retrain s* is the mean retraining time (`timings_s.retrain`) of the variant / of bet "
                                 "over the same seeds.",
                                 ["variant", "sparsity", "paired seeds", "Δ valid N@20", "p (valid)", "Δ test R@20",
                                  "p (test)", "retrain s"], left=(0, 1))
            for e in variants:
                retrain = ("–" if e["retrain_s"] is None or e["bet_retrain_s"] is None
                           else f"{e['retrain_s']:.0f} / {e['bet_retrain_s']:.0f}")
                numbers = [_num(e["delta_valid"], "+.4f"), _num(e["p_valid"], ".3f"), _num(e["delta_test"], "+.4f"),
                           _num(e["p_test"], ".3f"), retrain]
                lines.append(f"| {e['label']} | {e['sparsity']:g} | {e['n']} | " + " | ".join(numbers) + " |")
            lines.append("")
    if sources:
        # a source may end its own sentence
        lines += ["Paper columns: " + "; ".join(s.rstrip(".") for s in sources) + ".", ""]
    carried = sum(1 for r in rows if r.get("carried"))
    if carried:
        lines += [f"{carried} of the finished cells have no run folder here: their rows are kept from the previous "
                  f"`{dataset}.csv` (delete a row there to drop it).", ""]
    finished, asked = n_finished(rows), n_asked(expected)
    lines += [f"{finished} of {asked} cells finished"
              + (f"; {asked - finished} missing or failed." if asked > finished else "."), ""]
    path.write_text("\n".join(lines))


def write_csv(path: Path, rows: list) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})


# saturated colours unlike matplotlib's ten default ones, for grids with more methods than the style's cycle
# (tab20's extra ten are pale twins of the same hues: a pale line reads as a variant of its dark twin)
EXTRA_COLOURS = ["#1a237e", "#7b1e1e", "#00897b", "#556b2f", "#c2185b", "#c49a00", "#455a64", "#4a148c"]


def line_styles(others: list, cycle: list) -> dict:
    """A (colour, marker) per label: BET black (thicker, drawn under the others by the caller), every other label
    its own colour from the style's cycle, then from EXTRA_COLOURS; past those, colours repeat with another marker."""
    import matplotlib

    # black is BET's: keep it out of the others' colours should a user's matplotlib style cycle through it
    colors = [c for c in cycle if not matplotlib.colors.same_color(c, "black")]
    if len(others) > len(colors):
        colors += [c for c in EXTRA_COLOURS if not any(matplotlib.colors.same_color(c, o) for o in colors)]
    markers = "osD^v"
    styles = {label: (colors[i % len(colors)], markers[(i // len(colors)) % len(markers)])
              for i, label in enumerate(others)}
    styles["bet"] = ("black", "o")
    return styles


def seed_count(counts: list) -> str:
    """The legend's n: one number, or the range where sparsities have different numbers of seeds."""
    low, high = min(counts), max(counts)
    return f"{low}" if low == high else f"{low}-{high}"


def write_plot(path: Path, dataset: str, grids: list, rows: list, expected: dict) -> bool:
    try:
        import matplotlib
    except ImportError:
        print(f"note: matplotlib is not installed, so {path.name} was not drawn; install it with "
              "`pip install matplotlib` (a dependency of recbole-bet) and rerun with --tables-only")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(m for (m, _, _) in expected))
    paper, _ = _paper_for(grids, dataset)
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.9 * len(models)), squeeze=False)
    drawn = {}
    for model in models:
        groups, sparsities, labels = summarize(rows, expected, model)
        drawn[model] = (groups, sparsities, *plotted_labels(groups, labels))
    left_out = any(hidden for *_, hidden in drawn.values())
    # one colour (and marker) per label across the models, so that es is the same line in every panel
    others = list(dict.fromkeys(label for *_, labels, _ in drawn.values() for label in labels if label != "bet"))
    styles = line_styles(others, plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for r, model in enumerate(models):
        groups, sparsities, labels, _ = drawn[model]
        for c, metric in enumerate(("recall@20", "ndcg@20")):
            ax = axes[r][c]
            for label in labels:
                color, marker = styles[label]
                # the default BET: black and thicker, drawn under the others so a baseline level with it stays visible
                is_bet = label == "bet"
                xs = [s for s in sparsities if (label, s) in groups and groups[label, s]["stats"][metric][0] is not None]
                if xs:
                    means = [groups[label, s]["stats"][metric][0] for s in xs]
                    stds = [groups[label, s]["stats"][metric][1] or 0.0 for s in xs]
                    n = seed_count([len(groups[label, s]["rows"]) for s in xs])
                    ax.errorbar(xs, means, yerr=stds, marker=marker, capsize=3, color=color,
                                linewidth=4 if is_bet else 1.5, zorder=1.5 if is_bet else 2,
                                label=f"{label} (n={n})")
                ref = paper.get(model, {}).get(label, {})
                px = sorted(s for s in ref if metric in ref[s])
                if px:
                    ax.plot(px, [ref[s][metric] for s in px], linestyle="--", marker="x", color=color, alpha=0.7,
                            label=f"{label} (paper)")
            ax.set_title(f"{dataset} · {model} · test {SHORT[metric]}")
            ax.set_xlabel("sparsity")
            ax.set_ylabel(SHORT[metric].replace("R@", "Recall@").replace("N@", "NDCG@"))
            if sparsities:
                ax.set_xticks(sparsities)
                ax.set_xticklabels([f"{s:g}" for s in sparsities])
            ax.grid(alpha=0.3)
            if c == 1 and ax.has_data():  # one legend per model, outside the plots: ours first, then the paper's
                handles, names = ax.get_legend_handles_labels()
                order = sorted(range(len(names)), key=lambda i: names[i].endswith("(paper)"))
                ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize=8, loc="upper left",
                          bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(f"{dataset}: mean over seeds, error bars = std over seeds"
                 + ("; BET's variants and derived rows are in the .md tables" if left_out else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def build_tables(grid: Grid, command: str) -> list:
    """Write <results_dir>/<dataset>.csv/.md/.png for every dataset of the grid; returns the paths."""
    grids = merge_set(grid)
    grid.results_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in grid.datasets:
        base = grid.results_dir / dataset
        rows, expected = collect(grids, dataset, previous_rows(base.with_suffix(".csv")))
        write_csv(base.with_suffix(".csv"), rows)
        write_markdown(base.with_suffix(".md"), dataset, grids, rows, expected, command)
        written += [base.with_suffix(".csv"), base.with_suffix(".md")]
        if write_plot(base.with_suffix(".png"), dataset, grids, rows, expected):
            written.append(base.with_suffix(".png"))
        print(f"tables for {dataset}: {n_finished(rows)} of {n_asked(expected)} cells finished -> "
              f"{', '.join(shown(p) for p in written if p.stem == dataset)}")
    return written
