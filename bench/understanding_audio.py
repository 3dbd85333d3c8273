"""Audio mode of bench/understanding.py: the corpus spoken by callers over real AudioSocket connections.

Each utterance is synthesised in a caller voice (tests/support/voices.py: Piper joe, espeak-ng voices
and rates, u-law on the wire, line noise) and said in a call of its own to `switchboard run` on the
bundled defaults, in its own process. The outcome is judged from what the caller got: the words the
gateway said (its stored turns) and the transfer or message it recorded (its stored events),
turned into the shape understanding.outcome() judges in text mode. Earlier turns of an item, the
repeat primer and a cooperative caller's answers to the assistant's questions are said in the same
voice and call, as in text mode.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from common import ROOT, gateway_process
from understanding import REPEAT_PRIMER, TURNS, cooperative_answer, outcome

from gateway.config import load_config
from gateway.media.caller import CallerClient
from llm.dialog import Action
from models.store import Store
from speech.models import bundled_piper_voice
from speech.tts import Synthesizer
from tests.support.voices import CallerVoice

# The understanding is measured, not the machine: a slow shared machine must not hand callers off.
# (Whole sections: etc/switchboard.yaml leaves `capacity` at its defaults.)
ROOMY = {"capacity": {"stt_timeout_s": 60, "dialog_timeout_s": 60, "first_audio_timeout_s": 60}}
REPLY_TIMEOUT_S = 25.0  # no reply at all (nothing heard, or a no-speech prompt only after 10 s)


@dataclass
class Heard:
    """One reply as the caller got it, shaped like llm.dialog.Reply for understanding.outcome()."""

    text: str
    source: str
    action: Action = Action.ANSWER
    target: SimpleNamespace | None = None
    dialog_ms: float | None = None
    transcript: str = field(default="", repr=False)  # what the gateway heard the caller say


SILENT = Heard("", "no reply")


class Judge:
    """Tells which answer the gateway gave from its words: fixed wordings and knowledge answers are
    known texts; an hours answer is the only other answer the bundled defaults give."""

    def __init__(self) -> None:
        self.config = cfg = load_config(ROOT / "etc" / "switchboard.yaml")
        wording = cfg.site.wording
        self.sources = {cfg.site.greeting: "greeting", wording.no_speech_prompt: "rule:no_speech",
                        wording.go_ahead: "rule:go_ahead", wording.confirm_emergency: "confirm:emergency"}
        self.staff = {m.name for m in cfg.site.directory.everyone()}
        self.clarify = re.compile(re.escape(wording.clarify_name).replace(re.escape("{names}"), "(.+)"))
        for entry in cfg.knowledge:
            self.sources[f"{entry.answer} {wording.anything_else}"] = f"knowledge:{entry.id}"
            question = entry.question[:1].lower() + entry.question[1:]
            self.sources[wording.confirm_question.format(question=question)] = f"confirm:{entry.id}"

    def source(self, text: str) -> str:
        if text in self.sources:
            return self.sources[text]
        asked = self.clarify.fullmatch(text)
        if asked and set(names := asked.group(1).split(" or ")) <= self.staff:
            return "clarify:" + "|".join(names)
        return "rule:hours" if "we're open" in text.lower() or "we're closed" in text.lower() else "unrecognised"

    async def reply(self, store: Store, call_id: str, seen: int) -> Heard | None:
        """The newest of the call's assistant turns after the first `seen`, with its recorded action."""
        turns = await store.turns(call_id)
        said = [t for t in turns if t.speaker == "assistant"]
        if len(said) <= seen:
            return None
        turn = said[-1]
        heard = Heard(turn.text, self.source(turn.text), dialog_ms=turn.timings_ms.get("dialog"),
                      transcript=next((t.text for t in reversed(turns) if t.speaker == "caller"), ""))
        if turn.action and turn.action != Action.ANSWER.value:
            event = [e for e in await store.events(call_id) if e.kind == turn.action][-1]
            heard.action, heard.source = Action(turn.action), event.data["source"]
            heard.target = SimpleNamespace(name=event.data["target"]) if event.data.get("target") else None
        return heard


