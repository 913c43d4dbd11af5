"""Renders the measured results under results/ as the Markdown tables of README.md.

Reads only what the experiment scripts wrote (nothing is typed in by hand) and
prints one section per result file found; missing files are skipped.

    python experiments/report.py                 # after the scripts in README's "Measured results"
    python experiments/report.py --results_dir results > /tmp/tables.md
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from jaxspec.benchmarking import readme

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = flags.DEFINE_string("results_dir", os.path.join(REPO, "results"), "Where the scripts wrote.")


def main(argv):
    del argv
    sys.stdout.write(readme.render(RESULTS.value))


if __name__ == "__main__":
    app.run(main)
