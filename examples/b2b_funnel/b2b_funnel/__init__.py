"""The four-step B2B sales funnel example: verification, development, proposal, closing
(``STAGECOACH_PIPELINE=b2b_funnel`` when no project names its own definitions)."""
