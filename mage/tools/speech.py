"""Offline speech output for text_to_speech: espeak-ng when installed, else a placeholder voice.

The placeholder is NOT speech synthesis: it writes one deterministic sine tone per word
(pitch from a SHA-256 of the word, 3 octaves above 220 Hz) as a 16 kHz mono 16-bit WAV, so
that the tool-calling pipeline produces a real, playable audio artefact without a TTS model.
Anything that needs intelligible audio must plug in a real TTS executor (shell or HTTP; see
`mage.tools.registry.load_tools`) or install espeak-ng.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from mage.tools.errors import ToolExecutionError

SAMPLE_RATE = 16_000
WORD_S = 0.18
GAP_S = 0.06
VOICES = ("auto", "placeholder", "espeak-ng")


def word_frequency(word: str) -> float:
    """The placeholder voice's pitch for a word (Hz), stable across runs and machines."""
    step = hashlib.sha256(word.lower().encode()).digest()[0] % 36
    return 220.0 * 2 ** (step / 12)


def placeholder_wav(text: str) -> bytes:
    """One faded sine tone per word, separated by silence; an empty text gives a short silence."""
    n_word, n_gap = int(SAMPLE_RATE * WORD_S), int(SAMPLE_RATE * GAP_S)
    t = np.arange(n_word) / SAMPLE_RATE
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    pieces = [np.zeros(n_gap)]
    for word in text.split():
        pieces += [0.4 * fade * np.sin(2 * np.pi * word_frequency(word) * t), np.zeros(n_gap)]
    samples = (np.concatenate(pieces) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


def espeak_wav(text: str, binary: str, timeout_s: float = 30.0) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        try:
            subprocess.run(
                [binary, "-w", str(out), "--", text],
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
        except (subprocess.SubprocessError, OSError) as err:
            raise ToolExecutionError(f"espeak-ng failed on {text!r}: {err}") from err
        return out.read_bytes()


def synthesize(text: str, voice: str = "auto") -> tuple[bytes, str]:
    """(WAV bytes, voice used). voice: 'auto' (espeak-ng if present), 'placeholder', 'espeak-ng'."""
    if voice not in VOICES:
        raise ToolExecutionError(f"unknown voice {voice!r}; choose one of {list(VOICES)}")
    binary = shutil.which("espeak-ng") if voice != "placeholder" else None
    if voice == "espeak-ng" and binary is None:
        raise ToolExecutionError(
            "voice='espeak-ng' but espeak-ng is not on PATH; install it or use voice='auto'"
        )
    if binary:
        return espeak_wav(text, binary), "espeak-ng"
    return placeholder_wav(text), "placeholder"
