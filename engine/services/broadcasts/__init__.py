"""Broadcasts: the store, audience snapshots, batches and reports.

``store`` keeps broadcasts and their snapshots; ``metrics`` adds up what each achieved;
``launch`` is what the CLI and the API call to check, save, start and steer one;
``wechat_jobs`` records WeChat mass-send jobs and their callbacks.
"""
