"""The seven-stage lifecycle example: the definitions the engine runs when no project names
its own (``STAGECOACH_PIPELINE=default``)."""
