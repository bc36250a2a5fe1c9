"""Broadcasts: the store, audience snapshots, batches and reports."""
