"""The model of a pipeline: plain data and the rules over it.

``definition`` (what a user declares, validated), ``sink`` (schemes, options,
secret names, the table spec), ``lifecycle`` (the statuses and every move
between them), ``layout`` (the one naming rule for a sink's files),
``manifest`` (the typed record of an epoch's files) and ``redaction``.
Nothing here imports Flask, Beam or a connector.
"""
