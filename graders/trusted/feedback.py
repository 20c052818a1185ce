"""What of a submission reaches a web page: feedback and formgrader are safe to open, and small.

A learner's notebook becomes HTML in two places: the feedback page that `nbgrader generate_feedback`
writes for the learner, and the submission page formgrader shows the instructor (in the
instructor's session, where a script could read and change the whole course through
/api/contents). Both pages come from nbconvert's HTMLExporter with this course's
nbgrader_config.py, and the settings there make both safe:

- nbconvert's `sanitize_html` leaves JavaScript outputs, widget views and widget state out of the
  page and runs HTML and Markdown outputs through the `clean_html` filter;
- `clean_html` here is bleach with the course's allow-list (text, headings, lists, tables for
  pandas, images): no script, style, iframe, form, svg, event handler or javascript: URL survives;
- nbgrader's own templates render Markdown cells and grader comments without `clean_html`, but
  pipe them through `strip_files_prefix`; the course's `strip_files_prefix` cleans as well;
- `SafeOutputs` runs before the page is made: it removes executable output types (so the output's
  text shows instead), keeps only output metadata that is safe to render (nbconvert writes an
  image's width and height into the page unquoted), and applies `OutputLimits`.

`OutputLimits` caps every output: text (streams, text/plain, error messages and tracebacks) keeps
its head and tail, a rich output (HTML, an image, JSON) larger than `max_output_bytes` is replaced
by a note saying what was cut and how big it was, and so are the largest outputs of a cell or a
notebook past `max_cell_output_bytes` / `max_notebook_output_bytes`. `MeasuredExecute` applies the
same limits as each cell runs at autograde time, so the autograded notebook that formgrader reads is
already small and has no JavaScript outputs; `SafeOutputs` applies them again to any older one.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch

import bleach
from bleach.css_sanitizer import ALLOWED_CSS_PROPERTIES, CSSSanitizer
from bs4 import BeautifulSoup
from nbconvert.filters import strip_files_prefix
from nbconvert.preprocessors import Preprocessor
from traitlets import Integer, List, Unicode
from traitlets.config import LoggingConfigurable

# ------------------------------------------------------------------------------- HTML allow-list
HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
TAGS = frozenset(bleach.ALLOWED_TAGS) | {
    "p", "div", "span", "br", "hr", "pre", "code", "kbd", "samp", "var", "sub", "sup", "small", "mark",
    "del", "ins", "s", "u", "q", "cite", "dl", "dt", "dd", "details", "summary", "figure", "figcaption", "img",
    "table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "colgroup", "col", *HEADINGS,
}
ATTRIBUTES = {
    "*": {"class", "title", "lang", "dir"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "ol": {"start", "type"},
    "table": {"border", "style"},
    "tr": {"style", "align"},
    "th": {"style", "align", "colspan", "rowspan"},
    "td": {"style", "align", "colspan", "rowspan"},
    "col": {"span"},
    "colgroup": {"span"},
    **{h: {"id"} for h in HEADINGS},  # nbconvert's anchor links to headings
}
PROTOCOLS = {"http", "https", "mailto", "data"}  # data: only for an image's src (see _allowed_attribute)
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp)[;,]")
_URL_NOISE = re.compile(r"[`\x00-\x20\x7f-\xa0\s\ufffd]+")  # what browsers ignore in a URL (bleach strips it too)


def _allowed_attribute(tag: str, name: str, value: str) -> bool:
    if name not in ATTRIBUTES["*"] and name not in ATTRIBUTES.get(tag, ()):
        return False
    url = _URL_NOISE.sub("", value).lower()
    if tag == "img" and name == "src":  # an embedded image only: no request leaves the page when it opens
        return bool(_DATA_IMAGE.match(url))
    if url.startswith("data:"):  # never a page or an svg
        return False
    return True


def clean_html(html) -> str:
    """HTML with only the course's allow-list left; script and style elements go with their text."""
    html = html.decode() if isinstance(html, bytes) else str(html)
    soup = BeautifulSoup(html, "html.parser")
    for element in soup.find_all(["script", "style"]):
        element.decompose()
    cleaner = bleach.Cleaner(tags=TAGS, attributes=_allowed_attribute, protocols=PROTOCOLS, strip=True,
                             strip_comments=True, css_sanitizer=CSSSanitizer(allowed_css_properties=ALLOWED_CSS_PROPERTIES))
    return cleaner.clean(str(soup))


