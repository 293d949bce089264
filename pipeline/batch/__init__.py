"""The per-batch callables that Ray maps (and in-process runs call): image bytes through
features, spectrum, segments to shard rows (`extractor`), and on to objects and gallery
panels (`labeller`); images and trimaps to alpha mattes and cut-outs (`matter`).

May import every stage; nothing in `pipeline` imports it.
"""
