"""The per-batch callables that Ray maps (and in-process runs call): image bytes through
features, spectrum, segments to shard rows.

May import every stage; nothing in `pipeline` imports it.
"""
