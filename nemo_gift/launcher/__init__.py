"""Compose a recipe from ``conf/``, validate it, and run it locally or submit it to Slurm.

The command-line entry is ``launcher/run.py`` (``python launcher/run.py conf=gift_tiny``).
"""
