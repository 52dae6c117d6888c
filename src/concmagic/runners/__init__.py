"""Runners: run a cell function N ways. They know nothing of IPython.

Each runner takes ``func`` (called as ``func(worker_id=i, n_workers=n)``), a
worker count and options, and returns a Report; none of them raises for a
failed worker (the engine decides that).
"""
