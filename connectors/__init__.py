"""Stagecoach channel connectors: email, WeChat, CRM and webhook delivery."""
