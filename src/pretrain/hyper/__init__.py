"""Reversible-learning hypergradients (Maclaurin, Duvenaud & Adams 2015): `reversible` (exact fixed-point momentum
SGD with the information buffer, the reverse pass and its hypergradients), `proxy` (a GPT or an MLP as a function
of one flat vector, parameters grouped in units), `meta` (meta-optimization and export of the learned lr per unit).
The command line is `python -m pretrain.tools.hyperlearn`; the learned schedule replays through `schedule=learned`.
"""
