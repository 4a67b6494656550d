"""The report as one self-contained page, ``index.html``: report.md and capacity.md as HTML, their figures
embedded as base64 ``data:`` URIs, so that MLflow's artifact viewer (which shows an HTML artifact as it is, but
cannot resolve a Markdown file's relative image links) and a browser opening the file alone show everything.

The page is made from the Markdown the report writes (one source for both): headings, paragraphs, list items,
pipe tables, images, links, ``**bold**`` and ``code``, the subset :mod:`rnnbench.report_write` and
:mod:`rnnbench.report_capacity` use.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from pathlib import Path

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; max-width: 1200px;
       color: #1f272d; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #d1d9e1; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f5f7; }
img { max-width: 100%; height: auto; }
code { background: #f2f5f7; padding: 0 0.2em; }
"""

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])")
_CODE = re.compile(r"`([^`]+)`")


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def inline(text: str, images: Mapping[str, Path], links: Mapping[str, str]) -> str:
    """One line of Markdown as HTML: escaped, with images (embedded), links, bold and code."""
    out: list[str] = []
    pos = 0
    for match in _IMAGE.finditer(text):
        out.append(_spans(text[pos:match.start()], links))
        alt, target = match.group(1), match.group(2)
        src = data_uri(images[target]) if target in images and images[target].exists() else target
        out.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src)}">')
        pos = match.end()
    out.append(_spans(text[pos:], links))
    return "".join(out)


def _spans(text: str, links: Mapping[str, str]) -> str:
    codes: list[str] = []

    def keep_code(match: re.Match[str]) -> str:
        codes.append(f"<code>{html.escape(match.group(1))}</code>")
        return f"\0{len(codes) - 1}\0"

    text = _CODE.sub(keep_code, text)
    text = html.escape(text, quote=False)

    def anchor(match: re.Match[str]) -> str:
        label, target = match.group(1), html.unescape(match.group(2))
        target = links.get(target, target)
        return f'<a href="{html.escape(target)}">{label}</a>'

    text = _LINK.sub(anchor, text)
    text = _BOLD.sub(r"<strong>\1</strong>", text)
    text = _ITALIC.sub(r"<em>\1</em>", text)
    return re.sub("\0(\\d+)\0", lambda m: codes[int(m.group(1))], text)


def _cells(row: str) -> list[str]:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|"):
        row = row[:-1]
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row)]


def _is_rule(row: str) -> bool:
    return bool(re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*\|?", row.strip()))


def figures_as_text(text: str) -> str:
    """The Markdown with each image line replaced by a line naming the figure's file: for report.md and
    capacity.md, which MLflow's artifact viewer shows without their images (index.html has them in place)."""
    def name(match: re.Match[str]) -> str:
        return f"Figure `{match.group(2)}`: {match.group(1)} (shown in index.html)."

    return _IMAGE.sub(name, text)


def markdown_to_html(text: str, images: Mapping[str, Path], links: Mapping[str, str] | None = None) -> str:
    """HTML of the report's Markdown (see the module's docstring for the subset)."""
    links = links or {}
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("#"):
            level = len(stripped) - len(stripped.lstrip("#"))
            out.append(f"<h{level}>{inline(stripped[level:].strip(), images, links)}</h{level}>")
            i += 1
        elif stripped.startswith("|") and i + 1 < len(lines) and _is_rule(lines[i + 1]):
            header = _cells(stripped)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            head = "".join(f"<th>{inline(c, images, links)}</th>" for c in header)
            body = "".join("<tr>" + "".join(f"<td>{inline(c, images, links)}</td>" for c in row) + "</tr>"
                           for row in rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif stripped.startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].strip().startswith(("- ", "* ")):
                items.append(f"<li>{inline(lines[i].strip()[2:], images, links)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(("#", "|", "- ", "* ")):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{inline(' '.join(paragraph), images, links)}</p>")
    return "\n".join(out)


def write_html(path: Path, sections: Mapping[str, str], folder: Path, title: str = "rnnbench report") -> None:
    """Write ``index.html`` from Markdown ``sections`` (file name -> text, in page order); images resolve
    against ``folder`` and are embedded; a link to one of the sections' files goes to that section."""
    images = {p.name: p for p in folder.glob("*.png")}
    anchors = {name: name.rsplit(".", 1)[0] for name in sections}
    links = {name: f"#{anchor}" for name, anchor in anchors.items()}
    body = []
    for name, section in sections.items():
        body.append(f'<section id="{anchors[name]}">\n{markdown_to_html(section, images, links)}\n</section>')
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n<hr>\n".join(body) + "\n</body>\n</html>\n"
    )
    path.write_text(page)
