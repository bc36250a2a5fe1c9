"""Services: what the API, the dashboard and the CLI call to act on stored state.

Each module does one job (consent and suppression storage, link verification, contact
lookup, CSV import...). They depend on the domain and on storage, never on a router:
routers depend on them, and each caller only parses its input and presents the result.
"""
