"""reports/index.html: the paper tables of results.md and every experiment's figures in one
page, with a table of contents.

One file, inline CSS, no script: the tables are the blocks of :func:`tables.report_blocks` (the
same rows as results.md), the figures are :mod:`gallery`'s sections, linked relative to
``reports/`` (each opens at full size when clicked).
"""

from __future__ import annotations

import re
from html import escape

from pipeline.report.gallery import Section
from pipeline.report.tables import Block, Heading, Paragraph, Table

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 1.5em;
  color: #222; }
h1 { margin-top: 1em; } h2 { border-bottom: 2px solid #ddd; margin-top: 2em; }
h3 { margin: 1.6em 0 .3em; } a { color: #0b5cad; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: 90%; }
nav ol { margin: .2em 0; } nav > ol > li { margin-top: .4em; font-weight: 600; }
nav ol ol { font-weight: normal; columns: 2; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: .4em 0 1em; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; white-space: normal; vertical-align: bottom; min-width: 4.5em; }
td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; }
th.paper, td.paper { background: #f6f6fb; color: #555; }
.caption, .note { color: #444; margin: .2em 0; }
.top { font-size: 12px; font-weight: normal; margin-left: .6em; }
.figures { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #444; max-width: 44em; }
"""

PAPER = ' class="paper"'
_CODE = re.compile(r"(`[^`]+`)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline(text: str) -> str:
    """The report's inline markdown (`code`, **bold**, [text](link)) as HTML, all else escaped."""
    out = []
    for part in _CODE.split(text):
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{escape(part[1:-1])}</code>")
        else:
            part = _BOLD.sub(r"<strong>\1</strong>", escape(part, quote=False))
            out.append(_LINK.sub(_anchor, part))
    return "".join(out)


def _anchor(match: re.Match) -> str:
    href = match[2].replace('"', "&quot;")  # the text around it is escaped already
    return f'<a href="{href}">{match[1]}</a>'


def table_html(table: Table) -> str:
    """A titled table; the paper's columns shaded so ours stand out beside them."""
    paper = [h.endswith("(paper)") for h in table.headers]

    def cells(values: list[str], tag: str) -> str:
        return "".join(
            f"<{tag}{PAPER if p else ''}>{inline(v)}</{tag}>" for v, p in zip(values, paper)
        )

    rows = "\n".join(f"<tr>{cells(row, 'td')}</tr>" for row in table.rows)
    return (
        f'<h3 id="{escape(table.anchor)}">{inline(table.title)}{_top()}</h3>\n'
        f'<p class="caption">{inline(table.caption)}</p>\n'
        f'<div class="table-wrap"><table>\n<thead><tr>{cells(table.headers, "th")}</tr>'
        f"</thead>\n<tbody>\n{rows}\n</tbody></table></div>"
    )


def section_html(section: Section) -> str:
    """An experiment's (or baseline's, sweep's) notes and figures."""
    notes = "\n".join(f'<p class="note">{inline(n)}</p>' for n in section.notes)
    figures = "\n".join(
        f'<figure><a href="{escape(f.src)}"><img src="{escape(f.src)}" alt="{escape(f.src)}" '
        f'loading="lazy"></a><figcaption>{inline(f.caption)}</figcaption></figure>'
        for f in section.figures
    )
    return (
        f'<section id="{escape(section.anchor)}">\n<h3>{inline(section.title)}{_top()}</h3>\n'
        f'{notes}\n<div class="figures">\n{figures}\n</div>\n</section>'
    )


def _top() -> str:
    return '<a class="top" href="#contents">contents</a>'


def _toc(tables: list[Table], sections: list[Section]) -> str:
    def items(pairs) -> str:
        return "".join(f'<li><a href="#{escape(a)}">{inline(t)}</a></li>' for a, t in pairs)

    return (
        '<nav id="contents"><h2>Contents</h2><ol>\n'
        f'<li><a href="#tables">Paper tables: ours beside the papers\'</a><ol>'
        f"{items((t.anchor, t.title) for t in tables)}</ol></li>\n"
        f'<li><a href="#figures">Experiments and figures</a><ol>'
        f"{items((s.anchor, s.title) for s in sections)}</ol></li>\n</ol></nav>"
    )


def render(blocks: list[Block], sections: list[Section], title: str = "densepipe results") -> str:
    """The whole page: the leading heading and paragraph, contents, tables, figures (ASCII:
    other characters as references)."""
    head = [b for b in blocks[:2] if isinstance(b, Heading | Paragraph)]
    body = blocks[len(head) :]
    tables = [b for b in body if isinstance(b, Table)]
    parts = [
        f"<h{b.level}>{inline(b.text)}</h{b.level}>"
        if isinstance(b, Heading)
        else f"<p>{inline(b.text)}</p>"
        for b in head
    ]
    parts.append(_toc(tables, sections))
    parts.append('<section id="tables"><h2>Paper tables: ours beside the papers\'</h2>')
    for block in body:
        if isinstance(block, Table):
            parts.append(table_html(block))
        elif isinstance(block, Paragraph):
            parts.append(f'<p class="note">{inline(block.text)}</p>')
        else:
            parts.append(f"<h2>{inline(block.text)}</h2>")
    parts.append('</section>\n<section id="figures"><h2>Experiments and figures</h2>')
    parts += [section_html(s) for s in sections]
    parts.append("</section>")
    body_html = "\n".join(parts)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{body_html}\n</body>\n</html>\n"
    )
    return page.encode("ascii", "xmlcharrefreplace").decode()  # the same bytes in any locale
