"""Faithfulness of rollout and flow under each edge weighting (issue 20's table).

``python -m captum_attnflow.experiments.faithfulness [--quick]`` trains or loads three models
(:mod:`.tasks`), scores every method (:mod:`.methods`) with ERASER AOPC, blank-out Spearman and
the parameter-randomisation check (:mod:`.run`, built on
:mod:`captum_attnflow.evaluation.faithfulness`), and writes the table, CSV and figure (:mod:`.report`).
"""
