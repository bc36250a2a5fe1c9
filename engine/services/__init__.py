"""Services: the work the API, the dashboard and the CLI share, behind no interface of
their own (storage, ingestion, imports, publishing...); each caller only parses its input
and presents the result."""
