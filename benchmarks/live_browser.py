"""The Live tab in a real browser with a fake microphone playing the shipped speech; prints one JSON line.

    PYTHONPATH=. python benchmarks/live_browser.py [--seconds 15] [--size 256] [--max-lag-ms 800]
                                                   [--browser-nice 19] [--save-audio got.wav]

The app runs in this process (started as the browser test starts it); headless Chromium opens it with a
fake microphone (`--use-fake-device-for-media-stream --use-file-for-fake-audio-capture=WAV`) that plays
`assets/defaults/speech.wav` converted to 16-bit PCM, 48 kHz mono, looped. The script picks the shipped
portrait on the Live tab, presses Start, records for `--seconds`, then stops recording and the session.

- frames, fps: distinct images the "Live head" element loaded while recording (a page-side listener
  stamps every image load with the wall clock), and their rate.
- fake_mic_worked, mic_envelope_r, mic_skipped_ms: the audio the live session received (LiveSession.push
  is wrapped to log it) is the speech file: its loudness envelope, in 2 s windows, matches the file's
  (median Pearson r over windows, each at its best place in the looped file). mic_skipped_ms: how far
  the received audio moved ahead in the file over the recording (audio lost on the way; some tens of ms
  either way are the fake device's clock).
- best_lag_ms, lip_loudness_r: the lip gap of every received frame (MediaPipe inner-lip points 13/14 over
  the eye distance, one face crop for all frames, as in benchmarks/talk_lipsync.py) against the speech's
  loudness (RMS over one 40 ms frame) `lag` earlier, lags 0-800 ms (--max-lag-ms): the best lag and its
  Pearson r (best_lag_at_limit: the best lag is the longest searched, so the real one may be longer). The
  speech is the file, on the microphone's clock: the first received sample (its place in the file found
  as above) was heard at the earliest "arrival minus audio received so far" among the first blocks. The
  lag thus spans microphone chunking, upload, motion, rendering, polling and the browser's image load.
  windows_4s: the same search in 4 s stretches of the recording (every 2 s), as latency drifts.
- offline_lip_loudness_r, offline_best_lag_ms: the same measure with no browser and no clock (every frame
  of a session fed the whole speech, against the audio at its own place): the model's own ceiling for r.
- status: the Live tab's status line near the end of recording (the session's own latency and drops).

Screenshots: benchmarks/results/live_browser_page.png (the page, mid-recording) and live_browser_open.png,
_mid.png, _closed.png (the live image at its most open, median and most closed tracked mouth among a
screenshot every ~1.2 s).

The browser shares the machine's CPU with the app here, where on a real deployment it runs on the
visitor's machine, so by default Chromium runs at niceness 19 and gets only what the app leaves over.
With --browser-nice 0 on two cores, Chromium takes most of a core, the session falls behind real time,
and the end-to-end lag grows during the recording (past 800 ms: raise --max-lag-ms to find it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHROMEDRIVER = "/usr/bin/chromedriver"
MIC_RATE = 48_000  # the fake microphone file's rate
FRAME_S = 0.04  # the live model's frame time: loudness is taken over this window
HOP_S = 0.01  # envelope step for matching the received audio to the file

#: Finds the block labelled "Live head" and logs every image it loads: [epoch ms, src]. Load events do
#: not bubble, so the listener catches them at the document in the capture phase.
WATCH_JS = """
window.__liveLoads = [];
window.__liveBlock = () => {
  for (const el of document.querySelectorAll('[data-testid="block-label"]'))
    if (el.textContent.trim() === 'Live head') return el.closest('.block');
  return null;
};
document.addEventListener('load', (e) => {
  const img = e.target, block = window.__liveBlock();
  if (img.tagName === 'IMG' && block && block.contains(img))
    window.__liveLoads.push([Date.now(), img.currentSrc || img.src]);
}, true);
"""


# ------------------------------------------------------------------------------------------- audio
def fake_mic_wav(speech: Path, out: Path) -> tuple[Path, np.ndarray]:
    """The speech as 16-bit PCM 48 kHz mono, for Chromium's fake capture; also its samples."""
    from scipy.signal import resample_poly

    from pipelines.audio_io import load_audio, save_wav

    samples = np.clip(resample_poly(load_audio(speech), MIC_RATE, 16_000), -1, 1).astype(np.float32)
    return save_wav(samples, out, sample_rate=MIC_RATE), samples


