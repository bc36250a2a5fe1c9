"""Stagecoach durable runtime: contact workflows, activities, the worker and client helpers."""
