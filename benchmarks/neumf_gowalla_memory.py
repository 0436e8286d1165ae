"""Peak memory of NeuMF full-ranking validation on Gowalla with recbole-bet's chunked scorer.

Stock RecBole 1.2.1 has no NeuMF full_sort_predict and its fallback scores every (user, item) pair of a
batch at once; on Gowalla with a large eval batch it is killed for lack of memory (../shared/NOTES.md).

    python -m recbole_bet convert --input=../shared/datasets/gowalla   # once: dataset/gowalla/gowalla.inter
    python benchmarks/neumf_gowalla_memory.py

Prints one JSON line: users scored, seconds, peak RSS in GB (the whole process: data, model, scores).
The model is freshly initialised: scoring cost and memory do not depend on the weights.
"""
import argparse
import json
import resource
import sys
import time

from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_bet.config import make_config
from recbole_bet.models import build_model
from recbole_bet.training import Scorer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="gowalla")
    args, _ = parser.parse_known_args()
    sys.argv = sys.argv[:1]
    config = make_config("NeuMF", args.dataset, config_dict={"method": "es"})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    _, valid_data, _ = data_preparation(config, dataset)
    model = build_model(config, valid_data._dataset)
    scorer = Scorer(config, model)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    start = time.perf_counter()
    result = scorer.evaluate(valid_data)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "dataset": args.dataset, "model": "NeuMF", "users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1),
        "eval_batch_size": config["eval_batch_size"], "valid_seconds": round(seconds, 1),
        "peak_rss_gb_before_eval": round(rss_before, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "ndcg@20_untrained": result["ndcg@20"],
    }))


if __name__ == "__main__":
    main()