def strip_files_prefix_and_clean(html) -> str:
    """nbconvert's `strip_files_prefix`, then `clean_html`: nbgrader's feedback and formgrade
    templates render Markdown cells and comments as `markdown2html | strip_files_prefix`."""
    return clean_html(strip_files_prefix(html))


# ------------------------------------------------------------------------------- output limits
def _nbytes(value) -> int:
    return len(value.encode("utf-8", "replace")) if isinstance(value, str) else len(json.dumps(value, default=str))


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB" if n >= 1e3 else f"{n} bytes"


def _output_bytes(out) -> int:
    if out.get("output_type") == "stream":
        return _nbytes(out.get("text", ""))
    if out.get("output_type") == "error":
        return _nbytes(out.get("evalue", "")) + sum(map(_nbytes, out.get("traceback", [])))
    return sum(_nbytes(v) for v in out.get("data", {}).values()) + _nbytes(out.get("metadata", {}))


def _rich(out) -> bool:
    return out.get("output_type") in ("display_data", "execute_result")


# output metadata that nbconvert renders, and the type it must have to be safe in the page
_SAFE_METADATA = {
    "width": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "height": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "unconfined": lambda v: isinstance(v, bool),
    "isolated": lambda v: isinstance(v, bool),
    "alt": lambda v: isinstance(v, str) and len(v) <= 1000,
    "needs_background": lambda v: v in ("light", "dark"),
}


def _safe_metadata(meta: dict) -> dict:
    kept = {}
    for key, value in meta.items():
        if "/" in key and isinstance(value, dict):  # per mimetype
            inner = {k: v for k, v in value.items() if k in _SAFE_METADATA and _SAFE_METADATA[k](v)}
            if inner:
                kept[key] = inner
        elif key in _SAFE_METADATA and _SAFE_METADATA[key](value):
            kept[key] = value
    return kept


