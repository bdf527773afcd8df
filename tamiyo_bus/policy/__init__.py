"""Tamiyo's policy: typed graph builder, heterogeneous GNN (fast and reference forms),
action space, checkpoints.

Layout: ``schema`` (node types, relations), ``topology`` (the host description),
``features`` and ``registry`` (input layout, normalisation, stable hashing, digest),
``graph`` (packet -> typed graph), ``reference`` (the trainable PyG model), ``network``
(the fused inference form), ``heads`` and ``actions`` (outputs, masks, selection),
``serving`` (the module the step path runs), ``checkpoint``, ``synthetic`` (states of
the benchmark sizes).
"""
