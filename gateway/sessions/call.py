"""One live call: caller frames in -> endpointing -> STT -> dialog -> TTS -> paced frames out.

The session reads the caller's frames continuously, even while it thinks or speaks. Barge-in:
once the endpointer confirms that the caller is talking over our reply (SpeechConfirmed: Silero
heard vad.confirm_ms of speech, so a cough or a click never gets there), the reply plays on while
the words so far are transcribed (again as more come): words beyond a backchannel ("mm-hm",
"okay": speech/turn.py), or speech longer than vad.backchannel_ms, cancel the reply task, which
drops its queued audio and stops its LLM/TTS work. If that interruption then turns out to hold no
words, the reply resumes from the clause that was cut. An utterance that ends while our reply still
plays (a backchannel, too short to confirm, or calls.barge_in off) is held and answered once the
reply is over, unless it was only backchannel words said before the reply's last clause. STT starts
speculatively at a short pause and is reused when the pause turns out to be the end of the turn;
with `vad.end_of_turn: adaptive` its words also decide how long that pause must last to end the
turn (speech/vad.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from contextlib import aclosing
from typing import Awaitable, Callable, Protocol

from gateway.media.leg import AudioIn, Dtmf, Hangup, MediaLeg
from gateway.media.pacer import MediaClock, OutputStream
from gateway.services import Overloaded, Services
from gateway.tasks import TaskSet
from llm import rules
from llm.dialog import Action, Dialog, Reply
from llm.site import StaffMember
from models.privacy import masked, said
from models.records import CallEvent, CallRecord, TakenMessage, Turn
from speech.stt import SttBusy, SttJob, Transcript
from speech.tts import TtsBusy, split_clauses
from speech.turn import BACKCHANNEL_PROMPT, interrupts
from speech.vad import (Endpointer, SpeechConfirmed, SpeechDropped, SpeechResumed, SpeechStarted, TentativeEnd,
                        Utterance)
from speech.voice import VoiceDetector

log = logging.getLogger(__name__)

# Confirmed speech over our reply is transcribed at its confirmation and every 200 ms of audio after
# (the newest such point when STT frees up): the same audio, so the same words, however loaded we are.
_RELISTEN_BYTES = 200 * 16
# ... from this long before its first voiced frame: with the whole 300 ms pre-roll of silence, tiny.en
# heard more backchannels as words ("Yeah, man." for "mm-hm"; bench/barge_in.py).
_LISTEN_LEAD_MS = 100

# Transfers that must end with a person even when the control plane cannot make them.
_TO_A_PERSON = frozenset({"rule:emergency", "rule:busy"})


class Transferer(Protocol):
    """Moves a live call to a staff extension, or ends it (the Asterisk control plane plugs in here).

    Ending the AudioSocket leg lets the dialplan continue: to a person, unless `end_call` could
    mark the call as ended normally (SWITCHBOARD_END=ended, etc/asterisk/extensions.conf).
    """

    async def transfer(self, call: MediaLeg, member: StaffMember) -> bool: ...

    async def end_call(self, call: MediaLeg) -> None: ...


class DialplanTransferer:
    """Without AMI: end the AudioSocket leg so the dialplan continues (see README); the decision is stored."""

    async def transfer(self, call: MediaLeg, member: StaffMember) -> bool:
        await call.hangup()
        return True

    async def end_call(self, call: MediaLeg) -> None:
        await call.hangup()


@dataclass
class _Speculation:
    seq: int
    task: asyncio.Task[Transcript]


@dataclass
class _Playback:
    """The reply being spoken, with one mark per clause: which clauses the caller has heard."""

    reply: Reply
    clauses: list[str]
    marks: list[asyncio.Future[bool]] = field(default_factory=list)

    def unheard(self) -> str:
        """The clause being played (cut: it is said again whole) and all after it."""
        return " ".join(self.clauses[self._heard():])

    def before_last_clause(self) -> bool:
        """Is an earlier clause than the last still playing? (Words said over the last one, often a
        question, may answer it.)"""
        return self._heard() < len(self.clauses) - 1

    def _heard(self) -> int:
        return sum(1 for m in self.marks if m.done() and m.result())


@dataclass
class _Listening:
    """Confirmed speech (utterance `seq`, `confirmed_at` bytes long then) over our reply, not yet more
    than a backchannel: the reply plays on while its words are transcribed (`job`: of `heard` bytes)."""

    seq: int
    confirmed_at: int
    job: asyncio.Future[Transcript] | None = None
    heard: int = 0


@dataclass
class _Cut:
    """A reply stopped by barge-in (utterance `seq`), kept in case the interruption held no words."""

    seq: int
    rest: Reply | None


def _takes_turn(transcript: Transcript) -> bool:
    """Words, said over our reply, that are more than a backchannel, by both readings if there are two."""
    return interrupts(transcript.text) and (not transcript.second_text or interrupts(transcript.second_text))


@dataclass
class _Turn:
    """Timings of one caller turn, in ms, from the moment the endpointer closed the utterance."""

    ended_at: float
    timings: dict[str, float] = field(default_factory=dict)


class CallSession:
    def __init__(self, call: MediaLeg, services: Services, clock: MediaClock,
                 transferer: Transferer | None = None, *, caller: str | None = None, dialled: str | None = None,
                 unavailable: StaffMember | None = None,
                 on_message_taken: Callable[[TakenMessage], Awaitable[None]] | None = None) -> None:
        self.call, self.services, self.clock = call, services, clock
        self.transferer = transferer or DialplanTransferer()
        self.caller, self.dialled = caller, dialled
        self.unavailable = unavailable  # back from a transfer this person did not take
        cfg = services.config
        self.out = OutputStream(call.send_audio, name=call.call_id)
        self.endpointer = Endpointer(cfg.vad, VoiceDetector(cfg.vad.voice_threshold))
        self.dialog = Dialog(cfg.site, services.retriever, services.store, call_id=call.call_id, caller=caller,
                             engine=services.dialog_engine, max_reply_tokens=cfg.models.llm.max_reply_tokens,
                             on_message_taken=on_message_taken, read_back_numbers=True)
        self._reply: asyncio.Task[None] | None = None
        self._reply_interruptible = True
        self._cancel_llm = threading.Event()
        self._speculation: _Speculation | None = None
        self._playback: _Playback | None = None
        self._cut: _Cut | None = None
        self._held: list[Utterance] = []  # utterances that ended while our reply played
        self._held_mid_reply = False  # all of them before its last clause: backchannel words are dropped
        self._listening: _Listening | None = None
        self._speculative_job: SttJob | None = None  # the STT job behind self._speculation
        self._unheard_text = ""  # a turn cancelled before we said anything is merged into the next
        self._seq = 0
        self._prompts = 0
        self._quiet_since = time.monotonic()
        self._tasks = TaskSet(f"call:{call.call_id}")  # everything this call started; ended in _cleanup
        self._end_reason = "eof"
        self._transferring = False

    @property
    def state(self) -> str:
        """What the call is doing now, for staff watching it: greeting, listening, thinking, speaking or
        transferring (speaking the transfer wording counts as transferring)."""
        playback = self._playback
        if self._transferring or (playback is not None and playback.reply.action is Action.TRANSFER):
            return "transferring"
        if playback is not None:
            return "greeting" if self._seq == 0 else "speaking"
        return "thinking" if self._reply is not None else "listening"

    async def transfer_now(self, member: StaffMember) -> None:
        """Staff moved the call from the dashboard: stop what we say or think, then transfer as a dialog
        transfer does (a failed one offers the caller a message)."""
        await self._cancel_reply()
        self._start_reply(self._transfer(member, "staff:dashboard"))
        self._reply_interruptible = False

    @property
    def end_reason(self) -> str:
        """Why the call ended (eof, max duration, shutdown, ...), once run() returned."""
        return self._end_reason

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        cfg = self.services.config
        await self.services.store.start_call(CallRecord(
            call_id=self.call.call_id, caller=self.caller, dialled=self.dialled, site=cfg.site.name,
            transport=self.call.transport, started_at=time.time()))
        self.clock.register(self.out)
        log.info("call started call=%s caller=%s", self.call.call_id, masked(self.caller))
        try:
            if not self.services.admit():
                self._start_reply(self._hand_off_busy("admission", Overloaded("every AI turn slot taken")))
            elif self.unavailable is not None:
                self._start_reply(self._deliver(self._offer_message(self.unavailable, "rule:transfer_returned")))
            else:
                self._start_reply(self._deliver(self.dialog.greeting()))
            try:
                async with asyncio.timeout(cfg.calls.max_call_s):
                    await self._read_events()
            except TimeoutError:
                self._end_reason = "max duration"
                await self._say_goodbye(cfg.site.wording.goodbye, "rule:max_duration")
        finally:
            await self._cleanup()

    def _offer_message(self, member: StaffMember, source: str) -> Reply:
        return self.dialog.offer_message(member, self.services.config.site.wording.transfer_unavailable, source)

    async def shutdown(self, grace_s: float) -> None:
        """Daemon stopping: tell the caller politely, then hang up, within `grace_s`."""
        self._end_reason = "shutdown"
        await self._cancel_reply()
        await self._say_goodbye(self.services.config.site.wording.shutting_down, "rule:shutdown", grace_s)

    async def _say_goodbye(self, text: str, source: str, timeout_s: float = 15.0) -> None:
        """Say `text` and hang up; if it cannot be said in time (speech workers busy), hang up anyway."""
        self._start_reply(self._deliver(Reply(text, Action.END_CALL, source=source)))
        assert self._reply is not None
        done, _ = await asyncio.wait([self._reply], timeout=timeout_s)
        if not done:
            log.warning("goodbye not finished call=%s timeout_s=%g: hanging up", self.call.call_id, timeout_s)
            await self._cancel_reply()
            await self.call.hangup()

    async def _cleanup(self) -> None:
        self._held.clear()
        self._stop_listening()
        if self._reply is not None and not self._reply_interruptible:
            # A transfer or goodbye ends the call itself: let it finish recording its outcome.
            await asyncio.wait([self._reply], timeout=5)
        await self._cancel_reply()
        self._drop_speculation()
        await self._tasks.finish()
        self.clock.unregister(self.out)
        await self.dialog.call_ended()
        await self.services.store.end_call(self.call.call_id, self._end_reason, time.time())
        log.info("call ended call=%s reason=%s", self.call.call_id, self._end_reason)

    # ---- input ------------------------------------------------------------------------------------
    async def _read_events(self) -> None:
        cfg = self.services.config
        async for event in self.call.events():
            if isinstance(event, AudioIn):
                for vad_event in self.endpointer.feed(event.pcm):
                    self._on_vad(vad_event)
                self._listen()
                if self._idle_for() > cfg.calls.no_speech_timeout_s:
                    self._on_no_speech()
            elif isinstance(event, Dtmf):
                log.info("dtmf call=%s digit=%s", self.call.call_id, event.digit)
                reply = self.dialog.on_dtmf(event.digit)
                if reply is not None:
                    await self.services.store.add_event(CallEvent(self.call.call_id, "dtmf", time.time(),
                                                                  {"digit": event.digit}))
                    await self._cancel_reply()
                    self._start_reply(self._deliver(reply))
            elif isinstance(event, Hangup):
                if self._end_reason == "eof":
                    self._end_reason = event.reason
                break

    def _idle_for(self) -> float:
        busy = self.endpointer.in_speech or self._reply is not None or self.out.playing
        if busy:
            self._quiet_since = time.monotonic()
        return time.monotonic() - self._quiet_since

    def _on_no_speech(self) -> None:
        cfg = self.services.config
        reply = self.dialog.no_speech(self._prompts, cfg.calls.no_speech_prompts)
        self._prompts += 1
        log.info("no speech call=%s prompt=%d", self.call.call_id, self._prompts)
        self._start_reply(self._deliver(reply))

    def _on_vad(self, event: object) -> None:
        if isinstance(event, SpeechStarted):
            self._prompts = 0
        elif isinstance(event, SpeechConfirmed):
            if self._reply is not None and self._reply_interruptible and self.services.config.calls.barge_in:
                if self.services.config.vad.backchannel_ms and self._playback is not None:  # we are speaking
                    self._listening = _Listening(event.seq, len(self.endpointer.heard(_LISTEN_LEAD_MS)))
                else:
                    self._interrupt(event.seq, "confirmed")
        elif isinstance(event, TentativeEnd):
            self._speculation = _Speculation(event.seq, self._tasks.spawn(self._transcribe(event.pcm)))
            if self.services.config.vad.end_of_turn == "adaptive":
                self._speculation.task.add_done_callback(self._speculated)
        elif isinstance(event, SpeechResumed):
            self._drop_speculation()
        elif isinstance(event, SpeechDropped):
            self._stop_listening()
            self._drop_speculation()
            rest = self._take_cut(event.seq)
            if rest is not None and self._reply is None:
                log.info("reply resumed call=%s reason=%s", self.call.call_id, event.reason)
                self._start_reply(self._deliver(rest))
        elif isinstance(event, Utterance):
            self._stop_listening()
            speculation = self._speculation if self._speculation and self._speculation.seq == event.seq else None
            if speculation is None or self._held:
                speculation = None
                self._drop_speculation()
            self._speculation = None
            if self._reply is not None and not self._reply_interruptible:
                log.info("utterance ignored call=%s reason=transfer in progress", self.call.call_id)
                return
            if self._reply is not None:  # not an interruption: answered once our reply is over
                log.info("utterance held call=%s audio_ms=%d", self.call.call_id, event.speech_ms)
                mid_reply = self._playback is not None and self._playback.before_last_clause()
                self._held_mid_reply = mid_reply and (self._held_mid_reply or not self._held)
                self._held.append(event)
                return
            turn = _Turn(ended_at=time.monotonic(), timings={"endpoint": float(event.silence_ms)})
            self._start_reply(self._answer(self._with_held(event), speculation, turn))

    def _speculated(self, task: asyncio.Task[Transcript]) -> None:
        """Adaptive end of turn: the words up to the pause say how long to wait for more."""
        speculation = self._speculation
        if speculation is None or speculation.task is not task:  # dropped: the caller spoke on
            return
        text = None if task.cancelled() or task.exception() is not None else task.result().text
        for event in self.endpointer.decide(speculation.seq, text, expecting_number=self.dialog.expects_number):
            self._on_vad(event)

    def _listen(self) -> None:
        """Confirmed speech over our reply: stop the reply once it is longer than a backchannel, else
        transcribe what has come of it (one job at a time, again every _RELISTEN_BYTES)."""
        listening = self._listening
        if listening is None:
            return
        if self._reply is None or not self._reply_interruptible:  # the reply ended or may no longer be cut
            self._stop_listening()
        elif self.endpointer.voice_ms >= self.services.config.vad.backchannel_ms:
            self._interrupt(listening.seq, "long")
        elif listening.job is None:
            pcm = self.endpointer.heard(_LISTEN_LEAD_MS)
            point = len(pcm) - (len(pcm) - listening.confirmed_at) % _RELISTEN_BYTES
            if point <= listening.heard:
                return
            try:
                job = self._submit_backchannel(pcm[:point])
            except SttBusy:  # no way to tell a backchannel in time: stop, as a caller talking would expect
                self._interrupt(listening.seq, "stt busy")
                return
            listening.job, listening.heard = job.result(), point
            listening.job.add_done_callback(self._listened)

    def _listened(self, future: asyncio.Future[Transcript]) -> None:
        listening = self._listening
        if listening is None or listening.job is not future:  # no longer listening: it ended or was stopped
            return
        listening.job = None
        if future.cancelled() or future.exception() is not None:
            self._interrupt(listening.seq, "stt failed")
        elif _takes_turn(future.result()):
            self._interrupt(listening.seq, "words")

    def _stop_listening(self) -> None:
        if self._listening is not None and self._listening.job is not None:
            self._listening.job.cancel()
        self._listening = None

    def _interrupt(self, seq: int, reason: str) -> None:
        """Barge-in confirmed: stop the reply now, keeping what the caller has not heard of it."""
        assert self._reply is not None
        self._stop_listening()
        rest = None
        if self._playback is not None:
            unheard = self._playback.unheard()
            rest = Reply(unheard, source=f"resume:{self._playback.reply.source}") if unheard else None
        self._cancel_llm.set()
        self._reply.cancel()
        self._reply = None  # cancelled: it still records its turn as interrupted
        self._playback = None
        self._cut = _Cut(seq, rest)
        log.info("barge-in call=%s reason=%s queued_frames=%d", self.call.call_id, reason, self.out.queued_frames)
        self.out.clear()

    def _take_cut(self, seq: int) -> Reply | None:
        """What to say again if utterance `seq` (which stopped our reply) holds no words."""
        cut, self._cut = self._cut, None
        return cut.rest if cut is not None and cut.seq == seq else None

    def _with_held(self, utterance: Utterance) -> Utterance:
        """One utterance of the held ones and this one, in order (a reply answers them together)."""
        if not self._held:
            return utterance
        parts, self._held = [*self._held, utterance], []
        return Utterance(b"".join(u.pcm for u in parts), sum(u.speech_ms for u in parts), utterance.seq,
                         utterance.reason)

    async def _answer(self, utterance: Utterance, speculation: _Speculation | None, turn: _Turn,
                      mid_reply: bool = False) -> None:
        resume = self._take_cut(utterance.seq)
        before = self._seq
        await self._turn(utterance, speculation, turn, mid_reply)
        if resume is not None and self._seq == before:  # no turn stored: the interruption held no words
            log.info("reply resumed call=%s reason=no words", self.call.call_id)
            await self._deliver(resume)

    def _transcribe(self, pcm: bytes, speculative: bool = True) -> Awaitable[Transcript]:
        """Queue STT for `pcm`; a speculation waits behind every caller whose turn has ended. A final
        utterance may raise SttBusy; a speculation the full queue refuses is a cancelled future (the
        turn, if this was its end, is then transcribed afresh)."""
        try:
            site = self.services.config.site
            job = self.services.transcriber.submit(pcm, prompt=site.speech_prompt, speculative=speculative,
                                                   second_prompt=rules.safety_prompt(site))
        except SttBusy:
            if not speculative:
                raise
            self._speculative_job = None
            refused: asyncio.Future[Transcript] = asyncio.get_running_loop().create_future()
            refused.cancel()
            return refused
        if speculative:
            self._speculative_job = job
        return job.result()

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation.task.cancel()  # the worker finishes, the result is ignored
            self._speculation = None

    # ---- a turn -------------------------------------------------------------------------------------
    def _start_reply(self, coro) -> None:  # type: ignore[no-untyped-def]
        if self._reply is not None and not self._reply.done():
            self._cancel_llm.set()  # its generation stops at the next token, freeing the LLM thread
            self._reply.cancel()
        self._cancel_llm = threading.Event()
        self._reply_interruptible = True
        self._reply = self._tasks.spawn(coro)
        self._reply.add_done_callback(self._reply_done)

    def _reply_done(self, task: asyncio.Task[None]) -> None:
        if self._reply is task:
            self._reply = None
            self._quiet_since = time.monotonic()
            if self._held and not task.cancelled() and self._reply_interruptible:
                mid_reply = self._held_mid_reply
                held = self._with_held(self._held.pop())
                self._start_reply(self._answer(held, None, _Turn(ended_at=time.monotonic(), timings={"endpoint": 0.0}),
                                               mid_reply))

    async def _cancel_reply(self) -> None:
        task = self._reply
        if task is None or task.done():
            return
        self._cancel_llm.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _turn(self, utterance: Utterance, speculation: _Speculation | None, turn: _Turn,
                    mid_reply: bool = False) -> None:
        """Answer `utterance`; `mid_reply`: it was said over our reply, before its last clause, so only
        backchannel words ("mm-hm", "okay") are no turn."""
        cap = self.services.config.capacity
        stage = "admission"
        try:
            with self.services.ai_turn():
                stage = "stt"
                async with asyncio.timeout(cap.stt_timeout_s):
                    if mid_reply and not await self._more_than_backchannel(utterance):
                        log.info("utterance dropped call=%s reason=backchannel audio_ms=%d", self.call.call_id,
                                 utterance.speech_ms)
                        return
                    transcript = await self._transcript(utterance, speculation, turn)
                text = f"{self._unheard_text} {transcript.text}".strip() if transcript.text else ""
                if not text:
                    log.info("utterance dropped call=%s reason=no words audio_ms=%d", self.call.call_id,
                             utterance.speech_ms)
                    return
                self._seq += 1
                await self.services.store.add_turn(Turn(self.call.call_id, self._seq, "caller", text, time.time(),
                                                        timings_ms=dict(turn.timings)))
                log.info("caller said call=%s chars=%d text=%s stt_ms=%.0f", self.call.call_id, len(text), said(text),
                         transcript.elapsed_ms)
                self._unheard_text = text  # until some of our reply is heard
                stage = "dialog"
                cancel = self._cancel_llm
                try:
                    async with asyncio.timeout(cap.dialog_timeout_s):
                        reply = await self.dialog.respond(text, cancel=cancel, also_heard=transcript.second_text,
                                                          alternatives=transcript.alternatives)
                except TimeoutError:
                    cancel.set()  # the LLM thread stops at its next token
                    raise
        except (Overloaded, SttBusy, TimeoutError) as exc:
            await self._hand_off_busy(stage, exc)
            return
        turn.timings.update(reply.timings_ms)
        try:
            await self._deliver(reply, turn)
        except TtsBusy as exc:  # raised before any of the reply was heard
            await self._hand_off_busy("first_audio", exc)

    async def _transcript(self, utterance: Utterance, speculation: _Speculation | None, turn: _Turn) -> Transcript:
        """The speculation's transcript when it was started on this very utterance and not dropped, else a
        fresh one; both go ahead of every speculation in the STT queue."""
        t0 = time.perf_counter()
        job = self._speculative_job
        cancel = self._cancel_llm  # set when this turn is interrupted, not when a stage times out
        if speculation is not None and job is not None and job.pcm == utterance.pcm and job.promote():
            task = speculation.task
            turn.timings["stt_speculative"] = 1.0
        else:
            task = self._tasks.spawn(self._transcribe(utterance.pcm, speculative=False))
        try:
            transcript = await asyncio.shield(task)
        except asyncio.CancelledError:
            if cancel.is_set():  # the caller spoke again before we knew these words: the next turn gets them
                task.add_done_callback(self._keep_unheard)
            else:
                task.cancel()
            raise
        turn.timings["stt"] = transcript.elapsed_ms
        turn.timings["stt_wait"] = (time.perf_counter() - t0) * 1000
        return transcript

    async def _more_than_backchannel(self, utterance: Utterance) -> bool:
        return _takes_turn(await self._submit_backchannel(utterance.pcm).result())

    def _submit_backchannel(self, pcm: bytes) -> SttJob:
        """Transcribe `pcm` to tell a backchannel: unprimed (any prompt made tiny.en loop on these short
        clips, and a loop costs a second decode of the whole 30 s window), then, if that was heard with
        little confidence (a hum read as "and the make"), again primed with backchannel words. No beam
        search: it cost most of the reaction time (bench/barge_in.py), and a first reading already tells
        "Sorry" or "Wait" from "uh-huh"."""
        return self.services.transcriber.submit(pcm, second_prompt=BACKCHANNEL_PROMPT, beam=False)

    def _keep_unheard(self, task: asyncio.Task[Transcript]) -> None:
        if not task.cancelled() and task.exception() is None and task.result().text:
            self._unheard_text = f"{self._unheard_text} {task.result().text}".strip()

    async def _hand_off_busy(self, stage: str, reason: Exception) -> None:
        """Past capacity: the pre-synthesised busy wording, then a person (AMI transfer, else the dialplan)."""
        cfg = self.services.config
        log.warning("over capacity call=%s stage=%s reason=%s", self.call.call_id, stage,
                    str(reason) or type(reason).__name__)
        await self.services.store.add_event(CallEvent(self.call.call_id, "over_capacity", time.time(),
                                                      {"stage": stage}))
        try:
            await self._deliver(Reply(cfg.site.wording.busy, Action.TRANSFER, cfg.site.directory.front_desk,
                                      source="rule:busy"))
        except TtsBusy:  # the wording is cached from start; until then a person answers without it
            await self._hand_to_dialplan("rule:busy")

    async def _deliver(self, reply: Reply, turn: _Turn | None = None) -> None:
        """Speak a reply, then carry out its action; a transfer is not interruptible once decided."""
        if reply.action is not Action.ANSWER:
            await self.services.store.add_event(CallEvent(self.call.call_id, reply.action.value, time.time(), {
                "source": reply.source, "target": reply.target.name if reply.target else None,
                "extension": reply.target.extension if reply.target else None}))
        if reply.action in (Action.TRANSFER, Action.END_CALL):
            self._reply_interruptible = False
        timings = turn.timings if turn else {}
        first_audio = asyncio.get_running_loop().create_future()
        forget_first_frame = self.out.on_first_frame(lambda at: first_audio.done() or first_audio.set_result(at))
        t0 = time.perf_counter()
        played = False
        self._playback = playback = _Playback(reply, split_clauses(reply.text))
        try:
            async with aclosing(self.services.synthesizer.stream(reply.text)) as speech:
                async for pcm in speech:  # one clause at a time
                    if "tts_first" not in timings:
                        timings["tts_first"] = (time.perf_counter() - t0) * 1000
                        self._unheard_text = ""
                    self.out.enqueue(pcm)
                    playback.marks.append(self.out.mark())
            played = await self.out.mark()
        except asyncio.CancelledError:
            dropped = self.out.clear()
            log.info("reply interrupted call=%s dropped_frames=%d", self.call.call_id, dropped)
            raise
        finally:
            forget_first_frame()
            if self._playback is playback:
                self._playback = None
            if first_audio.done() and turn is not None:
                timings["voice_to_voice"] = (first_audio.result() - turn.ended_at) * 1000 + timings["endpoint"]
            self._seq += 1
            await asyncio.shield(self.services.store.add_turn(Turn(
                self.call.call_id, self._seq, "assistant", reply.text, time.time(), timings_ms=dict(timings),
                action=reply.action.value, interrupted=not played)))
        log.info("assistant said call=%s source=%s action=%s timings=%s", self.call.call_id, reply.source,
                 reply.action.value, {k: round(v) for k, v in timings.items()})
        if reply.action is Action.TRANSFER and reply.target is not None:
            await self._transfer(reply.target, reply.source)
        elif reply.action is Action.END_CALL:
            if self._end_reason == "eof":  # not already ending for a reason of our own
                self._end_reason = "goodbye"
            await self.transferer.end_call(self.call)

    async def _transfer(self, member: StaffMember, source: str) -> None:
        self._transferring = True
        ok = await self.transferer.transfer(self.call, member)
        self._transferring = ok  # a moved call stays "transferring" until its leg ends
        await self.services.store.add_event(CallEvent(self.call.call_id, "transfer_done" if ok else "transfer_failed",
                                                      time.time(), {"extension": member.extension, "source": source}))
        log.info("transfer call=%s to=%s extension=%s ok=%s", self.call.call_id, member.name, member.extension, ok)
        if ok:
            self._end_reason = "transferred"
        elif source in _TO_A_PERSON:
            await self._hand_to_dialplan(source)
        else:  # the caller just heard "putting you through": say what happens instead, at once
            self._reply_interruptible = True
            await self._deliver(self._offer_message(member, "rule:transfer_failed"))

    async def _hand_to_dialplan(self, source: str) -> None:
        """No transfer for a caller who must reach a person: end the leg unmarked, so the dialplan after
        AudioSocket() rings one (etc/asterisk/extensions.conf); an emergency hears the 911 wording again."""
        if source == "rule:emergency":
            await self._deliver(Reply(self.services.config.site.wording.emergency, source="rule:emergency_fallback"))
        self._end_reason = "handed to dialplan"
        await self.call.hangup()
