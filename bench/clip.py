"""The media the synthetic producers replay: VP8 in three simulcast layers and Opus, encoded once.

Four seconds of a moving test pattern are encoded with PyAV (libvpx, libopus) at three sizes —
rid ``f`` 640x360 ~600 kbit/s, ``h`` 320x180 ~250 kbit/s, ``q`` 160x90 ~100 kbit/s, 30 fps, a
keyframe every two seconds at the same frames in every layer — and cached as JSON (base64) under
``bench/out/``. A producer then sends the frames in a loop without encoding anything live.
"""

from __future__ import annotations

import base64
import fractions
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

OUT_DIR = Path(__file__).resolve().parent / "out"

VIDEO_FPS = 30
KEYFRAME_INTERVAL_FRAMES = 60  # two seconds
CLIP_FRAMES = 120  # four seconds, a multiple of the keyframe interval
AUDIO_RATE = 48_000
AUDIO_FRAME_SAMPLES = 960  # 20 ms
AUDIO_BITRATE = 32_000
CLIP_AUDIO_FRAMES = 200  # four seconds
RTP_PAYLOAD_MAX = 1200  # VP8 bytes per packet, after the payload descriptor

#: Simulcast layers, lowest first: (rid, width, height, bit/s). The browser client publishes
#: with the same rids and scales (4, 2, 1).
LAYERS = (("q", 160, 90, 100_000), ("h", 320, 180, 250_000), ("f", 640, 360, 600_000))


@dataclass(frozen=True)
class Clip:
    """Encoded media to replay: VP8 frames per layer (each split into packet-sized chunks) and
    Opus packets."""

    layers: dict[str, list[list[bytes]]]  # rid -> per frame: the VP8 frame in chunks
    keyframes: list[int]  # frame indices that are keyframes in every layer
    audio: list[bytes]  # one Opus packet per 20 ms

    @property
    def video(self) -> list[list[bytes]]:
        """The top layer (640x360): what a producer without simulcast sends."""
        return self.layers[LAYERS[-1][0]]

    def bitrate(self, rid: str) -> float:
        frames = self.layers[rid]
        return sum(len(c) for frame in frames for c in frame) * 8 * VIDEO_FPS / len(frames)

    def packets_per_second(self, rid: str) -> float:
        frames = self.layers[rid]
        return sum(len(frame) for frame in frames) * VIDEO_FPS / len(frames)

    @property
    def video_bitrate(self) -> float:
        return self.bitrate(LAYERS[-1][0])

    @property
    def video_packets_per_second(self) -> float:
        return self.packets_per_second(LAYERS[-1][0])


def _test_pattern_frames(count: int, width: int, height: int) -> list[Any]:
    """Moving test pattern: scrolling noise texture, a sweeping bar and a slow colour change."""
    import numpy as np
    from av import VideoFrame

    rng = np.random.default_rng(1234)
    texture = rng.integers(0, 256, size=(height, width * 2), dtype=np.uint8)
    texture = (texture // 4 + 96).astype(np.uint8)  # keep it mid-grey so the encoder copes
    step, bar_width = max(1, width // 160), max(4, width // 16)
    frames = []
    for i in range(count):
        x = (i * step) % width
        y = texture[:, x : x + width].copy()
        bar = (i * 2 * step) % width
        y[:, bar : bar + bar_width] = 235
        u = np.full((height // 2, width // 2), 128 + (i % 60), dtype=np.uint8)
        v = np.full((height // 2, width // 2), 180 - (i % 60), dtype=np.uint8)
        chroma = np.concatenate([u.ravel(), v.ravel()]).reshape(-1, width)
        planes = np.concatenate([y, chroma])
        frame = VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = i
        frame.time_base = fractions.Fraction(1, VIDEO_FPS)
        frames.append(frame)
    return frames


def _encode_video(width: int, height: int, bitrate: int) -> tuple[list[bytes], list[int]]:
    import av

    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, VIDEO_FPS)
    codec.framerate = fractions.Fraction(VIDEO_FPS, 1)
    codec.bit_rate = bitrate
    codec.gop_size = KEYFRAME_INTERVAL_FRAMES
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "undershoot-pct": "95",
        "overshoot-pct": "15",
    }
    frames: list[bytes] = []
    keyframes: list[int] = []
    for i, picture in enumerate(_test_pattern_frames(CLIP_FRAMES, width, height)):
        if i % KEYFRAME_INTERVAL_FRAMES == 0:
            picture.pict_type = av.video.frame.PictureType.I
        packets = list(codec.encode(picture))
        if len(packets) != 1:
            raise RuntimeError(f"VP8 encoder returned {len(packets)} packets for frame {i}")
        if packets[0].is_keyframe:
            keyframes.append(i)
        frames.append(bytes(packets[0]))
    if 0 not in keyframes:
        raise RuntimeError("the first frame of the clip is not a keyframe")
    return frames, keyframes


def _encode_audio() -> list[bytes]:
    import av
    import numpy as np

    codec: Any = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = AUDIO_BITRATE
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    codec.options = {"application": "voip", "frame_duration": "20"}
    out: list[bytes] = []
    t = np.arange(AUDIO_FRAME_SAMPLES) / AUDIO_RATE
    for i in range(CLIP_AUDIO_FRAMES + 4):
        tone = 440.0 * (1 + (i // 50) % 4 / 4)
        phase = 2 * np.pi * tone * (t + i * AUDIO_FRAME_SAMPLES / AUDIO_RATE)
        mono = (np.sin(phase) * 8000).astype(np.int16)
        stereo = np.repeat(mono, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = i * AUDIO_FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        out.extend(bytes(p) for p in codec.encode(frame))
    return out[:CLIP_AUDIO_FRAMES]


def _chunk(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def load_clip(cache: Path | None = None) -> Clip:
    """Return the replay clip, encoding it once and caching it as JSON (base64) under out/."""
    cache = cache or OUT_DIR / "clip-vp8-simulcast-opus.json"
    if cache.exists():
        stored = json.loads(cache.read_text())
    else:
        logger.info("encoding the replay clip once into %s", cache)
        stored = {"layers": {}, "keyframes": None}
        for rid, width, height, bitrate in LAYERS:
            frames, keyframes = _encode_video(width, height, bitrate)
            if stored["keyframes"] not in (None, keyframes):
                raise RuntimeError(f"layer {rid} has keyframes at {keyframes}, not with the others")
            stored["keyframes"] = keyframes
            stored["layers"][rid] = [base64.b64encode(f).decode() for f in frames]
        stored["audio"] = [base64.b64encode(a).decode() for a in _encode_audio()]
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored))
        tmp.replace(cache)
    return Clip(
        layers={
            rid: [_chunk(base64.b64decode(s), RTP_PAYLOAD_MAX) for s in frames]
            for rid, frames in stored["layers"].items()
        },
        keyframes=[int(i) for i in stored["keyframes"]],
        audio=[base64.b64decode(s) for s in stored["audio"]],
    )