def rms_at(samples: np.ndarray, rate: int, centres: np.ndarray, window: float = FRAME_S) -> np.ndarray:
    """RMS of `samples` over `window` seconds around each of `centres` (seconds); NaN outside the signal."""
    power = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    half = max(1, int(rate * window / 2))
    at = np.rint(np.asarray(centres) * rate).astype(np.int64)
    ok = (at - half >= 0) & (at + half <= samples.size)
    out = np.full(at.shape, np.nan)
    out[ok] = np.sqrt((power[at[ok] + half] - power[at[ok] - half]) / (2 * half))
    return out


def envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    """RMS over one frame time, every HOP_S seconds."""
    return rms_at(samples, rate, np.arange(FRAME_S / 2, samples.size / rate - FRAME_S / 2, HOP_S))


def received_audio(pushes: list[tuple[float, int, np.ndarray]]) -> tuple[np.ndarray, int, float]:
    """The pushed blocks as one float mono signal, its rate, and when its first sample was heard (epoch
    seconds): the earliest arrival minus the audio received up to it, among the first ten blocks (later
    ones may follow a block lost on the way)."""
    if not pushes:
        return np.zeros(0, np.float32), MIC_RATE, math.nan
    rate = pushes[0][1]
    blocks, heard, end = [], math.inf, 0
    for k, (arrival, _, samples) in enumerate(pushes):
        block = samples.astype(np.float32) / (32768.0 if samples.dtype == np.int16 else 1.0)
        blocks.append(block.mean(axis=1) if block.ndim == 2 else block)
        end += blocks[-1].size
        if k < 10:
            heard = min(heard, arrival - end / rate)
    return np.concatenate(blocks), rate, heard


def mic_alignment(audio: np.ndarray, rate: int, reference: np.ndarray) -> tuple[float, list[float]]:
    """Where the received audio sits in the looped reference: for each 2 s window (every 1 s), the best
    Pearson r of its envelope against the reference's at every place, and that place (seconds into the
    file). Returns the median r over windows with sound in them, and the places."""
    got, ref = envelope(audio, rate), envelope(reference, MIC_RATE)
    width, step = round(2.0 / HOP_S), round(1.0 / HOP_S)
    loop = np.resize(ref, ref.size + width)
    windows = np.lib.stride_tricks.sliding_window_view(loop, width)[: ref.size]  # [places, width]
    z = (windows - windows.mean(1, keepdims=True)) / (windows.std(1, keepdims=True) + 1e-9)
    scores, places = [], []
    for start in range(0, got.size - width + 1, step):
        window = got[start : start + width]
        if window.std() < 1e-3:
            continue  # silence matches anything
        r = z @ ((window - window.mean()) / window.std()) / width
        best = int(np.argmax(r))
        scores.append(float(r[best]))
        places.append(((best - start) % ref.size) * HOP_S)  # where the received audio's start would be
    return (float(np.median(scores)) if scores else 0.0), places


def lag_search(
    times: np.ndarray, gaps: np.ndarray, loudness_at, max_lag_ms: int = 800, min_frames: int = 30
) -> tuple[int, float, dict[int, float]]:
    """Pearson r of the lip gap at each frame time against the loudness `lag` earlier, for lags from 0 to
    `max_lag_ms` every 10 ms: the best lag, its r, and r at every lag."""
    curve = {}
    for lag_ms in range(0, max_lag_ms + 1, 10):
        loudness = loudness_at(times - lag_ms / 1000)
        ok = np.isfinite(loudness) & np.isfinite(gaps)
        if ok.sum() >= min_frames and loudness[ok].std() > 0 and gaps[ok].std() > 0:
            curve[lag_ms] = float(np.corrcoef(gaps[ok], loudness[ok])[0, 1])
    if not curve:
        return -1, math.nan, curve
    best = max(curve, key=curve.get)
    return best, curve[best], curve


