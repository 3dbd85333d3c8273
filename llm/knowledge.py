"""The site's own answers: loading etc/knowledge.yaml and retrieving entries for spoken questions.

Retrieval runs on SQLite FTS5 (porter stemming) through the store. Caller text is never
handed to MATCH: it is reduced to content words, each expanded with phone-speech
synonyms, and quoted, so no FTS5 syntax can come from the caller.

A match is scored by *weighted coverage*: the share of the question's content terms the
entry contains, each term weighted by how rare it is across the knowledge (idf). A term
no entry contains weighs nearly as much as the rarest one, so "do you sell car insurance"
is mostly unexplained by the insurance entry and is rejected, while "do you take Cigna"
is fully explained. bm25 orders entries of equal coverage.

Words alone miss indirect questions ("what would that set me back"), so each entry also gets the
semantic similarity of the caller's words to its question, phrasings and answer (llm/semantic.py),
and the two are combined; the thresholds below decide between an answer, a confirming question and
"I'll find out".
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from llm.semantic import Embedder, SemanticIndex
from models.records import KnowledgeEntry
from models.store import Store

log = logging.getLogger(__name__)

# Words and meaning combined. An entry's evidence is its weighted coverage plus SEMANTIC_WEIGHT times
# its cosine similarity (WordLlama) to the caller's words. Calibrated on bench/understanding_tuning.yaml
# and this repo's tests (never on the held-out part) so that "I'm not sure" beats a wrong answer: an
# answer needs a lead of ANSWER_MARGIN in evidence over the next entry, and either coverage of
# WORDS_SUFFICE (the words alone explain the question, as before) or evidence of ANSWER_EVIDENCE.
# From CONFIRM_EVIDENCE the caller is asked whether that is their question.
SEMANTIC_WEIGHT = 1.5
WORDS_SUFFICE = 0.6
ANSWER_EVIDENCE = 1.3
ANSWER_MARGIN = 0.25
CONFIRM_EVIDENCE = 0.8
# A term found only in an entry's answer is weaker evidence than one in its question or
# phrasings: answers mention incidental things ("bring your insurance card").
ANSWER_ONLY_CREDIT = 0.75
UNKNOWN_TERM_FACTOR = 0.75
_TOPIC_COLUMNS = "{question phrasings} : "

# Words that carry no topic on the phone: greetings, fillers, pronouns, auxiliaries,
# generic verbs, spelled-out small numbers ("my daughter is four"), people ("my husband"),
# and days and time words ("next Tuesday") that rarely decide which answer fits.
STOPWORDS = frozenset("""
a about actually after again all also am an and any anybody anyone anything anywhere are
aren as ask asking at basically be because been being bit but by calling came can come
coming could couldn currently day did didn do does doesn doing don during each else even
ever exactly for from get gets getting give go going gonna good got guys had has have
having he hello her here hey hi him his hmm how i if in info information is isn it its
just kind know let like little ll looking lot m many may maybe me mean mine more morning
most much must my need needs no not now of off ok okay on one or other our out over
please quick quickly re really right s say see she should so some somebody someone
something somewhere sorry sort still sure t tell than thank thanks that the their them
then there these they thing think this those to today tomorrow tonight too uh uhm um umm
up us ve very wanna want wanted wanting was wasn we well were weren what whats when
which who whom why will with without won wonder wondered wondering would wouldn yeah yes
yet you your yours
two three four five six seven eight nine ten eleven twelve
monday tuesday wednesday thursday friday saturday sunday next last week put
husband wife mom mother dad father partner friend people
interrupt interrupting excuse pardon bother question questions fine alright
clinic clinics practice
""".split())

# Phone-speech synonyms. Each line is one concept; any member (a word or a phrase) in the
# question searches for all members. A member also catches its plural as heard ("kids"),
# and in the index porter stemming equates plural and -ing forms, so only different
# words need listing.
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("open", "opening", "hours", "close", "closing", "closed", "late"),
    ("cost", "price", "pricing", "charge", "fee", "how much", "expensive", "cheap",
     "dollars", "rate", "set me back", "run me", "cost me"),
    ("park", "parking", "car", "parking lot", "drive", "lot", "spot", "space"),
    ("insurance", "insurer", "coverage", "cover", "covered", "plan", "dental plan",
     "in network"),
    ("where", "address", "located", "location", "directions", "get to", "get there",
     "street", "find you", "near", "nearby", "road", "part of town", "area",
     "find your place", "which floor", "what floor"),
    ("cancel", "cancellation", "reschedule", "move my appointment", "miss", "missed",
     "no show"),
    ("kid", "child", "children", "son", "daughter", "pediatric", "paediatric",
     "toddler"),
    ("whitening", "whiten", "whitened", "whiter", "bleaching", "bleach"),
    ("emergency", "urgent", "urgently", "pain", "toothache", "tooth ache", "hurts",
     "hurting", "killing", "ache", "aching", "broke", "broken", "chipped", "swollen",
     "swelling", "same day", "break", "breaks", "fell out", "came out"),
    ("after hours", "night", "middle of the night", "overnight", "evening", "weekend",
     "on call", "out of hours"),
    ("book", "booking", "appointment", "schedule", "make an appointment", "come in",
     "set up"),
    ("pay", "payment", "card", "cash", "credit", "debit", "visa", "mastercard", "amex",
     "american express", "forms of payment", "form of payment"),
    ("services", "service", "procedures", "procedure", "provide", "stuff"),
    ("checkup", "check up", "cleaning", "cleaned", "clean", "exam", "examination"),
    ("filling", "fill", "cavity", "cavities"),
    ("language", "spanish", "español", "espanol", "english", "translate", "interpreter",
     "habla", "hablan"),
    ("wheelchair", "wheel chair", "accessible", "accessibility", "disabled", "ramp",
     "stairs", "steps", "walker", "handicap"),
    ("sedation", "sedate", "sedated", "laughing gas", "nitrous", "nervous", "anxious",
     "anxiety", "scared", "afraid", "terrified", "fear", "needle", "sleep", "nerves",
     "calm", "knock me out"),
    ("x ray", "xray", "radiation"),
    ("new patient", "new dentist", "sign up", "register", "switch", "join"),
    ("age", "how old", "years old"),
    ("bring", "form", "first visit", "first time", "arrive"),
)

_MAX_PHRASE = max(len(member.split()) for group in SYNONYMS for member in group)
_GROUP_OF: dict[str, tuple[str, ...]] = {m: g for g in SYNONYMS for m in g}
_NON_WORD = re.compile(r"[^\w]+|_")


@dataclass(frozen=True)
class Term:
    """One content term of a question: the words heard and what they search for."""
    heard: str
    alternatives: tuple[str, ...]

    def fts(self, columns: str = "") -> str:
        """FTS5 expression for this term, optionally restricted to `columns` ("{a b} : ")."""
        # Only [\w ] survives normalisation, so quoting cannot be escaped; doubling any
        # quote keeps that true even if normalisation changes.
        return columns + "(" + " OR ".join('"' + a.replace('"', '""') + '"'
                                           for a in self.alternatives) + ")"


@dataclass
class Match:
    entry: KnowledgeEntry
    score: float  # weighted coverage of the question's terms, 0..1
    matched_terms: list[str]
    bm25: float  # lower is better
    similarity: float = 0.0  # best cosine similarity to the entry's question, phrasings or answer

    @property
    def evidence(self) -> float:
        return self.score + SEMANTIC_WEIGHT * self.similarity


@dataclass(frozen=True)
class Verdict:
    match: Match | None  # the most likely entry, if it is likely enough to ask about
    sure: bool  # answer with it outright; otherwise ask first


def words(text: str) -> list[str]:
    return _NON_WORD.sub(" ", text.lower()).split()


def _forms(phrase: str) -> tuple[str, ...]:
    """The phrase as heard and, if plural-looking, singular ("fridays", "cleanings")."""
    return (phrase, phrase[:-1]) if phrase.endswith("s") else (phrase,)


def _synonyms(phrase: str) -> tuple[str, ...] | None:
    return next((_GROUP_OF[f] for f in _forms(phrase) if f in _GROUP_OF), None)


def _is_content(word: str) -> bool:
    if any(f in STOPWORDS for f in _forms(word)):
        return False
    return len(word) > 1 or word.isdigit()


def query_terms(text: str) -> list[Term]:
    """Content terms of a spoken question, longest synonym phrases first, de-duplicated."""
    tokens = words(text)
    terms: dict[tuple[str, ...], Term] = {}
    i = 0
    while i < len(tokens):
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            phrase = " ".join(tokens[i:i + n])
            group = _synonyms(phrase)
            if group:
                terms.setdefault(group, Term(phrase, group))
                i += n
                break
        else:
            if _is_content(tokens[i]):
                terms.setdefault((tokens[i],), Term(tokens[i], (tokens[i],)))
            i += 1
    return list(terms.values())


def _idf(total_entries: int, matching: int) -> float:
    rarest = math.log(1 + total_entries)
    if matching == 0:
        # Part of the question no answer explains: it weighs heavily, but a little less
        # than a word that does single out one entry, because callers add incidental
        # words ("from downtown") that a knowledge file cannot anticipate.
        return UNKNOWN_TERM_FACTOR * rarest
    return math.log(1 + total_entries / matching)


class Retriever:
    def __init__(self, store: Store, embedder: Callable[[], Embedder] = Embedder.packaged) -> None:
        self.store = store
        self._load_embedder = embedder
        self._index: SemanticIndex | None = None
        self._index_lock = asyncio.Lock()

    async def prepare(self) -> None:
        """Load the embedding model and embed the entries (in a thread); idempotent. Called at start,
        else by the first question."""
        await self._similarities("")

    async def _similarities(self, text: str) -> tuple[list[KnowledgeEntry], dict[str, float]]:
        """The entries and each one's semantic similarity to `text`; new or changed entries (a learned
        answer) are embedded first."""
        entries = await self.store.knowledge()
        async with self._index_lock:  # one update at a time; the index is not shared with other threads
            if self._index is None:
                self._index = SemanticIndex(await asyncio.to_thread(self._load_embedder))
            index = self._index

            def work() -> dict[str, float]:
                index.update(entries)
                return index.similarities(text) if text else {}

            return entries, await asyncio.to_thread(work)

    async def understand(self, text: str) -> Verdict:
        """The entry the caller most likely asks about, by words and by meaning, and how sure that is."""
        entries, similarities = await self._similarities(text)
        by_words = {m.entry.id: m for m in await self.search(text, limit=len(entries))}
        ranked = sorted((by_words.get(e.id) or Match(e, 0.0, [], 0.0) for e in entries),
                        key=lambda m: -(m.score + SEMANTIC_WEIGHT * similarities.get(m.entry.id, 0.0)))
        for m in ranked:
            m.similarity = similarities.get(m.entry.id, 0.0)
        if not ranked or ranked[0].evidence < CONFIRM_EVIDENCE:
            return Verdict(None, False)
        top, lead = ranked[0], ranked[0].evidence - (ranked[1].evidence if len(ranked) > 1 else 0.0)
        sure = lead >= ANSWER_MARGIN and (top.score >= WORDS_SUFFICE or top.evidence >= ANSWER_EVIDENCE)
        log.debug("knowledge id=%s sure=%s score=%.2f similarity=%.2f lead=%.2f",
                  top.entry.id, sure, top.score, top.similarity, lead)
        return Verdict(top, sure)

    async def search(self, text: str, limit: int = 3) -> list[Match]:
        terms = query_terms(text)
        if not terms:
            return []
        hits = await self.store.knowledge_matches(
            [t.fts() for t in terms] + [t.fts(_TOPIC_COLUMNS) for t in terms])
        anywhere, in_topic = hits[:len(terms)], hits[len(terms):]
        matching = set().union(*anywhere)
        if not matching:
            return []
        total_entries = await self.store.knowledge_count()
        weights = [_idf(total_entries, len(h)) for h in anywhere]
        total_weight = sum(weights)
        ranked = await self.store.search_knowledge_raw(
            " OR ".join(t.fts() for t in terms), limit=len(matching))
        matches = []
        for entry, bm25 in ranked:
            matched = [i for i, h in enumerate(anywhere) if entry.id in h]
            credit = sum(weights[i] * (1.0 if entry.id in in_topic[i] else ANSWER_ONLY_CREDIT)
                         for i in matched)
            matches.append(Match(entry=entry, score=credit / total_weight,
                                 matched_terms=[terms[i].heard for i in matched], bm25=bm25))
        matches.sort(key=lambda m: (-m.score, m.bm25))
        return matches[:limit]

    async def best(self, text: str) -> Match | None:
        """The top entry only if it is sure enough to answer with it."""
        verdict = await self.understand(text)
        return verdict.match if verdict.sure else None


class KnowledgeFileError(ValueError):
    pass


_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_KEYS = {"id", "question", "answer", "phrasings", "tags"}


def load_knowledge_yaml(path: str | Path) -> list[KnowledgeEntry]:
    """Read and validate an admin knowledge file.

    Raises OSError (e.g. FileNotFoundError) if it cannot be read, and KnowledgeFileError
    naming the file, the entry and the key if it is malformed.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KnowledgeFileError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(doc, dict) or "entries" not in doc:
        raise _error(path, "top level", "expected a mapping with an 'entries' list")
    if not isinstance(doc["entries"], list):
        raise _error(path, "entries", f"expected a list, got {_kind(doc['entries'])}")

    entries: list[KnowledgeEntry] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(doc["entries"]):
        where = f"entries[{index}]"
        if not isinstance(item, dict):
            raise _error(path, where, f"expected a mapping, got {_kind(item)}")
        unknown = sorted(map(str, set(item) - _KEYS))
        if unknown:
            raise _error(path, f"{where}.{unknown[0]}",
                         f"unknown key (allowed: {', '.join(sorted(_KEYS))})")
        text = {key: _text(path, f"{where}.{key}", item.get(key, _MISSING))
                for key in ("id", "question", "answer")}
        entry_id = text["id"]
        if not _ID.match(entry_id):
            raise _error(path, f"{where}.id",
                         f"{entry_id!r} must be lowercase letters, digits, '-' or '_'")
        if entry_id.startswith("learned-"):
            raise _error(path, f"{where}.id", "the 'learned-' prefix is reserved for learned answers")
        if entry_id in first_index:
            raise _error(path, f"{where}.id",
                         f"duplicate id {entry_id!r} (first used by entries[{first_index[entry_id]}])")
        first_index[entry_id] = index
        entries.append(KnowledgeEntry(
            **text,
            phrasings=_text_list(path, f"{where}.phrasings", item.get("phrasings", [])),
            tags=_text_list(path, f"{where}.tags", item.get("tags", [])),
        ))
    return entries


