"""The CPU experiment harness: ``run.py`` runs a spec's arms over seeds, ``report.py`` summarizes.

A package only so that ``run.py`` and the tests can import ``experiments.report``; both files
also run as scripts (``python experiments/run.py``). See experiments/README.md.
"""
