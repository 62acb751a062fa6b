"""Tasks with verifiable rewards (``tasks``, ``rewards``) and resumable prompt loading (``loader``).

Nothing is re-exported here: the driver imports ``tasks`` to validate a config and must not pay for the
loader's torch import."""
