"""ftplan_runtime: what compiled ftplan plans launch (data prep, SFT, DPO, merge, GGUF export).

Installed under the import name ``ftplan_runtime`` (the source folder is ``runtime/``).
"""
