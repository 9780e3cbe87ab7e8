"""Lip sync, seed behaviour, speed, streaming latency and memory of the audio-to-motion model: one JSON line.

    PYTHONPATH=. python benchmarks/lipsync.py [--weights PATH] [--threads 2] [--long]

Definitions
- mouth opening: `models.visemes.mouth_opening` (jawOpen minus mouthClose, plus a quarter of the mean lip
  raise/lower, minus a fifth of mouthPress); ~0 with lips together, ~0.5 on open vowels.
- correlation: Pearson's r between generated and teacher mouth opening over all frames of a set.
  The teacher's phones: held-out voices, the exact timings the synthesiser reports (`pipelines.tts`);
  real speech, forced alignment of the known text (pocketsphinx).
- p/b/m closed: share of p/b/m phones during which (±1 frame) the opening falls below 0.08.
- held-out voices: flite slt/rms and espeak-ng en-gb-scotland (never used in training).
- real speech: the alsa-utils recordings in /usr/share/sounds/alsa ("front center", ...).
- RTF: generation seconds (features included) / audio seconds, for 10 s of speech.
- first-chunk latency: wall time from calling `stream()` on buffered audio until the first chunk (8 frames);
  the model also looks 2 frames (+2 for features) = 160 ms ahead of the last frame of each chunk.
- rtf_cpu: process CPU seconds / audio seconds (all threads summed): less sensitive to other load on a
  shared machine than wall time; wall RTF on an idle machine lies between rtf_cpu / threads and rtf_cpu.
- memory: peak RSS growth during generation of 1 (and with --long 10) minutes of speech, measured in a
  fresh subprocess each (input audio and model are loaded before the baseline is taken).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models.audio import align_phones, speech_features
from models.visemes import bilabial_closure, mouth_opening, teacher_motion
from pipelines.audio_io import load_audio
from pipelines.audio_to_motion import STREAM_LOOKAHEAD, AudioToMotion
from pipelines.synth_corpus import shift_phones
from pipelines.tts import espeak_speak, flite_speak

HELD_OUT = [
    ("flite", "slt", "Maybe my brother bought a map of the moon before lunch."),
    ("flite", "rms", "The people watched a very old movie in the park."),
    ("flite", "slt", "Please put the purple box by the window."),
    ("flite", "rms", "Bob and his mother painted the wooden bridge every summer."),
    ("espeak-ng", "en-gb-scotland", "We will meet by the pool at five, my friend."),
    ("espeak-ng", "en-gb-scotland+f2", "Peter brought some fresh bread and a bottle of milk."),
    ("flite", "slt", "Would you mind opening the window for a moment?"),
    ("espeak-ng", "en-gb-scotland", "The baker made a beautiful pumpkin pie for the farm."),
    ("flite", "rms", "My mum bought a pair of blue shoes by the bus stop."),
    ("espeak-ng", "en-gb-scotland+f2", "Pam keeps a map of Boston in her bag."),
    ("flite", "slt", "The members of the band played music about peace and hope."),
    ("espeak-ng", "en-gb-scotland", "Maybe we should move the piano before the meeting."),
    ("flite", "rms", "People bring warm bread and butter to the market every morning."),
    ("espeak-ng", "en-gb-scotland+f2", "Bring me a bowl of soup, please, my brother is hungry."),
    ("flite", "slt", "Paul became a famous painter by the time he was thirty."),
    ("espeak-ng", "en-gb-scotland", "Big brown bears sometimes sleep in the empty barn."),
]
ALSA = Path("/usr/share/sounds/alsa")


def _speak(engine: str, voice: str, text: str) -> tuple[np.ndarray, list]:
    """(16 kHz audio, exact phones) from the synthesiser itself (`pipelines.tts`), at its default speed."""
    if engine == "flite":
        return flite_speak(text, voice)
    return espeak_speak(text, voice, rate=165, pitch=50)


def _score(model: AudioToMotion, items: list[tuple[np.ndarray, str, list | None]]) -> dict:
    """Scores of `model` on (audio, text, phones) items; phones None: forced-align `text` (pocketsphinx)."""
    gen, ref = [], []
    closed = total = 0
    for audio, text, phones in items:
        if phones is None:
            phones = align_phones(audio, text)
        feats = speech_features(audio)
        teacher = teacher_motion(phones, feats.num_frames, 25.0, feats.energy_db, feats.f0_hz)
        motion = model.generate(audio, 16000, seed=0)
        gen.append(mouth_opening(motion.expression))
        ref.append(mouth_opening(teacher.expression))
        c, n = bilabial_closure(phones, motion.expression, 25.0)
        closed, total = closed + c, total + n
    g, r = np.concatenate(gen), np.concatenate(ref)
    return {
        "mouth_opening_correlation": round(float(np.corrcoef(g, r)[0, 1]), 3),
        "pbm_closed_share": round(closed / total, 3) if total else None,
        "pbm_phones": total,
        "clips": len(items),
    }


def _memory_run(weights: str | None, seconds: float, threads: int) -> None:
    """Child process: print the peak RSS growth (MB) of generating `seconds` of speech."""
    torch.set_num_threads(threads)
    model = AudioToMotion.from_pretrained(weights)
    speech = np.concatenate([_speak("flite", "slt", HELD_OUT[i][2])[0] for i in (0, 1)])
    audio = np.resize(speech, int(seconds * 16000)).astype(np.float32)
    model.generate(audio[: 16000 * 5], 16000)  # warm up allocators and lazy imports before the baseline
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    # ru_maxrss only grows; reset it is impossible, so compare the final peak to the current RSS.
    start = time.perf_counter()
    motion = model.generate(audio, 16000)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_growth_mb": round((peak - rss) / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
                      "frames": motion.num_frames, "rtf": round(elapsed / seconds, 4)}))  # fmt: skip


def _memory(weights: str | None, seconds: float, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--_memory-run", str(seconds), "--threads", str(threads)]
    if weights:
        cmd += ["--weights", weights]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="motion model (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--long", action="store_true", help="also measure 10 minutes of audio")
    parser.add_argument("--_memory-run", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_run is not None:
        _memory_run(args.weights, args._memory_run, args.threads)
        return
    torch.set_num_threads(args.threads)
    model = AudioToMotion.from_pretrained(args.weights)
    result: dict = {"benchmark": "lipsync", "threads": args.threads}
    held = []
    pad = np.zeros(4000, np.float32)
    for engine, voice, text in HELD_OUT:
        if shutil.which(engine) is None:
            continue
        speech, phones = _speak(engine, voice, text)
        held.append(
            (np.concatenate([pad, speech, pad]), text, shift_phones(phones, 0.25, speech.size / 16000 + 0.5))
        )
    result["held_out_voices"] = _score(model, held)
    real = []
    for wav in sorted(ALSA.glob("*.wav")):
        if wav.stem == "Noise":
            continue
        real.append((load_audio(wav), wav.stem.replace("_", " ").lower(), None))
    if real:
        result["real_speech"] = _score(model, real)

    # Two seeds: head and blinks should differ, lips should not.
    audio = np.concatenate([a for a, _, _ in held])
    a, b = model.generate(audio, 16000, seed=1), model.generate(audio, 16000, seed=2)
    blink = (a["eyeBlink_L"] > 0.5).astype(int), (b["eyeBlink_L"] > 0.5).astype(int)
    result["two_seeds"] = {
        "head_rotation_diff_deg": round(float(np.degrees(np.abs(a.rotation - b.rotation)).mean()), 3),
        "head_rotation_std_deg": round(float(np.degrees(a.rotation.std(0)).mean()), 3),
        "blink_frames_differing_share": round(float(np.mean(blink[0] != blink[1])), 4),
        "blinks_per_minute": [round(float(np.sum(np.diff(x) == 1)) / a.duration * 60, 1) for x in blink],
        "lip_opening_diff": round(float(np.abs(mouth_opening(a.expression) - mouth_opening(b.expression)).mean()), 4),
        "lip_opening_mean": round(float(mouth_opening(a.expression).mean()), 4),
        "lip_opening_correlation": round(float(np.corrcoef(mouth_opening(a.expression), mouth_opening(b.expression))[0, 1]), 3),
    }  # fmt: skip

    # Silence and noise.
    silence = model.generate(np.zeros(16000 * 30, np.float32), 16000, seed=0)
    white = (np.random.default_rng(0).standard_normal(16000 * 5) * 0.1).astype(np.float32)
    noise_sets = {"white_noise": white}
    if (ALSA / "Noise.wav").exists():
        noise_sets["alsa_noise"] = np.resize(load_audio(ALSA / "Noise.wav"), 16000 * 5)
    result["silence"] = {
        "max_mouth_opening": round(float(mouth_opening(silence.expression).max()), 4),
        "blinks_in_30s": int(np.sum(np.diff((silence["eyeBlink_L"] > 0.5).astype(int)) == 1)),
        "head_motion_range_deg": round(float(np.degrees(np.ptp(silence.rotation, axis=0)).max()), 2),
    }
    result["noise_p95_mouth_opening"] = {
        k: round(float(np.percentile(mouth_opening(model.generate(v, 16000).expression), 95)), 4)
        for k, v in noise_sets.items()
    }

    # Speed: 10 s of speech, features included; median of 3.
    ten = np.resize(audio, 160000).astype(np.float32)
    model.generate(ten, 16000)
    times, cpu = [], []
    for _ in range(3):
        start, start_cpu = time.perf_counter(), time.process_time()
        model.generate(ten, 16000)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    result["rtf_10s"] = round(float(np.median(times)) / 10.0, 4)
    result["rtf_cpu_10s"] = round(float(np.median(cpu)) / 10.0, 4)
    result["load_average"] = round(os.getloadavg()[0], 2)
    latencies = []
    for _ in range(3):
        start = time.perf_counter()
        next(iter(model.stream(ten)))
        latencies.append(time.perf_counter() - start)
    result["stream_first_chunk_ms"] = round(1000 * float(np.median(latencies)), 1)
    result["stream_lookahead_ms"] = int(1000 * (STREAM_LOOKAHEAD + 2) / 25)
    start, start_cpu = time.perf_counter(), time.process_time()
    chunks = sum(1 for _ in model.stream(ten))
    result["stream_rtf"] = round((time.perf_counter() - start) / 10.0, 4)
    result["stream_rtf_cpu"] = round((time.process_time() - start_cpu) / 10.0, 4)
    result["stream_chunks_10s"] = chunks
    result["memory_1min"] = _memory(args.weights, 60, args.threads)
    if args.long:
        result["memory_10min"] = _memory(args.weights, 600, args.threads)
    result["note"] = "timings on a shared 2-core CPU are noisy"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
