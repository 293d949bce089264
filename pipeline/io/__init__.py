"""Bytes in and records out: image decoding and bad input, sources and dataset readers
(listings and ground truth), the Parquet schema, shards, run records and progress.

Imports nothing above `pipeline.config` (no features, no models).
"""
