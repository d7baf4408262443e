"""One self-contained HTML page: inline style, inline script, no external resources.

Every name that comes from data (file names, class names, stage names) goes through
:func:`html.escape` before it is written into markup, and through :func:`script_json` before it
is written into a script, which the page's scripts then insert as text, never as markup.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222;
       background: #fff; padding: 0 16px; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { display: inline-block; vertical-align: top; margin: 0 1% 14px 0; }
img.figure { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
pre { background: #f7f7f7; padding: 8px; overflow: auto; max-height: 420px; font-size: 12px; }
.note { color: #666; }
.query { display: flex; gap: 6px; align-items: flex-start; margin: 8px 0; flex-wrap: wrap; }
.hit { text-align: center; font-size: 11px; width: 64px; overflow: hidden; }
.hit img { width: 56px; height: 56px; image-rendering: pixelated; border: 3px solid #999;
           background: #000; }
.hit.query-image img { border-color: #1565c0; }
.hit.right img { border-color: #2e7d32; } .hit.wrong img { border-color: #c62828; }
.hit.right .mark { color: #2e7d32; } .hit.wrong .mark { color: #c62828; }
.map { display: inline-block; vertical-align: top; margin: 0 12px 12px 0; }
.map svg { width: 560px; height: 560px; border: 1px solid #ddd; background: #fff; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888; padding: 4px;
       font-size: 11px; pointer-events: none; max-width: 220px; box-shadow: 0 1px 4px #0003; }
#tip img { width: 96px; height: 96px; image-rendering: pixelated; background: #000; display: block; }
"""


def script_json(data: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>`` or ``&`` can close the element."""
    return (json.dumps(data, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def page(title: str, body: str, script: str = "") -> str:
    """A complete HTML document; ``title`` is escaped here, ``body`` must already be markup."""
    tail = f"<script>{script}</script>\n" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n{tail}</body>\n</html>\n"
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    """A table whose cells are plain text (escaped here)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
