"""The dashboard's HTML: small server-rendered pages, every dynamic value escaped by `e`.

No templates engine and no scripts: plain forms (each with its CSRF token) work with a keyboard, a
screen reader and offline; one stylesheet (style.css) keeps them readable on a front-desk tablet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from gateway.dashboard import clock
from gateway.dashboard.accounts import MIN_PASSWORD
from llm.site import StaffMember
from models.privacy import masked
from models.records import (STAFF_ROLES, CallEvent, HelpRequest, KnowledgeEntry, OutboxRecord, StaffSession,
                            StaffUser, Turn)
from models.store import CALL_OUTCOMES

PREFIX = "/dashboard"
STYLE = """
*{box-sizing:border-box}body{font:16px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center}
header a{color:#fff}header form{margin-left:auto}nav{display:flex;flex-wrap:wrap;gap:1rem}
main{max-width:64rem;margin:0 auto;padding:1rem}h1{font-size:1.4rem}
a:focus,button:focus,input:focus,select:focus,textarea:focus{outline:3px solid #f4a261;outline-offset:2px}
button{font:inherit;padding:.5rem 1rem;border-radius:.3rem;border:1px solid #1d3557;background:#1d3557;color:#fff;
min-height:2.75rem;cursor:pointer}header button{background:#fff;color:#1d3557}
input,select,textarea{font:inherit;padding:.5rem;width:100%;border:1px solid #8a94a3;border-radius:.3rem}
label{display:block;font-weight:600;margin:.6rem 0 .2rem}.card{background:#fff;border:1px solid #d9dde3;
border-radius:.4rem;padding:.8rem 1rem;margin:.8rem 0}.muted{color:#5a6472}.error{color:#a4161a;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:.4rem;border-bottom:1px solid #d9dde3;
vertical-align:top}.tabs{display:flex;gap:1rem;flex-wrap:wrap}.tabs [aria-current]{font-weight:700}
.login{max-width:24rem}.who{color:#dfe6ee}.chart{width:100%;height:auto}figure{margin:.8rem 0}
.sr-only{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
"""


def e(value: Any) -> str:
    """Escaped text for HTML content and quoted attributes."""
    return escape("" if value is None else str(value), quote=True)


when = clock.minute  # every time shown is in the site's zone


def layout(title: str, body: str, session: StaffSession | None = None, *, refresh_s: int | None = None,
           live: str | None = None) -> str:
    header = ""
    if session is not None:
        user = session.user
        links = [("Home", "/"), ("Live calls", "/calls"), ("Conversations", "/conversations"), ("History", "/history")]
        if user.may("supervisor"):
            links += [("Overview", "/overview"), ("Help requests", "/help"), ("Knowledge", "/knowledge"),
                      ("Outbox", "/outbox")]
        if user.may("admin"):
            links += [("Users and audit", "/users")]
        nav = "".join(f'<a href="{PREFIX}{path}">{e(label)}</a>' for label, path in links)
        header = (f'<header><nav aria-label="Dashboard">{nav}</nav>'
                  f'<span class="who">{e(user.name)} ({e(user.role)})</span>'
                  f'<form method="post" action="{PREFIX}/logout">{csrf_field(session.csrf)}'
                  f'<button type="submit">Sign out</button></form></header>')
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    if live:  # the script applies the event stream at `live`; without scripts the page reloads as before
        refresh = f'<noscript>{refresh}</noscript><script src="{PREFIX}/live.js" defer></script>'
    stream = f' data-live="{e(live)}"' if live else ""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">{refresh}'
            f'<title>{e(title)} · Switchboard</title><link rel="stylesheet" href="{PREFIX}/style.css"></head>'
            f'<body{stream}>{header}<main id="main"><h1>{e(title)}</h1>{body}</main></body></html>')


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(token)}">'


def login_page(csrf: str, next_path: str, *, name: str = "", error: str | None = None) -> str:
    problem = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    return layout("Sign in", f"""{problem}<form class="login" method="post" action="{PREFIX}/login">
{csrf_field(csrf)}<input type="hidden" name="next" value="{e(next_path)}">
<label for="name">User name</label><input id="name" name="name" autocomplete="username" required value="{e(name)}"
 autofocus>
<label for="password">Password</label><input id="password" name="password" type="password"
 autocomplete="current-password" required>
<p><button type="submit" id="sign-in">Sign in</button></p></form>""")


def message_page(title: str, text: str, session: StaffSession | None = None) -> str:
    back = f'<p><a href="{PREFIX}/">Back to the dashboard</a></p>' if session else \
        f'<p><a href="{PREFIX}/login">Sign in</a></p>'
    return layout(title, f'<p role="alert">{e(text)}</p>{back}', session)


def home_page(session: StaffSession, open_requests: int | None) -> str:
    items = [f'<li><a href="{PREFIX}/calls">Live calls</a></li>',
             f'<li><a href="{PREFIX}/conversations">Text conversations</a> (take one over from the assistant)</li>',
             f'<li><a href="{PREFIX}/history">History of calls and text threads</a></li>']
    if open_requests is not None:
        items.insert(0, f'<li><a href="{PREFIX}/help">{open_requests} help request(s) waiting for an answer</a>'
                        f'</li>')
    return layout("Dashboard", f'<ul>{"".join(items)}</ul>', session)


HELP_TABS = (("open", "Pending"), ("answered", "Answered"), ("unresolved", "Unresolved"))


def help_page(session: StaffSession, status: str, requests: list[HelpRequest],
              outbox: dict[int, OutboxRecord], entries: list[KnowledgeEntry]) -> str:
    tabs = "".join(f'<a href="{PREFIX}/help?status={key}"{" aria-current=page" if key == status else ""}>'
                   f'{label}</a>' for key, label in HELP_TABS)
    options = "".join(f'<option value="{e(k.id)}">{e(k.id)}: {e(k.question)}</option>' for k in entries)
    cards = "".join(_help_card(session, r, outbox.get(r.followup_outbox_id or -1), options) for r in reversed(requests))
    empty = '<p class="muted">Nothing here.</p>' if not requests else ""
    return layout("Help requests", f'<nav class="tabs" aria-label="Help request states">{tabs}</nav>{empty}{cards}',
                  session)


def _help_card(session: StaffSession, r: HelpRequest, row: OutboxRecord | None, options: str) -> str:
    asked = (f'<p class="muted">Asked {e(when(r.created_at))} by {e(masked(r.contact_number))}'
             f' ({e(r.call_id or "-")})</p>')
    head = f'<article class="card" id="req-{r.id}" aria-labelledby="q-{r.id}"><h2 id="q-{r.id}">{e(r.question)}</h2>'
    if r.status == "answered":
        if row is not None:
            sent = f"sent by {e(r.followup_channel)}, message #{row.id}: {e(row.state)}" + (
                f" ({e(row.last_error)})" if row.last_error else "")
        else:
            sent = f"not sent: {e(r.followup_note or 'no follow-up recorded')}"
        via = f", with entry {e(r.answered_entry)}" if r.answered_entry else ""
        return (f'{head}{asked}<p><strong>Answer</strong> ({e(r.answered_by or "CLI")}, {e(when(r.answered_at))}{via}): '
                f'{e(r.answer)}</p><p class="followup">Follow-up to the customer: {sent}</p></article>')
    return (f'{head}{asked}<form method="post" action="{PREFIX}/help/{r.id}/answer">{csrf_field(session.csrf)}'
            f'<label for="answer-{r.id}">Answer (spoken to the next caller who asks, and sent to this one)</label>'
            f'<textarea id="answer-{r.id}" name="answer" rows="3" required></textarea>'
            f'<p><button type="submit">Answer and tell the customer</button></p></form>'
            f'<form method="post" action="{PREFIX}/help/{r.id}/phrasing">{csrf_field(session.csrf)}'
            f'<label for="entry-{r.id}">Or: an existing entry answers it (the question is added as its phrasing, '
            f'its answer sent to this customer)</label><select id="entry-{r.id}" name="entry" required>{options}'
            f'</select><p><button type="submit">Add as phrasing and tell the customer</button></p></form></article>')


def knowledge_page(session: StaffSession, entries: list[KnowledgeEntry], disabled: list[KnowledgeEntry]) -> str:
    admin = [k for k in entries if k.source != "learned"]
    learned = [k for k in entries if k.source == "learned"]
    rows = "".join(f'<tr><td>{e(k.id)}</td><td>{e(k.question)}'
                   f'{"".join("<br><span class=muted>" + e(p) + "</span>" for p in k.phrasings)}</td>'
                   f'<td>{e(k.answer)}</td></tr>' for k in admin)
    taught = "".join(_learned_card(session, k, enabled=True) for k in learned) or '<p class="muted">None yet.</p>'
    off = "".join(_learned_card(session, k, enabled=False) for k in disabled) or '<p class="muted">None.</p>'
    return layout("Knowledge", '<p class="muted">Changes here are live for the next question, with no restart. '
                  'Entries from etc/knowledge.yaml are the admin\'s: edit that file (the daemon loads it at '
                  f'start). <a href="{PREFIX}/knowledge/export.yaml" download>Export learned entries and added '
                  'phrasings as YAML</a> (to paste into etc/knowledge.yaml).</p>'
                  f'<h2>Learned from help requests</h2>{taught}<h2>Disabled</h2>{off}'
                  f'<h2>From etc/knowledge.yaml</h2><table><thead><tr><th scope="col">Id</th><th scope="col">'
                  f'Question and phrasings</th><th scope="col">Answer</th></tr></thead><tbody>{rows}</tbody></table>',
                  session)


def _learned_card(session: StaffSession, k: KnowledgeEntry, *, enabled: bool) -> str:
    base, token = f"{PREFIX}/knowledge/{e(k.id)}", csrf_field(session.csrf)
    toggle = (f'<form method="post" action="{base}/{"disable" if enabled else "enable"}">{token}'
              f'<button type="submit">{"Disable" if enabled else "Re-enable"}</button></form>')
    if not enabled:
        return (f'<article class="card" id="{e(k.id)}"><h3>{e(k.question)}</h3><p>{e(k.answer)}</p>{toggle}'
                f'</article>')
    return (f'<article class="card" id="{e(k.id)}"><form method="post" action="{base}/edit">{token}'
            f'<label for="q-{e(k.id)}">Question</label><input id="q-{e(k.id)}" name="question" required '
            f'value="{e(k.question)}"><label for="p-{e(k.id)}">Other phrasings (one a line)</label>'
            f'<textarea id="p-{e(k.id)}" name="phrasings" rows="2">{e(chr(10).join(k.phrasings))}</textarea>'
            f'<label for="a-{e(k.id)}">Answer</label><textarea id="a-{e(k.id)}" name="answer" rows="3" required>'
            f'{e(k.answer)}</textarea><p><button type="submit">Save</button></p></form>{toggle}</article>')


_TURNS_SHOWN = 6  # a live call's last turns


@dataclass(frozen=True)
class LiveCall:
    call_id: str
    caller: str | None
    dialled: str | None
    started_at: float | None
    turns: list[Turn]
    state: str = "listening"  # greeting, listening, thinking, speaking or transferring


def calls_page(session: StaffSession, calls: list[LiveCall], refresh_s: int, capacity: tuple[int, int] | None,
               *, transfer_to: Sequence[StaffMember]) -> str:
    """`transfer_to`: the directory (front desk first) when calls can be moved (AMI), else empty."""
    def caller(number: str | None) -> str:  # operators see the last digits only
        return _contact(session, number) if number else "withheld"

    people = "".join(f'<option value="{e(m.name)}">{e(m.name)}{f" ({e(m.role)})" if m.role else ""}, '
                     f'extension {e(m.extension)}</option>' for m in transfer_to)

    def transfer(call_id: str) -> str:  # only with AMI: without it the call's leg cannot be moved
        return (f'<form method="post" action="{PREFIX}/calls/{quote(call_id, safe="")}/transfer">'
                f'{csrf_field(session.csrf)}<label for="to-{e(call_id)}">Transfer to</label>'
                f'<select id="to-{e(call_id)}" name="to">{people}</select> '
                f'<button type="submit">Transfer now</button></form>' if transfer_to else "")

    cards = "".join(
        f'<article class="card" id="call-{e(c.call_id)}"><h2>{e(caller(c.caller))} → {e(c.dialled or "-")}</h2>'
        f'<p class="muted">Since {e(when(c.started_at))} · {e(c.call_id)}</p>'
        f'<p>Now: <strong class="state">{e(c.state)}</strong></p>{transfer(c.call_id)}<ol class="turns">'
        + "".join(f'<li><strong>{e(t.speaker)}</strong>: {e(t.text)}</li>' for t in c.turns[-_TURNS_SHOWN:])
        + "</ol></article>" for c in calls)
    used = f" AI capacity in use: {capacity[0]} of {capacity[1]} turn slot(s)." if capacity else ""
    return layout("Live calls", f'<p class="muted">{len(calls)} call(s) now, updated as they happen'
                  f' (without scripts: reloaded every {refresh_s} s).'
                  f'{e(used)}</p>{cards}', session,
                  refresh_s=refresh_s, live=f"{PREFIX}/calls/events")


def users_page(session: StaffSession, users: Iterable[StaffUser], audit: list[dict[str, Any]]) -> str:
    def roles(current: str) -> str:
        return "".join(f'<option value="{r}"{" selected" if r == current else ""}>{r}</option>' for r in STAFF_ROLES)

    def passwords(ident: str) -> str:
        return "".join(f'<label for="{which}-{ident}">{label}</label><input type="password" id="{which}-{ident}" '
                       f'name="{which}" minlength="{MIN_PASSWORD}" autocomplete="new-password" required>'
                       for which, label in (("password", f"Password ({MIN_PASSWORD} characters or more)"),
                                            ("again", "The same password again")))

    def card(u: StaffUser) -> str:
        ident, path = e(u.name), f"{PREFIX}/users/{quote(u.name, safe='')}"
        return (f'<section class="card" id="user-{ident}"><h3>{ident}</h3><p class="muted">{e(u.role)}, added '
                f'{e(when(u.created_at))}</p><form method="post" action="{path}/role">{csrf_field(session.csrf)}'
                f'<label for="role-{ident}">Role</label><select id="role-{ident}" name="role">{roles(u.role)}'
                f'</select> <button type="submit">Change role</button></form><form method="post" '
                f'action="{path}/password">{csrf_field(session.csrf)}{passwords(ident)}<button type="submit">'
                f'Reset password</button></form><form method="post" action="{path}/remove">'
                f'{csrf_field(session.csrf)}<button type="submit">Remove {ident}</button></form></section>')

    add = (f'<form class="card" method="post" action="{PREFIX}/users/add">{csrf_field(session.csrf)}<h2>Add a user</h2>'
           '<label for="new-name">Name (letters, digits and . _ @ -)</label><input id="new-name" name="name" '
           f'required maxlength="64" autocomplete="off"><label for="new-role">Role</label><select id="new-role" '
           f'name="role">{roles("operator")}</select>{passwords("new")}<button type="submit" id="add-user">Add user'
           '</button></form>')
    actions = "".join(f'<tr><td>{e(when(a["at"]))}</td><td>{e(a["user_name"])}</td><td>{e(a["action"])}</td>'
                      f'<td>{e(a["target"] or "")}</td><td>{e(a["outcome"])}</td><td>{e(a["remote"] or "")}</td></tr>'
                      for a in audit)
    return layout("Users and audit", '<p class="muted">Removing a user, or resetting their password, signs them '
                  'out everywhere. The last admin cannot be removed or given another role. The CLI '
                  f'(<code>switchboard users</code>) works too.</p>{add}<h2>Users</h2>'
                  f'{"".join(card(u) for u in users)}<h2>Audit log</h2>'
                  '<table><thead><tr><th scope="col">When</th><th scope="col">User</th><th scope="col">Action</th>'
                  '<th scope="col">Target</th><th scope="col">Outcome</th><th scope="col">From</th></tr></thead>'
                  f'<tbody>{actions}</tbody></table>', session)


def _contact(session: StaffSession, contact: str | None) -> str:
    """Operators see the last digits of a number only; an email address, SIP URI or API chat as it is."""
    if contact and ("@" in contact or contact.startswith("api:") or session.user.may("supervisor")):
        return contact
    return masked(contact)


def _waiting(count: int | None) -> str:
    return f'<strong class="error">{count} new</strong>' if count else ""


def threads_page(session: StaffSession, threads: list[dict[str, Any]], refresh_s: int) -> str:
    rows = "".join(
        f'<tr id="thread-{t["id"]}"><td><a href="{PREFIX}/conversations/{t["id"]}">{e(_contact(session, t["contact"]))}'
        f'</a></td><td>{e(t["channel"])}</td><td>{e(when(t["last_at"]))}</td>'
        f'<td>{e(t["held_by"] or "assistant")}</td>'
        f'<td>{_waiting(t["waiting"])}</td></tr>'
        for t in threads)
    waiting = sum(t["waiting"] or 0 for t in threads)
    return layout("Conversations", f'<p class="muted">Texts by SMS, SIP MESSAGE and email, and HTTP API chats '
                  f'(channel api), newest first; this page reloads every {refresh_s} s. <strong>{waiting}</strong> '
                  'new text(s) wait in taken-over conversations.</p><table><thead><tr><th scope="col">Contact</th>'
                  '<th scope="col">Channel</th><th scope="col">Last text</th><th scope="col">Answered by</th>'
                  f'<th scope="col">Waiting</th></tr></thead><tbody>{rows}</tbody></table>', session,
                  refresh_s=refresh_s)


_INBOUND = {"pending": "waiting for the assistant", "held": "new, for the operator", "staff": "seen by staff"}


def thread_page(session: StaffSession, thread_id: int, messages: list[dict[str, Any]],
                holder: tuple[str, float] | None, contact: str | None = None) -> str:
    def line(m: dict[str, Any]) -> str:
        if m["direction"] == "in":
            who, state = "Customer", _INBOUND.get(m["status"], m["status"])
        else:
            who = m["sent_by"] or "Assistant"
            state = (m["outbox_state"] or m["status"]) + (f' ({m["outbox_error"]})' if m["outbox_error"] else "")
        return (f'<li class="card" id="msg-{m["id"]}"><strong>{e(who)}</strong> <span class="muted">'
                f'{e(when(m["at"]))} · {e(m["channel"])} · {e(state)}</span><br>{e(m["body"])}</li>')

    base, token = f"{PREFIX}/conversations/{thread_id}", csrf_field(session.csrf)
    contact = _contact(session, next((m["sender"] for m in messages if m["sender"]), contact))
    if holder is None:
        status = "The assistant answers this conversation."
        actions = f'<form method="post" action="{base}/take">{token}<button type="submit" id="take">Take over</button></form>'
    elif holder[0] != session.user.name:
        status, actions = f"Taken over by {holder[0]} since {when(holder[1])}.", ""
        if session.user.may("supervisor"):  # an override: the holder left, or is away
            actions = (f'<form method="post" action="{base}/release">{token}<button type="submit" id="release">'
                       f'Release {e(holder[0])}\'s hold</button></form>')
    else:
        status = f"You took this conversation over at {when(holder[1])}: the assistant does not answer it."
        actions = (f'<form method="post" action="{base}/reply">{token}<label for="reply">Your reply</label>'
                   f'<textarea id="reply" name="text" rows="3" required maxlength="1000"></textarea>'
                   f'<p><button type="submit" id="send">Send</button></p></form>'
                   f'<form method="post" action="{base}/release">{token}<button type="submit" id="release">'
                   'Hand back to the assistant</button></form>')
    return layout(f"Conversation with {contact}", f'<p id="holder">{e(status)} Texts that arrive while it is '
                  'taken over are not answered by the assistant, also not after hand-back.</p>'
                  f'<ol class="messages" id="messages">{"".join(line(m) for m in messages)}</ol>{actions}', session)


def outbox_page(session: StaffSession, groups: list[tuple[str, list[OutboxRecord]]], shown: int) -> str:
    def row(r: OutboxRecord) -> str:
        actions = {"failed": (("retry", "Send again"), ("dismiss", "Dismiss")), "queued": (("cancel", "Cancel"),)}
        button = "".join(f'<form method="post" action="{PREFIX}/outbox/{r.id}/{action}">{csrf_field(session.csrf)}'
                         f'<button type="submit">{label}</button></form>' for action, label in actions.get(r.state, ()))
        return (f'<tr id="out-{r.id}"><td>#{r.id}</td><td>{e(r.channel)}</td><td>{e(r.recipient)}</td>'
                f'<td>{e(r.body[:120])}</td><td>{e(r.state)} ({r.attempts} attempt(s), {e(when(r.updated_at))})'
                f'{"<br><span class=error>" + e(r.last_error) + "</span>" if r.last_error else ""}</td>'
                f'<td>{button}</td></tr>')

    head = ('<table><thead><tr><th scope="col">#</th><th scope="col">Channel</th><th scope="col">To</th>'
            '<th scope="col">Text</th><th scope="col">State</th><th scope="col">Action</th></tr></thead><tbody>')
    body = "".join(f'<h2>{e(title)}</h2>' + (f'{head}{"".join(row(r) for r in rows)}</tbody></table>' if rows
                                             else '<p class="muted">None.</p>') for title, rows in groups)
    return layout("Outbox", f'<p class="muted">The newest {shown} of each; a failed message can be sent again or '
                  f'dismissed (it stays failed, off this list), a queued one cancelled.</p>{body}', session)
@dataclass(frozen=True)
class HistoryQuery:
    """The history page's search, as typed (kept in the form and the paging links)."""
    kind: str = "calls"  # or "threads"
    number: str = ""
    date_from: str = ""  # YYYY-MM-DD, local time
    date_to: str = ""
    outcome: str = ""  # calls only
    page: int = 1

    def link(self, page: int, kind: str | None = None) -> str:
        return f"{PREFIX}/history?" + urlencode({"kind": kind or self.kind, "number": self.number,
                                                 "from": self.date_from, "to": self.date_to,
                                                 "outcome": self.outcome, "page": page})


HISTORY_KINDS = (("calls", "Calls"), ("threads", "Text threads"))


def _duration(call: dict[str, Any]) -> str:
    if not call["ended_at"]:
        return "-"
    seconds = round(call["ended_at"] - call["started_at"])
    return f"{seconds // 60}:{seconds % 60:02d}"


def history_page(session: StaffSession, query: HistoryQuery, found: list[dict[str, Any]], total: int,
                 page_size: int) -> str:
    """Calls or text threads (query.kind) matching the search, one page of them."""
    tabs = "".join(f'<a href="{e(query.link(1, kind))}"{" aria-current=page" if kind == query.kind else ""}>'
                   f'{label}</a>' for kind, label in HISTORY_KINDS)
    options = "".join(f'<option value="{e(o)}"{" selected" if o == query.outcome else ""}>{e(o or "any")}</option>'
                      for o in ("", *CALL_OUTCOMES))
    outcome = (f'<label for="outcome">Outcome</label><select id="outcome" name="outcome">{options}</select>'
               if query.kind == "calls" else "")
    form = (f'<form method="get" action="{PREFIX}/history" class="card"><input type="hidden" name="kind" '
            f'value="{e(query.kind)}"><label for="number">Number or address (any part)</label><input id="number" '
            f'name="number" value="{e(query.number)}"><label for="from">From</label><input id="from" name="from" '
            f'type="date" value="{e(query.date_from)}"><label for="to">To (inclusive)</label><input id="to" '
            f'name="to" type="date" value="{e(query.date_to)}">{outcome}<p><button type="submit" id="search">'
            f'Search</button></p></form>')
    if query.kind == "calls":
        head = ("Started", "Caller", "Dialled", "Duration", "Outcome")
        rows = "".join(
            f'<tr><td><a id="open-{e(c["call_id"])}" href="{PREFIX}/history/calls/{quote(c["call_id"], safe="")}">'
            f'{e(when(c["started_at"]))}</a></td><td>{e(_contact(session, c["caller"]))}</td>'
            f'<td>{e(c["dialled"] or "-")}</td><td>{e(_duration(c))}</td><td>{e(c["outcome"])}</td></tr>'
            for c in found)
    else:
        head = ("Last message", "Number or address", "Messages")
        rows = "".join(
            f'<tr><td><a id="open-thread-{t["thread_id"]}" href="{PREFIX}/conversations/{t["thread_id"]}">'
            f'{e(when(t["last_at"]))}</a></td><td>{e(_contact(session, t["number"]))}</td>'
            f'<td>{t["messages"]}</td></tr>' for t in found)
    pages = max(1, -(-total // page_size))
    paging = " ".join(
        link for link in (f'<a href="{e(query.link(query.page - 1))}">Newer</a>' if query.page > 1 else "",
                          f'<a href="{e(query.link(query.page + 1))}">Older</a>' if query.page < pages else "") if link)
    columns = "".join(f'<th scope="col">{e(h)}</th>' for h in head)
    table = (f'<table><thead><tr>{columns}</tr></thead><tbody>{rows}</tbody></table>' if found
             else '<p class="muted">Nothing matches.</p>')
    return layout("History", f'<nav class="tabs" aria-label="History of">{tabs}</nav>{form}<p class="muted" '
                  f'id="found">{total} found, page {query.page} of {pages}.</p>{table}<p>{paging}</p>', session)


def _said(text: str) -> str:
    return e(text) if text else '<span class="muted">(removed: past retention)</span>'


def _timings(timings: dict[str, float]) -> str:
    return " · ".join(f"{name} {round(ms)} ms" for name, ms in timings.items()) or "-"


def call_page(session: StaffSession, call: dict[str, Any], turns: list[Turn], events: list[CallEvent],
              messages: list[dict[str, Any]], helps: list[HelpRequest]) -> str:
    facts = (f'<p>{e(_contact(session, call["caller"]))} → {e(call["dialled"] or "-")} · started '
             f'{e(when(call["started_at"]))} · duration {e(_duration(call))} · outcome <strong id="outcome">'
             f'{e(call["outcome"])}</strong> · ended by {e(call["end_reason"] or "-")} · {e(call["call_id"])}</p>')
    turn_rows = "".join(f'<tr><td>{t.seq}</td><td>{e(t.speaker)}</td><td>{_said(t.text)}'
                        f'{" <em>(interrupted)</em>" if t.interrupted else ""}</td><td>{e(t.action or "")}</td>'
                        f'<td>{e(_timings(t.timings_ms))}</td></tr>' for t in turns)
    details = (lambda text: text) if session.user.may("supervisor") else masked  # numbers in event data too
    event_rows = "".join(f'<tr><td>{e(clock.second(ev.at))}</td><td>{e(ev.kind)}</td><td>'
                         f'{e(details(" ".join(f"{k}={v}" for k, v in ev.data.items())))}</td></tr>' for ev in events)
    notes = "".join(f'<li>Message for {e(m["for_staff"] or "-")} from {e(m["caller_name"] or "-")} '
                    f'({e(m["status"])}): {_said(m["body"])}</li>' for m in messages)
    notes += "".join(f'<li>Help request ({e(h.status)}): {_said(h.question)}'
                     f'{" — answer: " + e(h.answer) if h.answer else ""}</li>' for h in helps)
    return layout("Call", f'<p><a href="{e(HistoryQuery().link(1))}">Back to the history</a></p>{facts}<h2>Transcript</h2>'
                  '<table id="turns"><thead><tr><th scope="col">#</th><th scope="col">Who</th><th scope="col">Said'
                  '</th><th scope="col">Action</th><th scope="col">Timings</th></tr></thead>'
                  f'<tbody>{turn_rows}</tbody></table><h2>Events</h2><table><thead><tr><th scope="col">When</th>'
                  f'<th scope="col">What</th><th scope="col">Details</th></tr></thead><tbody>{event_rows}</tbody>'
                  f'</table><h2>Messages and help requests</h2><ul>{notes or "<li>None.</li>"}</ul>', session)
