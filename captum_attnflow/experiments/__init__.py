"""Reproductions of the paper's experiments (Abnar & Zuidema, 2020).

- :mod:`captum_attnflow.experiments.sva`: Tables 1–2, attention rollout/flow against blank-out
  and input gradients on a subject–verb agreement classifier trained from scratch.
"""
