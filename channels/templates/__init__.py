"""Plain-text and simple HTML emails, from `<name>.txt` (a `Subject:` line, a blank line, the body)
and `<name>.html` next to this file. `$placeholders` (string.Template) keep the files editable by
admins without a template language; values are HTML-escaped in the HTML part."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
NAMES = ("taken_message", "call_summary", "escalation", "customer_reply")


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def render(name: str, **values: object) -> Rendered:
    if name not in NAMES:
        raise ValueError(f"no email template {name!r} (have {', '.join(NAMES)})")
    text_path, html_path = HERE / f"{name}.txt", HERE / f"{name}.html"
    head, _, body = text_path.read_text(encoding="utf-8").partition("\n\n")
    if not head.startswith("Subject:"):
        raise ValueError(f"{text_path}: the first line must be 'Subject: ...' followed by a blank line")
    plain = {k: str(v) for k, v in values.items()}
    escaped = {k: html.escape(v).replace("\n", "<br>\n") for k, v in plain.items()}
    try:
        return Rendered(
            subject=Template(head.removeprefix("Subject:").strip()).substitute(plain),
            text=Template(body).substitute(plain),
            html=Template(html_path.read_text(encoding="utf-8")).substitute(escaped))
    except KeyError as exc:
        raise ValueError(f"email template {name!r}: no value for ${exc.args[0]}") from None
