import sys

from recbole_bet.cli import package_main

sys.exit(package_main())
