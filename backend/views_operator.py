"""Placeholder: replaced by the views module."""

from aiohttp import web


def setup(app: web.Application) -> None:
    pass
