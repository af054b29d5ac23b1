"""Test doubles of GPU-only libraries. Put this directory on ``sys.path`` (or ``PYTHONPATH``) to
import them under their real names; nothing outside ``tests/`` does."""