class OutputLimits(LoggingConfigurable):
    """Caps on a cell's outputs, and the output types that never reach a page (see the module)."""

    max_output_chars = Integer(100_000, help="text kept per output (head and tail): a stream, text/plain, an error's message or traceback").tag(config=True)
    max_output_lines = Integer(600, help="lines of text kept per output (head and tail; below nbgrader's LimitOutput)").tag(config=True)
    max_output_bytes = Integer(1_000_000, help="largest rich output kept (one image, HTML table, JSON); a larger one is replaced by a note. 0: no limit").tag(config=True)
    max_cell_output_bytes = Integer(2_000_000, help="all outputs of one cell; past it the largest rich outputs are replaced by notes. 0: no limit").tag(config=True)
    max_notebook_output_bytes = Integer(10_000_000, help="all outputs of one notebook; past it the largest rich outputs are replaced by notes. 0: no limit").tag(config=True)
    dropped_mimetypes = List(Unicode(), [
        "*javascript*", "*ecmascript*",  # code the page would run
        "application/vnd.jupyter.widget-*",  # widget views and state: need JavaScript, text fallback shows instead
        "application/vnd.bokehjs_*", "application/vnd.holoviews_*",
    ], help="output types removed (fnmatch patterns): they run code in the page").tag(config=True)

    _notebook_left: int | None = None  # what is left of max_notebook_output_bytes (None: no limit)

    def start_notebook(self) -> None:
        self._notebook_left = self.max_notebook_output_bytes or None

    def limit_outputs(self, outputs: list) -> list:
        """One cell's outputs, capped and without executable types (streams of one name merged)."""
        merged = []  # consecutive stream outputs of one name as one (a loop's prints arrive one by one)
        for out in outputs:
            if merged and out.output_type == "stream" and merged[-1].output_type == "stream" and merged[-1].name == out.name:
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = self.head_and_tail(out.text)
            elif out.output_type == "error":
                self._limit_error(out)
            elif _rich(out):
                self._limit_rich(out)
        self._limit_total(merged)
        return merged

    def head_and_tail(self, text: str) -> str:
        lines = text.splitlines(keepends=True)
        if len(text) <= self.max_output_chars and len(lines) <= self.max_output_lines:
            return text
        head_n, tail_n = self.max_output_lines * 2 // 3, self.max_output_lines // 6
        head = "".join(lines[:head_n])[: self.max_output_chars * 2 // 3]
        tail = "".join(lines[-tail_n:])[-(self.max_output_chars // 6):] if tail_n and self.max_output_chars >= 6 else ""
        cut = len(text) - len(head) - len(tail)
        return f"{head}\n[grader: {cut:,} characters of output cut ({len(lines):,} lines in all)]\n{tail}"

    def _limit_error(self, out) -> None:
        if len(out.get("ename", "")) > 200:
            out.ename = out.ename[:200] + "..."
        out.evalue = self.head_and_tail(str(out.get("evalue", "")))
        traceback = "\n".join(map(str, out.get("traceback", [])))
        capped = self.head_and_tail(traceback)
        if capped != traceback:
            out.traceback = capped.split("\n")

    def _limit_rich(self, out) -> None:
        data, cut, scripts = out.get("data", {}), [], []
        for mime in list(data):
            if any(fnmatch(mime.lower(), pattern) for pattern in self.dropped_mimetypes):
                scripts.append(mime)
                del data[mime]
            elif mime == "text/plain":
                data[mime] = self.head_and_tail(str(data[mime]))
            elif self.max_output_bytes and (n := _nbytes(data[mime])) > self.max_output_bytes:
                cut.append(f"{mime}, {_size(n)}")
                del data[mime]
        notes = []
        if cut:
            notes.append(f"[grader: this output was cut ({'; '.join(cut)}): larger than the {_size(self.max_output_bytes)} "
                         "allowed for one output]")
        if scripts and not data:
            notes.append(f"[grader: this output ({', '.join(scripts)}) was removed: scripts do not run in feedback]")
        if notes:
            data["text/plain"] = "\n".join(notes + ([data["text/plain"]] if "text/plain" in data else []))
        out.data = data
        out.metadata = _safe_metadata(out.get("metadata", {}))

    def _limit_total(self, outputs: list) -> None:
        """Past the cell's budget, or what is left of the notebook's, the largest rich outputs become notes."""
        total = sum(map(_output_bytes, outputs))
        cell, left = self.max_cell_output_bytes or None, self._notebook_left
        if left is not None and (cell is None or left < cell):
            budget, why = left, f"the notebook's outputs passed the {_size(self.max_notebook_output_bytes)} allowed for a whole notebook"
        else:
            budget, why = cell, f"this cell's outputs came to {_size(total)}, more than the {_size(cell or 0)} allowed for one cell"
        if budget is not None:
            for out in sorted((o for o in outputs if _rich(o)), key=_output_bytes, reverse=True):
                if total <= budget:
                    break
                n = _output_bytes(out)
                mimes = ", ".join(m for m in out.data if m != "text/plain") or "text/plain"
                out.data = {"text/plain": f"[grader: this output was cut ({mimes}, {_size(n)}): {why}]"}
                out.metadata = {}
                total -= n - _output_bytes(out)
        if left is not None:
            self._notebook_left = max(0, left - total)


class SafeOutputs(OutputLimits, Preprocessor):
    """Exporter step for feedback and formgrader (`HTMLExporter.preprocessors` in nbgrader_config.py):
    `OutputLimits` on every code cell, before the page is made."""

    def preprocess(self, nb, resources):
        self.start_notebook()
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code":
            cell.outputs = self.limit_outputs(cell.get("outputs", []))
        return cell, resources
