"""Emails as people write them, end to end: in through the SMTP listener, answered by the real dialog and
knowledge (llm/written.py), out through the outbox to a real local SMTP relay."""

from __future__ import annotations

from test_conversation import email_world, send_mail, store  # noqa: F401  # store: holds the site's knowledge

from llm.written import PHONE_ONLY
from models.store import Store

MAILS = {
    "pat@example.test": ("Parking", "Hi,\n\nIs there somewhere to park near your office?\n\nThanks,\nPat\n\n"
                                    "Sent from my iPhone\n"),
    "maria@example.test": ("Two questions", "Good morning team,\n\nDo you accept Aetna? And where are you located?\n\n"
                                            "Best regards\nMaria Gonzalez\n555-0134\n\nOn Mon, 30 Nov 2026 at 09:12, "
                                            "Bright Smile Dental <desk@clinic.test> wrote:\n"
                                            "> Is there anything else I can help you with?\n"),
    "kim@example.test": ("Do you take Cigna?", "\n\nSent from my iPhone\n"),  # asked in the subject only
    "dave@example.test": ("My bill", "Hello,\nI'd like to talk to someone about my bill, I was charged twice.\n"
                                     "Cheers,\nDave\n"),
}


async def test_greetings_signatures_quotes_and_two_questions_get_written_answers(store: Store) -> None:  # noqa: F811
    async with email_world(store) as (channel, relay):
        for sender, (subject, body) in MAILS.items():
            await send_mail(channel, sender, f"From: <{sender}>\nTo: desk@clinic.test\nSubject: {subject}\n\n{body}"
                            .encode())
        mails = await relay.wait_for(len(MAILS))
    replies = {mail["To"]: mail.get_body(("plain",)).get_content() for mail in mails}
    assert "behind the building" in replies["pat@example.test"]  # the parking answer, not "are you asking"
    both = replies["maria@example.test"]
    assert "Aetna" in both and "Harbour Street" in both and both.index("Aetna") < both.index("Harbour Street")
    assert "Tom Becker" in replies["dave@example.test"]
    assert "Cigna" in replies["kim@example.test"]
    assert not [text for text in replies.values() if PHONE_ONLY.search(text)]
