"""The QR code stuck on a cabinet: the URL of that cabinet's page.

``freshbox qr CABINET -o FILE.png`` prints it with :func:`write_qr_png`;
operator pages show it inline with :func:`qr_svg`. A phone that scans it opens
``{public_url}/c/{cabinet_id}`` (:func:`cabinet_url`), the page with the Open button.
"""

from __future__ import annotations

import os
from pathlib import Path

import qrcode
import qrcode.constants
from markupsafe import Markup, escape

from backend.errors import InputError
from cloud_sync.errors import InvalidIdentifier
from cloud_sync.topics import validate_cabinet_id

__all__ = ["BORDER", "cabinet_url", "qr_matrix", "qr_svg", "write_qr_png"]

#: the quiet zone around the code, in modules (the standard asks for at least 4)
BORDER = 4


def cabinet_url(public_url: str, cabinet_id: str) -> str:
    """``{public_url}/c/{cabinet_id}``; a bad cabinet id is an InputError naming ``cabinet``."""
    try:
        validate_cabinet_id(cabinet_id)
    except InvalidIdentifier as exc:
        raise InputError("cabinet", str(exc)) from None
    base = public_url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise InputError("public_url", "must start with http:// or https://")
    return f"{base}/c/{cabinet_id}"


def _code(url: str, box_size: int = 10) -> qrcode.QRCode:
    if not url:
        raise InputError("url", "is empty")
    if box_size < 1 or box_size > 100:
        raise InputError("box_size", "must be from 1 to 100")
    # M: survives a scratched or partly dirty sticker (15% of the code)
    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=box_size, border=BORDER
    )
    code.add_data(url)
    code.make(fit=True)
    return code


def qr_matrix(url: str) -> list[list[bool]]:
    """The modules of ``url``'s code, quiet zone included (True = dark)."""
    return [[bool(m) for m in row] for row in _code(url).get_matrix()]


def write_qr_png(url: str, path: str | Path, *, box_size: int = 10) -> None:
    """Write ``url``'s code as a black-on-white PNG (``box_size`` pixels per module).

    The file is written next to ``path`` and renamed into place, so a printer never
    sees half a file; the folder must exist.
    """
    target = Path(path)
    image = _code(url, box_size).make_image(fill_color="black", back_color="white")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            image.save(fh, format="PNG")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def qr_svg(url: str, *, title: str | None = None) -> str:
    """``url``'s code as an inline ``<svg>`` element that scales to its container.

    It is returned as ``Markup``, so a template can put it in a page as it is.
    """
    matrix = qr_matrix(url)
    n = len(matrix)
    runs: list[str] = []
    for y, row in enumerate(matrix):
        x = 0
        while x < n:
            if not row[x]:
                x += 1
                continue
            start = x
            while x < n and row[x]:
                x += 1
            runs.append(f"M{start} {y}h{x - start}v1h-{x - start}z")
    label = escape(title or url)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {n} {n}" '
        f'shape-rendering="crispEdges" role="img" aria-label="{label}" class="qr">'
        f"<title>{label}</title>"
        f'<rect width="{n}" height="{n}" fill="#fff"/>'
        f'<path fill="#000" d="{"".join(runs)}"/></svg>'
    )
