"""The community backend: HTTP API and pages, accounts, wallet, group buys, records."""
