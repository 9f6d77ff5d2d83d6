"""Interop with a second WebRTC stack: aiortc publishes to / receives from Chromium through
medrelay, and two aiortc clients exchange media. Every check counts decoded frames."""

from __future__ import annotations

import asyncio

from aiortc_client import AiortcParticipant, PatternTrack, wait_until
from medrelay_harness import ConsultProbe, Server

ROOM = "interop"


def run(coro, timeout: float = 90):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def test_aiortc_publishes_chromium_decodes(server: Server):
    async def main():
        pub = AiortcParticipant(server.ws_url, server.token(ROOM, "aiortc-cam", "clinic"), ROOM, "aiortc-cam")
        probe = None
        try:
            await pub.connect()
            answer = await pub.publish(PatternTrack(320, 240))
            assert answer.get("rejected", []) == [], answer
            await pub.wait_connected(pub.pub_pc, 10)

            probe = ConsultProbe(server, ROOM, "chromium-viewer", "specialist", seconds=25,
                                 expect_video_from="aiortc-cam", min_frames=30)
            await probe.start()
            rc = await probe.wait(40)
            res = probe.result()
            assert rc == 0 and res and res["ok"], (
                f"Chromium did not decode aiortc's video (rc={rc}, result={res}); "
                f"last stats {probe.last_stats()}; {probe.describe()}\n--- server log ---\n{server.log_tail()}")
            assert res["width"] == 320, res
            video = [e for e in probe.last_stats() if e["identity"] == "aiortc-cam" and e["kind"] == "video"]
            assert video and video[0]["frameHeight"] == 240, video
        finally:
            if probe:
                await probe.stop()
            await pub.close()

    run(main())


def test_chromium_publishes_aiortc_decodes(server: Server):
    async def main():
        probe = ConsultProbe(server, ROOM, "chromium-cam", "clinic", seconds=60)
        sub = AiortcParticipant(server.ws_url, server.token(ROOM, "aiortc-viewer", "specialist"), ROOM, "aiortc-viewer")
        try:
            await probe.start()
            await sub.connect()
            # Video: frames come out of aiortc's decoder, 30 of them within 20 s.
            await wait_until(lambda: sub.frames_from("chromium-cam", "video") >= 30, 20,
                             "aiortc to decode 30 video frames from chromium-cam",
                             lambda: f"{sub.describe()}\n--- server log ---\n{server.log_tail()}")
            [video] = sub.received_from("chromium-cam", "video")
            assert video.width > 0 and video.height > 0, vars(video)
            assert video.info.get("source") == "camera", video.info
            # Audio: 50 decoded Opus frames (1 s).
            await wait_until(lambda: sub.frames_from("chromium-cam", "audio") >= 50, 15,
                             "aiortc to decode 50 audio frames from chromium-cam", sub.describe)
            # Still flowing.
            before = sub.frames_from("chromium-cam", "video")
            await wait_until(lambda: sub.frames_from("chromium-cam", "video") >= before + 20, 10,
                             "video from chromium-cam to keep flowing", sub.describe)
        finally:
            await sub.close()
            await probe.stop()

    run(main())


def test_two_aiortc_clients_exchange_video(server: Server):
    async def main():
        a = AiortcParticipant(server.ws_url, server.token(ROOM, "aio-a", "crew"), ROOM, "aio-a")
        b = AiortcParticipant(server.ws_url, server.token(ROOM, "aio-b", "er"), ROOM, "aio-b")
        try:
            await a.connect()
            await b.connect()
            assert any(p["identity"] == "aio-a" for p in b.joined["participants"]), b.joined
            await a.publish(PatternTrack(320, 240))
            await b.publish(PatternTrack(160, 120))
            for rx, frm, w in ((a, "aio-b", 160), (b, "aio-a", 320)):
                await wait_until(lambda: rx.frames_from(frm, "video") >= 30, 20,
                                 f"{rx.name} to decode 30 frames from {frm}",
                                 lambda: f"{rx.describe()}\n--- server log ---\n{server.log_tail()}")
                [rec] = rx.received_from(frm, "video")
                assert rec.width == w, vars(rec)
        finally:
            await a.close()
            await b.close()

    run(main())
