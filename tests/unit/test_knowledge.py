"""Knowledge retrieval for transcribed caller speech, on a real store loaded from etc/knowledge.yaml."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from llm.knowledge import (
    KnowledgeFileError, Retriever, load_knowledge_yaml, query_terms,
)
from models.records import HelpRequest
from models.store import Store

KNOWLEDGE_FILE = Path(__file__).resolve().parents[2] / "etc" / "knowledge.yaml"

# Worded the way Whisper transcribes callers: fillers, contractions, extra words.
PARAPHRASES = [
    ("Hi, um, what time do you guys close on Fridays?", "hours"),
    ("Are you open on Sunday?", "hours"),
    ("Hello, are you guys open Saturday morning?", "hours"),
    ("How much is it to get my teeth whitened?", "whitening-price"),
    ("What do you charge to whiten your teeth?", "whitening-price"),
    ("Do you take Cigna?", "insurance"),
    ("Aetna?", "insurance"),
    ("Is my insurance accepted there? I have MetLife.", "insurance"),
    ("Do you accept Medicaid?", "insurance"),
    ("Is there somewhere to park?", "parking"),
    ("Is there parking near the clinic?", "parking"),
    ("Sorry to interrupt, where are you located?", "address"),
    ("Excuse me, is the clinic wheelchair accessible?", "wheelchair"),
    ("Where do I park when I come in?", "parking"),
    ("Where exactly are you guys?", "address"),
    ("Yeah, how do I get to your office from downtown?", "address"),
    ("Hi, I was wondering how much a cleaning costs.", "checkup-price"),
    ("How much for a filling?", "filling-price"),
    ("I've got a really bad toothache, can I come in today?", "emergency-visit"),
    ("I chipped my tooth, can you see me today?", "emergency-visit"),
    ("Do you see kids? My daughter is four.", "children"),
    ("How old does my son have to be to see the dentist?", "children"),
    ("Can I pay with my credit card?", "payment"),
    ("Do you have payment plans?", "payment"),
    ("Are you taking new patients right now?", "new-patients"),
    ("I just moved here and I'm looking for a new dentist.", "new-patients"),
    ("If I cancel my appointment is there a charge?", "cancellation"),
    ("I need to reschedule my appointment for Thursday.", "cancellation"),
    ("What should I bring with me the first time?", "first-visit"),
    ("My husband is in a wheelchair, can he get in?", "wheelchair"),
    ("¿Hablan español?", "languages"),
    ("Do you have someone who speaks Spanish?", "languages"),
    ("Hi, I'd like to book an appointment please.", "booking"),
    ("I'm really nervous about the dentist. Do you have, like, laughing gas?", "sedation"),
    ("Are X-rays included in the checkup?", "x-rays"),
    ("It's the middle of the night and my tooth is killing me, who do I call?", "after-hours"),
    ("What services do you guys have?", "services"),
]

UNRELATED = [
    "Do you sell car insurance?",
    "What's the weather tomorrow?",
    "Can you fix my laptop?",
    "Is the post office open today?",
    "How much is a root canal?",  # a dental question the site's knowledge does not answer
    "Can I get a quote for home insurance?",
    "Can I speak to a lawyer?",
    "When does the bus come?",
    "Um.",
]


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "k.db")
    await s.replace_admin_knowledge(load_knowledge_yaml(KNOWLEDGE_FILE))
    yield s
    await s.close()


@pytest.mark.parametrize(("question", "expected"), PARAPHRASES)
async def test_paraphrased_caller_questions_find_the_right_entry(
        store: Store, question: str, expected: str) -> None:
    match = await Retriever(store).best(question)
    assert match is not None, f"no confident match for {question!r}"
    assert match.entry.id == expected, (question, match)
    assert match.matched_terms and 0 < match.score <= 1


@pytest.mark.parametrize("question", UNRELATED)
async def test_unrelated_questions_are_not_answered(store: Store, question: str) -> None:
    assert await Retriever(store).best(question) is None


async def test_search_ranks_several_candidates(store: Store) -> None:
    matches = await Retriever(store).search("How much does teeth whitening cost?", limit=3)
    assert [m.entry.id for m in matches][0] == "whitening-price" and len(matches) == 3
    assert matches[0].score >= matches[1].score >= matches[2].score
    # "cost" joins the concept "how much" already stands for, so it is not counted twice
    assert matches[0].matched_terms == ["how much", "teeth", "whitening"]


async def test_fts_syntax_in_caller_text_is_harmless(store: Store) -> None:
    hostile = 'parking" OR NEAR(a b) AND * : ^ -x {question}: "'
    matches = await Retriever(store).search(hostile)
    assert matches and matches[0].entry.id == "parking"


async def test_learned_answer_reaches_the_next_caller(store: Store) -> None:
    retriever = Retriever(store)
    assert await retriever.best("Do you guys do Invisalign?") is None
    request_id = await store.create_help_request(
        HelpRequest(None, "c1", "+15550102030", "Do you do Invisalign?"))
    await store.answer_help_request(request_id, "Yes, Invisalign starts at 3000 dollars.")
    match = await retriever.best("Hi, um, so do you guys do Invisalign at all?")
    assert match is not None and match.entry.id == f"learned-{request_id}"
    assert match.entry.source == "learned"


def test_query_terms_drop_filler_and_expand_phone_synonyms() -> None:
    terms = query_terms("Hi, um, could you tell me how much it costs to park, please?")
    assert [t.heard for t in terms] == ["how much", "park"]  # "costs" joins the "how much" concept
    assert "price" in terms[0].alternatives and "car" in terms[1].alternatives
    assert [t.heard for t in query_terms("Do you take kids' X-rays?")] == ["take", "kids", "x rays"]
    assert query_terms("Um, yeah, so, I was wondering...") == []


def test_bundled_knowledge_file_reads_well_aloud() -> None:
    entries = load_knowledge_yaml(KNOWLEDGE_FILE)
    assert len(entries) >= 20
    for e in entries:
        assert 3 <= len(e.phrasings) <= 6, e.id
        sentence_ends = re.findall(r"[.!?](?=\s+[A-Z¿]|\s*$)", e.answer)  # not "8 a.m. to"
        assert 1 <= len(sentence_ends) <= 3, e.id
        # TTS-friendly: "120 dollars", "8 a.m.", not "$120" or "8:00"
        assert not re.search(r"\$|\d:\d\d", e.answer), e.id
        assert all(p.lower() != e.question.lower() for p in e.phrasings), e.id


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "knowledge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("entries:\n  - id: a\n    question: Q?\n", r"entries\[0\]\.answer: missing"),
    ("entries:\n  - {id: a, question: Why, answer: A.}\n  - {id: b, question: Why, answer: A.}\n"
     "  - {id: a, question: How, answer: B.}\n",
     r"entries\[2\]\.id: duplicate id 'a' \(first used by entries\[0\]\)"),
    ("entries:\n  - {id: a, question: Why, answer: A., phrasings: just one string}\n",
     r"entries\[0\]\.phrasings: expected a list of text, got str"),
    ("entries:\n  - {id: a, question: Why, answer: 42}\n", r"entries\[0\]\.answer: expected text, got int"),
    ("entries:\n  - {id: a, question: Why, answer: A., phrasings: [ok, null]}\n",
     r"entries\[0\]\.phrasings\[1\]: expected text, got nothing"),
    ("entries:\n  - {id: a, question: Why, answer: '  '}\n", r"entries\[0\]\.answer: empty"),
    ("entries:\n  - {id: a, question: Why, answer: A., phrasing: [x]}\n",
     r"entries\[0\]\.phrasing: unknown key"),
    ("entries:\n  - {id: Opening Hours, question: Why, answer: A.}\n", r"entries\[0\]\.id: 'Opening Hours' must be"),
    ("entries:\n  - {id: learned-1, question: Why, answer: A.}\n", r"entries\[0\]\.id: the 'learned-' prefix"),
    ("entries:\n  - just text\n", r"entries\[0\]: expected a mapping, got str"),
    ("entries: {id: a}\n", r"entries: expected a list, got dict"),
    ("- id: a\n", r"top level: expected a mapping with an 'entries' list"),
    ("entries:\n  - id: a\n   question: bad indent\n", r"invalid YAML"),
])
def test_malformed_files_name_file_entry_and_reason(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(KnowledgeFileError, match=re.escape(str(path)) + ": " + message):
        load_knowledge_yaml(path)


def test_missing_file_is_an_os_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_knowledge_yaml(tmp_path / "nowhere.yaml")


def test_valid_file_loads_with_defaults_and_normalised_text(tmp_path: Path) -> None:
    path = write(tmp_path, "entries:\n  - id: hours\n    question: When   are you open?\n"
                           "    answer: >-\n      Nine to\n      five.\n")
    [entry] = load_knowledge_yaml(path)
    assert (entry.id, entry.question, entry.answer, entry.phrasings, entry.tags, entry.source) == (
        "hours", "When are you open?", "Nine to five.", [], [], "admin")