def dump_knowledge_yaml(entries: list[KnowledgeEntry]) -> str:
    """Entries in etc/knowledge.yaml's format (what load_knowledge_yaml reads), to paste into that file.
    A learned entry's id `learned-N` (a prefix the file may not use) becomes `learned_N`."""
    items = []
    for k in entries:
        item: dict[str, Any] = {"id": re.sub(r"^learned-", "learned_", k.id), "question": k.question,
                                "answer": k.answer}
        if k.phrasings:
            item["phrasings"] = list(k.phrasings)
        if k.tags:
            item["tags"] = list(k.tags)
        items.append(item)
    return yaml.safe_dump({"entries": items}, sort_keys=False, allow_unicode=True, width=100)


_MISSING = object()


def _error(path: Path, where: str, reason: str) -> KnowledgeFileError:
    return KnowledgeFileError(f"{path}: {where}: {reason}")


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _text(path: Path, where: str, value: Any) -> str:
    if value is _MISSING:
        raise _error(path, where, "missing")
    if not isinstance(value, str):
        raise _error(path, where, f"expected text, got {_kind(value)}")
    if not value.strip():
        raise _error(path, where, "empty")
    return " ".join(value.split())


def _text_list(path: Path, where: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _error(path, where, f"expected a list of text, got {_kind(value)}")
    return [_text(path, f"{where}[{i}]", element) for i, element in enumerate(value)]
