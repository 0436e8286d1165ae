"""python run_bet.py --model=LightGCN --dataset=ml-100k [--method=bet] [--sparsity=0.9] [--KEY=VALUE ...]"""
import sys

from recbole_bet.cli import run_bet_main

if __name__ == "__main__":
    sys.exit(run_bet_main())