async def exchange(client: CallerClient, store: Store, judge: Judge, pcm: bytes) -> Heard:
    """Say `pcm`, hear the gateway out, and read what it said and did."""
    seen = sum(t.speaker == "assistant" for t in await store.turns(client.call_id))
    sent = await client.say(pcm)
    try:
        await client.wait_reply(sent, timeout_s=REPLY_TIMEOUT_S)
    except TimeoutError:
        return SILENT
    for _ in range(100):  # a turn is stored when its playback has ended: moments after the last frame
        heard = await judge.reply(store, client.call_id, seen)
        if heard is not None:
            return heard
        await asyncio.sleep(0.1)
    return SILENT


class AudioRun:
    """The corpus in each voice, judged as in text mode."""

    def __init__(self, items: list[dict], voices: list[CallerVoice]) -> None:
        self.items, self.voices = items, voices
        self.judge = Judge()
        self.results: dict[str, list[dict]] = {v.name: [] for v in voices}
        self.piper = Synthesizer(bundled_piper_voice())
        self.speech: dict[tuple[str, str], bytes] = {}

    async def say(self, voice: CallerVoice, text: str) -> bytes:
        if (voice.name, text) not in self.speech:
            self.speech[voice.name, text] = await asyncio.to_thread(voice.render, text, self.piper.synthesize)
        return self.speech[voice.name, text]

    async def run(self, concurrency: int) -> dict[str, list[dict]]:
        """Results per voice name; the voices on one codec share a gateway."""
        for voice in self.voices:  # ahead, not while calls wait for it
            print(f"synthesising {len(self.items)} utterances in {voice.name}", file=sys.stderr, flush=True)
            for text in [REPEAT_PRIMER, *(turn for item in self.items for turn in item["text"].split(TURNS))]:
                await self.say(voice, text)
        for codec in dict.fromkeys(v.codec for v in self.voices):
            jobs: asyncio.Queue = asyncio.Queue()
            for voice in self.voices:
                for item in self.items if voice.codec == codec else []:
                    jobs.put_nowait((voice, item))
            audiosocket = {**self.judge.config.audiosocket.model_dump(mode="json"), "codec_0x10": codec}
            async with gateway_process(sections={"audiosocket": audiosocket, **ROOMY}) as (port, _, data):
                store = await Store.open(data / "switchboard.db", client=True)
                try:
                    await asyncio.gather(*(self._worker(jobs, port, store) for _ in range(concurrency)))
                finally:
                    await store.close()
        return self.results

    async def _worker(self, jobs: asyncio.Queue, port: int, store: Store) -> None:
        total = len(self.items) * len(self.voices)
        while not jobs.empty():
            voice, item = jobs.get_nowait()
            result = await self._call(port, store, voice, item)
            self.results[voice.name].append(result)
            done = sum(map(len, self.results.values()))
            mark = "ok  " if result["got"] in item["expected"] else "MISS"
            print(f"[{done}/{total}] {mark} {voice.name} {item['category']}: {item['text']!r} heard "
                  f"{result['heard']!r} -> {result['got']} (want {' | '.join(item['expected'])})",
                  file=sys.stderr, flush=True)

    async def _call(self, port: int, store: Store, voice: CallerVoice, item: dict) -> dict:
        client = await CallerClient("127.0.0.1", port, codec=voice.codec).connect()
        try:
            await client.wait_reply(time.monotonic() - 1)  # the greeting, heard out before speaking

            async def say(text: str) -> Heard:
                return await exchange(client, store, self.judge, await self.say(voice, text))

            *earlier, text = item["text"].split(TURNS)
            previous = (await say(REPEAT_PRIMER)).text if item["category"] == "repeat" else None
            for turn in earlier:
                await say(turn)
            heard = first = await say(text)
            answer = cooperative_answer(heard.source, item["expected"])
            if answer is not None:
                heard = await say(answer)
        finally:
            await client.close()
        return {**item, "voice": voice.name, "got": outcome(heard, previous), "ms": first.dialog_ms,
                "confirmed": answer is not None, "heard": first.transcript}