def windowed_lags(
    times: np.ndarray, gaps: np.ndarray, loudness_at, max_lag_ms: int, window: float = 4.0
) -> list[tuple[int, float]]:
    """lag_search over successive `window`-second stretches of frames (every window / 2 seconds): the
    best lag and r of each, which follow a latency that drifts during the recording."""
    found = []
    for start in np.arange(times.min(), times.max() - window / 2, window / 2) if times.size else ():
        inside = (times >= start) & (times < start + window)
        lag, r, _ = lag_search(times[inside], gaps[inside], loudness_at, max_lag_ms, min_frames=20)
        if lag >= 0:
            found.append((lag, r))
    return found


def offline_reference(speech: Path, size: int, cache_dir: str | None) -> tuple[int, float]:
    """The same lip-gap/loudness correlation with no browser and no clock: every frame of a live session
    fed the whole speech at once, each frame against its own audio. The ceiling for the browser's r."""
    from pipelines.audio_io import load_audio
    from pipelines.live import SAMPLE_RATE, LiveConfig, LiveSession

    samples = load_audio(speech)
    config = LiveConfig(size=size, max_latency=0.0, idle_after=0.0, queue_seconds=60.0, cache_dir=cache_dir)
    session = LiveSession(config)
    for i in range(0, samples.size, SAMPLE_RATE // 10):
        session.push(samples[i : i + SAMPLE_RATE // 10])
    frames = session.close()
    gaps = lip_gaps([f.image for f in frames])
    times = np.array([f.time + FRAME_S / 2 for f in frames])  # each frame's middle on the audio's clock
    lag, r, _ = lag_search(times, gaps, lambda when: rms_at(samples, SAMPLE_RATE, when))
    return lag, r


def finite(value: float, digits: int = 3) -> float | None:
    """`value` rounded for the JSON line; None for NaN (no frames, no audio)."""
    return round(value, digits) if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------- video
def decode(data: bytes) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def lip_gaps(images: list[np.ndarray]) -> np.ndarray:
    """The lip gap of each RGB image, read in the first face crop found (NaN before a face is found)."""
    from models.face_tracker import FaceTracker

    tracker = FaceTracker()
    roi, gaps = None, []
    for image in images:
        if roi is None:
            faces = tracker.faces(image)
            if not faces:
                gaps.append(math.nan)
                continue
            roi = faces[0].roi
        marks = tracker.landmarks(image, roi)
        gaps.append(float(np.linalg.norm(marks.points[14, :2] - marks.points[13, :2]) / marks.inter_ocular))
    return np.asarray(gaps)


# ----------------------------------------------------------------------------------------- browser
def start_chrome(profile: Path, wav: Path):
    """Headless Chromium whose microphone plays `wav` (looped), with the permission prompt pre-accepted."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def renice_tree(root: int, niceness: int) -> int:
    """Lower the CPU priority of `root` and every process under it (Chromium's); how many were changed."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    tree, changed = {root}, 0
    for _ in range(8):  # chromedriver -> chromium -> zygotes -> renderers: a few levels
        tree |= {pid for pid, parent in parents.items() if parent in tree}
    for pid in tree:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
            changed += 1
        except OSError:
            pass
    return changed


def click_button(scope, text: str) -> None:
    from selenium.webdriver.common.by import By

    buttons = [b for b in scope.find_elements(By.TAG_NAME, "button") if b.text.strip() == text]
    shown = [b for b in buttons if b.is_displayed()]
    if not shown:
        raise RuntimeError(f"no visible {text!r} button")
    shown[0].click()


def live_panel(driver):
    """The Live tab's panel (the visible tab panel holding the 'Live head' block), or None."""
    from selenium.webdriver.common.by import By

    for panel in driver.find_elements(By.CSS_SELECTOR, "[role=tabpanel]"):
        if panel.is_displayed() and "Live head" in panel.text:
            return panel
    return None


def block_of(driver, label: str):
    """The visible block (a component's frame) labelled `label`."""
    return driver.execute_script(
        "for (const el of document.querySelectorAll('[data-testid=\"block-label\"]'))"
        "  if (el.textContent.trim() === arguments[0] && el.offsetParent) return el.closest('.block');"
        "return null;",
        label,
    )


def status_text(driver) -> str:
    """The Live tab's status line (read in the page at once: the markdown is re-rendered on every tick)."""
    return driver.execute_script(
        "const p = [...document.querySelectorAll('p')].find(p => p.textContent.startsWith('Live:'));"
        "return p ? p.textContent : '';"
    )


# -------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the microphone records")
    parser.add_argument("--size", choices=("256", "320"), default="256", help="the Live tab's size")
    parser.add_argument("--max-lag-ms", type=int, default=800, help="longest lag searched, milliseconds")
    parser.add_argument(
        "--browser-nice",
        type=int,
        default=19,
        help="Chromium's niceness: 19 (default) leaves it only the CPU the app does not use, as if it ran on "
        "the visitor's machine; 0 lets it compete with the app",
    )
    parser.add_argument("--save-audio", help="also write the audio the session received (wav) and a log")
    args = parser.parse_args()

    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import app_server

    import app
    from pipelines import live

    torch.set_num_threads(1)  # as `python app.py`: numba renders in parallel, torch threads would fight it
    pushes: list[tuple[float, int, np.ndarray]] = []  # (arrival epoch s, rate, samples) of every block
    push = live.LiveSession.push

    def logged_push(self, samples, sample_rate=live.SAMPLE_RATE):
        pushes.append((time.time(), int(sample_rate), np.array(samples, copy=True)))
        return push(self, samples, sample_rate)

    RESULTS.mkdir(parents=True, exist_ok=True)
    wall = time.monotonic()
    live.LiveSession.push = logged_push
    try:
        with tempfile.TemporaryDirectory() as tmp, app_server() as url:
            wav, reference = fake_mic_wav(app.DEFAULTS / "speech.wav", Path(tmp) / "speech48k.wav")
            driver = start_chrome(Path(tmp) / "profile", wav)
            try:
                version = driver.capabilities.get("browserVersion", "?")
                wait = WebDriverWait(driver, 90)
                driver.get(url)
                tabs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"))
                next(t for t in tabs if t.text.strip() == "Live").click()
                panel = wait.until(live_panel)
                driver.execute_script(WATCH_JS)
                files = panel.find_elements(By.CSS_SELECTOR, "input[type=file]")
                next(i for i in files if "image" in (i.get_attribute("accept") or "")).send_keys(
                    str(app.DEFAULTS / "portrait.jpg")
                )
                wait.until(lambda d: panel.find_elements(By.CSS_SELECTOR, "img[src*='portrait']"))
                if args.size != "256":
                    radios = panel.find_elements(By.CSS_SELECTOR, "input[type=radio]")
                    next(r for r in radios if r.get_attribute("value") == args.size).click()
                if args.browser_nice:  # every Chromium process exists by now: the page is up
                    renice_tree(driver.service.process.pid, args.browser_nice)
                clicked = time.time()
                click_button(panel, "Start")
                WebDriverWait(driver, 180).until(lambda d: status_text(d) not in ("", "Live: not started."))
                start_s = time.time() - clicked
                mic, view = block_of(driver, "Microphone"), block_of(driver, "Live head")
                click_button(mic, "Record")
                record_t0 = time.time()
                shots: list[bytes] = []
                page_shot = False
                while time.time() - record_t0 < args.seconds:
                    time.sleep(1.2)
                    images = view.find_elements(By.TAG_NAME, "img")
                    if images:
                        shots.append(images[0].screenshot_as_png)
                    if not page_shot and time.time() - record_t0 > args.seconds / 2:
                        driver.save_screenshot(str(RESULTS / "live_browser_page.png"))
                        page_shot = True
                record_t1 = time.time()
                status = status_text(driver)
                click_button(mic, "Stop")
                click_button(panel, "Stop")
                WebDriverWait(driver, 60).until(lambda d: status_text(d) == "Live: stopped.")
                loads = driver.execute_script("return window.__liveLoads")
            finally:
                driver.quit()
            # Every distinct image the Live head element loaded while recording, fetched again by its URL.
            seen: dict[str, float] = {}
            for stamp, src in loads:
                if record_t0 <= stamp / 1000 <= record_t1 and src not in seen:
                    seen[src] = stamp / 1000
            frames = [(t, decode(urllib.request.urlopen(src, timeout=30).read())) for src, t in seen.items()]
            # The avatar the app built is cached here (app_server sets it only while it runs).
            cache_dir = os.environ.get("HEADSPLAT_CACHE")
    finally:
        live.LiveSession.push = push
    offline_lag, offline_r = offline_reference(app.DEFAULTS / "speech.wav", int(args.size), cache_dir)

    times = np.array([t for t, _ in frames])
    gaps = lip_gaps([image for _, image in frames])
    audio, rate, heard = received_audio(pushes)
    mic_r, places = mic_alignment(audio, rate, reference) if audio.size else (0.0, [])
    duration = reference.size / MIC_RATE
    # The speech on the microphone's clock: the file looped, its place `places[0]` heard at `heard`.
    looped = np.tile(reference, math.ceil((audio.size / rate + duration) / duration) + 1)
    start = heard - (places[0] if places else 0.0)

    def loudness_at(when: np.ndarray) -> np.ndarray:
        value = rms_at(looped, MIC_RATE, when - start)
        value[(when < heard) | (when > heard + audio.size / rate)] = np.nan  # only while recording
        return value

    best_lag, best_r, curve = lag_search(times, gaps, loudness_at, args.max_lag_ms)
    windows = windowed_lags(times, gaps, loudness_at, args.max_lag_ms)
    skipped = ((places[-1] - places[0] + duration / 2) % duration - duration / 2) if places else math.nan

    # The live image at three moments: its most open, median and most closed mouth.
    shot_gaps = lip_gaps([decode(png) for png in shots])
    order = [k for k in np.argsort(shot_gaps) if np.isfinite(shot_gaps[k])]
    names = ["live_browser_page.png"]
    for name, k in (("open", -1), ("mid", len(order) // 2), ("closed", 0)) if order else ():
        (RESULTS / f"live_browser_{name}.png").write_bytes(shots[order[k]])
        names.append(f"live_browser_{name}.png")
    if args.save_audio:
        from pipelines.audio_io import save_wav

        save_wav(audio, args.save_audio, sample_rate=rate)
        log = {
            "blocks": [{"arrival": round(a - heard, 4), "samples": len(x)} for a, _, x in pushes],
            "frames": [{"time": round(t - heard, 4), "gap": round(float(g), 4)} for t, g in zip(times, gaps)],
            "places": places,
            "lag_curve": curve,
        }
        Path(args.save_audio).with_suffix(".json").write_text(json.dumps(log))
    tracked = gaps[np.isfinite(gaps)]
    span = times[-1] - times[0] if times.size > 1 else math.nan
    print(
        json.dumps(
            {
                "benchmark": "live_browser",
                "chromium": version,
                "size": int(args.size),
                "browser_nice": args.browser_nice,
                "record_s": round(record_t1 - record_t0, 2),
                "start_s": round(start_s, 2),
                "fake_mic_worked": bool(
                    audio.size > rate and np.sqrt(np.mean(audio**2)) > 0.01 and mic_r > 0.8
                ),
                "mic_rate": rate,
                "mic_dtype": str(pushes[0][2].dtype) if pushes else None,
                "mic_blocks": len(pushes),
                "mic_received_s": round(audio.size / rate, 2),
                "mic_envelope_r": round(mic_r, 3),
                "mic_skipped_ms": round(1000 * skipped) if places else None,
                "frames": len(frames),
                "fps": round((len(frames) - 1) / span, 2) if times.size > 1 else 0.0,
                "frames_tracked": int(tracked.size),
                "lip_gap_range": [round(float(tracked.min()), 3), round(float(tracked.max()), 3)]
                if tracked.size
                else None,
                "best_lag_ms": best_lag,
                "lip_loudness_r": finite(best_r),
                "best_lag_at_limit": best_lag == args.max_lag_ms,
                "r_at_lag_ms": {k: round(v, 3) for k, v in curve.items() if k % 200 == 0},
                "windows_4s": {
                    "lag_ms": [lag for lag, _ in windows],
                    "r": [round(r, 2) for _, r in windows],
                    "median_r": round(float(np.median([r for _, r in windows])), 3) if windows else None,
                },
                "offline_lip_loudness_r": finite(offline_r),
                "offline_best_lag_ms": offline_lag,
                "status": status,
                "screenshots": names,
                "wall_s": round(time.monotonic() - wall, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
