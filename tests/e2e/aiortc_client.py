"""A medrelay participant built on aiortc: a second, independent WebRTC stack.

It speaks docs/signaling.md over `websockets`:
- joins with a token;
- answers every `subscribe_offer` on its subscriber connection (aiortc as answerer) and
  counts the frames it decodes from each received track (``track.recv()``);
- publishes tracks on its publisher connection (aiortc as offerer) with `publish_offer`.

Inside the test namespace aioice must be allowed to use 127.0.0.1 (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

import av
import websockets
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, VideoStreamTrack

log = logging.getLogger("aiortc_client")


def no_ice_servers() -> RTCConfiguration:
    # aiortc falls back to a public STUN server when iceServers is None: never here.
    # max-bundle: the server's first subscribe_offer has only the chat data channel and
    # later offers add media; with aiortc's default (balanced) policy, media added in such
    # a renegotiation gets a transport of its own that is swapped for the bundle's too late,
    # and its receivers are never started (RTP arrives and is dropped).
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


class PatternTrack(VideoStreamTrack):
    """A synthetic camera: a moving luma ramp with a bright bar, 30 fps, yuv420p."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240):
        super().__init__()
        self.width, self.height = width, height
        self.n = 0
        self._ramp = bytes((x * 255 // max(1, width - 1)) for x in range(width)) * 2

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        w, h = self.width, self.height
        shift = (self.n * 4) % w
        row = bytearray(self._ramp[shift:shift + w])
        bar = (self.n * 3) % w
        row[bar:bar + 16] = b"\xeb" * len(row[bar:bar + 16])
        y = frame.planes[0]
        y.update(self._rows(bytes(row), w, h, y.line_size))
        for i, val in ((1, 90 + (self.n % 60)), (2, 160)):
            p = frame.planes[i]
            p.update(self._rows(bytes([val]) * (w // 2), w // 2, h // 2, p.line_size))
        frame.pts, frame.time_base = pts, time_base
        self.n += 1
        return frame

    @staticmethod
    def _rows(row: bytes, width: int, height: int, line_size: int) -> bytes:
        return (row + b"\x00" * (line_size - width)) * height


@dataclass
class Received:
    """What this client decoded from one remote track."""

    track_id: str
    kind: str
    info: dict = field(default_factory=dict)  # the RemoteTrack from subscribe_offer
    frames: int = 0
    width: int = 0
    height: int = 0
    first_at: float | None = None
    ended: bool = False


class AiortcParticipant:
    def __init__(self, ws_url: str, token: str, room: str, name: str = "aiortc"):
        self.ws_url, self.token, self.room, self.name = ws_url, token, room, name
        self.ws = None
        self.joined: dict | None = None
        self.messages: list[dict] = []
        self.errors: list[dict] = []
        self.remote_tracks: dict[str, dict] = {}  # track_id -> RemoteTrack
        self.received: dict[str, Received] = {}  # track_id -> counters
        self.sub_pc = RTCPeerConnection(no_ice_servers())
        self.pub_pc: RTCPeerConnection | None = None
        self._publish_answer: asyncio.Future | None = None
        self._reader: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.sub_pc.on("track", self._on_track)

    # --- signaling -------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> dict:
        self.ws = await websockets.connect(self.ws_url, open_timeout=timeout, max_size=2**22)
        await self.send({"type": "join", "token": self.token, "room": self.room})
        msg = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.messages.append(msg)
        if msg.get("type") != "joined":
            raise AssertionError(f"{self.name}: join refused: {msg}")
        self.joined = msg
        self._reader = asyncio.ensure_future(self._read())
        return msg

    async def send(self, msg: dict) -> None:
        await self.ws.send(json.dumps(msg))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                self.messages.append(msg)
                t = msg.get("type")
                if t == "subscribe_offer":
                    await self._answer_subscribe(msg)
                elif t == "publish_answer":
                    if self._publish_answer and not self._publish_answer.done():
                        self._publish_answer.set_result(msg)
                elif t == "error":
                    self.errors.append(msg)
                    if self._publish_answer and not self._publish_answer.done():
                        self._publish_answer.set_exception(AssertionError(f"{self.name}: {msg}"))
        except websockets.ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - keep the failure visible in the test log
            log.exception("%s: signaling reader failed", self.name)
            raise

    async def _answer_subscribe(self, msg: dict) -> None:
        if self.sub_pc.remoteDescription is not None:
            # aiortc starts the receivers of a renegotiation only if its DTLS transport is
            # already connected when the description is applied; one applied during the
            # first handshake leaves them stopped for good. The server waits for our answer,
            # so finish connecting first.
            await self.wait_connected(self.sub_pc, 10)
        for t in msg.get("tracks", []):
            self.remote_tracks[t["track_id"]] = t
        await self.sub_pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="offer"))
        answer = await self.sub_pc.createAnswer()
        await self.sub_pc.setLocalDescription(answer)
        await self.send({"type": "subscribe_answer", "sdp": self.sub_pc.localDescription.sdp})

    # --- receiving ---------------------------------------------------------------------------

    def _on_track(self, track) -> None:
        rec = self.received.setdefault(track.id, Received(track_id=track.id, kind=track.kind))
        task = asyncio.ensure_future(self._consume(track, rec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, track, rec: Received) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                rec.ended = True
                return
            rec.frames += 1
            if rec.first_at is None:
                rec.first_at = time.monotonic()
            if rec.kind == "video":
                rec.width, rec.height = frame.width, frame.height

    def received_from(self, identity: str, kind: str) -> list[Received]:
        out = []
        for tid, rec in self.received.items():
            info = self.remote_tracks.get(tid, {})
            rec.info = info
            if info.get("identity") == identity and rec.kind == kind:
                out.append(rec)
        return out

    def frames_from(self, identity: str, kind: str) -> int:
        return sum(r.frames for r in self.received_from(identity, kind))

    # --- publishing --------------------------------------------------------------------------

    async def publish(self, track, source: str = "camera", timeout: float = 10.0) -> dict:
        self.pub_pc = self.pub_pc or RTCPeerConnection(no_ice_servers())
        self.pub_pc.addTransceiver(track, direction="sendonly")
        offer = await self.pub_pc.createOffer()
        await self.pub_pc.setLocalDescription(offer)
        self._publish_answer = asyncio.get_running_loop().create_future()
        await self.send({
            "type": "publish_offer",
            "sdp": self.pub_pc.localDescription.sdp,
            "tracks": [{"track_id": track.id, "source": source}],
        })
        answer = await asyncio.wait_for(self._publish_answer, timeout)
        if track.id in answer.get("rejected", []):
            raise AssertionError(f"{self.name}: server rejected track {track.id}: {answer}")
        await self.pub_pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return answer

    async def wait_connected(self, pc: RTCPeerConnection, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while pc.connectionState != "connected":
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: peer connection {pc.connectionState!r} after {timeout} s")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        try:
            if self.ws:
                await self.send({"type": "leave"})
                await self.ws.close()
        except Exception:  # noqa: BLE001 - already closed
            pass
        if self._reader:
            self._reader.cancel()
        await self.sub_pc.close()
        if self.pub_pc:
            await self.pub_pc.close()

    def describe(self) -> str:
        msgs = [{**m, "sdp": f"<{len(m['sdp'])} chars>"} if "sdp" in m else m for m in self.messages]
        recs = {tid: vars(r) for tid, r in self.received.items()}
        return json.dumps({"messages": msgs, "received": recs}, default=str)[-4000:]


async def wait_until(pred, timeout: float, what: str, describe=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; {describe()}")
        await asyncio.sleep(0.1)
