"""The HTML shell shared by the report and compare pages: one self-contained file, no network.

Inline CSS (screen and print), inline SVG figures, one tiny inline script that opens every
``<details>`` before printing (the browser would print them closed). System fonts only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

CSS = """
:root { --fg:#1d1d1f; --muted:#5f6368; --line:#d9d9de; --bg:#ffffff; --band:#f5f6f8; --accent:#0072B2;
        --bad:#b3261e; }
* { box-sizing:border-box; }
body { margin:0; color:var(--fg); background:var(--bg); font:14px/1.45 system-ui, -apple-system, "Segoe UI",
       Roboto, "Helvetica Neue", Arial, "Liberation Sans", "DejaVu Sans", sans-serif; }
header, main, footer { max-width:1180px; margin:0 auto; padding:0 20px; }
header { padding-top:18px; }
h1 { font-size:22px; margin:0 0 4px; }
h2 { font-size:18px; margin:28px 0 8px; padding-top:8px; border-top:1px solid var(--line); }
h3 { font-size:15px; margin:18px 0 6px; }
p, li { max-width:80ch; }
.muted, figcaption, .note { color:var(--muted); }
nav { position:sticky; top:0; z-index:2; background:rgba(255,255,255,.95); border-bottom:1px solid var(--line);
      padding:6px 20px; margin:10px 0 0; font-size:13px; display:flex; flex-wrap:wrap; gap:2px 14px; }
nav a { color:var(--accent); text-decoration:none; white-space:nowrap; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin:14px 0; }
.card { border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:150px; background:var(--band); }
.card b { display:block; font-size:20px; }
.card span { color:var(--muted); font-size:12px; }
.grid { display:grid; grid-template-columns:repeat(auto-fit, minmax(460px, 1fr)); gap:14px; }
figure { margin:10px 0; }
svg.fig { width:100%; height:auto; display:block; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; font-size:13px; margin:8px 0; font-variant-numeric:tabular-nums; }
th, td { border-bottom:1px solid var(--line); padding:4px 6px; text-align:right; white-space:nowrap; }
th { background:var(--band); white-space:normal; vertical-align:bottom; }
th:first-child, td:first-child, td.text { text-align:left; }
td.text { white-space:normal; overflow-wrap:break-word; }
th.text { text-align:left; }
tr.chosen td { font-weight:600; }
.bad { color:var(--bad); }
.flag { color:var(--bad); }
pre { background:var(--band); border:1px solid var(--line); border-radius:6px; padding:10px; overflow:auto;
      font-size:12px; line-height:1.35; }
details { margin:8px 0; }
summary { cursor:pointer; color:var(--accent); }
footer { margin-top:36px; padding-bottom:24px; font-size:12px; color:var(--muted); }
@media print {
  @page { size:A4; margin:12mm; }
  body { font-size:10pt; }
  nav { display:none; }
  header, main, footer { max-width:none; padding:0; }
  h2 { break-after:avoid; }
  figure, .cards, tr { break-inside:avoid; }
  .grid { display:block; }
  .scroll { overflow:visible; }
  pre { white-space:pre-wrap; }
  a { color:inherit; text-decoration:none; }
}
"""

SCRIPT = "addEventListener('beforeprint',()=>document.querySelectorAll('details').forEach(d=>d.open=true));"


def page(title: str, header: str, sections: Sequence[tuple[str, str, str]], footer: str) -> str:
    """A whole document. ``sections``: (anchor id, heading, inner HTML)."""
    nav = "".join(f'<a href="#{escape(a)}">{escape(h)}</a>' for a, h, _ in sections)
    body = "\n".join(f'<section id="{escape(a)}"><h2>{escape(h)}</h2>\n{inner}\n</section>' for a, h, inner in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header>{header}</header>\n<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
        f"<footer>{footer}</footer>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def table(
    head: Sequence[str],
    rows: Iterable[Sequence[Any]],
    row_class: Sequence[str] | None = None,
    text_cols: Sequence[int] = (),
) -> str:
    """An HTML table of escaped cells; ``text_cols`` are left-aligned and may wrap."""
    th = "".join(
        f'<th class="text">{escape(str(h))}</th>' if j in text_cols else f"<th>{escape(str(h))}</th>"
        for j, h in enumerate(head)
    )
    out = []
    for i, r in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        tds = "".join(
            f'<td class="text">{escape(str(c))}</td>' if j in text_cols else f"<td>{escape(str(c))}</td>"
            for j, c in enumerate(r)
        )
        out.append(f"<tr{cls}>{tds}</tr>")
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{"".join(out)}</tbody></table></div>'


def figure(svg: str | None, caption: str, missing: str) -> str:
    """An inline SVG with its caption, or the reason there is none."""
    if svg is None:
        return f'<p class="note">{escape(missing)}</p>'
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def cards(items: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for k, v in items)
        + "</div>"
    )
