"""``python -m distilled3dgs_ns.run``: the same as ``distilled3dgs-run``."""

from distilled3dgs_ns.run import entrypoint

entrypoint()
