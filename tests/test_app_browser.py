"""A real browser (headless Chromium) uses the Talk tab: uploads a portrait and speech, clicks Generate, sees
the video play and the downloads appear; the Live tab, with a fake microphone playing a wav; and the
Avatar3D tab, whose 3D viewer must show the face filling it. Skips without Chromium/chromedriver (CI
installs them)."""

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
from conftest import app_server  # noqa: E402
from selenium import webdriver  # noqa: E402 (a test dependency: pyproject's [test] extra)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import app  # noqa: E402
from pipelines.audio_io import load_audio, save_wav  # noqa: E402


@pytest.fixture(scope="module")
def server():
    with app_server(talk_size="128") as url:
        yield url


def _chrome(profile: Path, *extra_flags: str):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1300",
        f"--user-data-dir={profile}", *extra_flags,
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture
def browser(tmp_path):
    driver = _chrome(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()


def _upload(driver, accept: str, path: Path) -> None:
    """Send a file to the first file input whose accept attribute mentions `accept`."""
    inputs = driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
    matching = [i for i in inputs if accept in (i.get_attribute("accept") or "")]
    assert matching, f"no file input accepts {accept}: {[i.get_attribute('accept') for i in inputs]}"
    matching[0].send_keys(str(path))


def test_browser_uploads_a_portrait_and_speech_and_the_video_plays(server, browser, tmp_path):
    speech = save_wav(load_audio(app.DEFAULTS / "speech.wav")[:16000], tmp_path / "speech.wav")
    browser.get(server)
    wait = WebDriverWait(browser, 60)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    _upload(browser, "image", app.DEFAULTS / "portrait.jpg")
    _upload(browser, "audio", speech)
    # The portrait preview and the audio player show once the uploads are in.
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "img[src*='portrait']")))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "audio")))
    buttons = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Generate"]
    assert buttons, "no Generate button"
    next(b for b in buttons if b.is_displayed()).click()
    # The finished mp4 shows up as a download, and the streamed video element is playing something.
    WebDriverWait(browser, 240).until(lambda d: "talk.mp4" in _page_text(d) or _error_text(d))
    assert not _error_text(browser), _error_text(browser)
    assert "motion.csv" in _page_text(browser)
    video = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "video") if _video_has_frames(d) else None
    )
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.0)  # let a frame paint for the screenshot
    shot = tmp_path / "talk.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("HEADSPLAT_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["HEADSPLAT_SCREENSHOT_DIR"]) / "talk.png")
    assert browser.execute_script("return arguments[0].duration", video) > 0.5
    assert shot.stat().st_size > 10_000


def test_browser_live_tab_follows_a_fake_microphone(server, tmp_path, monkeypatch):
    from scipy.signal import resample_poly

    from pipelines import live

    # Chromium's fake microphone plays (and loops) this wav; 16-bit PCM at 48 kHz, the capture's own rate.
    speech = resample_poly(load_audio(app.DEFAULTS / "speech.wav")[:40_000], 3, 1)
    mic_wav = save_wav(speech, tmp_path / "mic.wav", sample_rate=48_000)
    pushed: list[tuple[int, float]] = []  # (rate, RMS) of every block the live session was given
    push = live.LiveSession.push

    def logged_push(self, samples, sample_rate=live.SAMPLE_RATE):
        block = np.asarray(samples, np.float64) / (32768.0 if samples.dtype == np.int16 else 1.0)
        pushed.append((int(sample_rate), float(np.sqrt(np.mean(block**2)))))
        return push(self, samples, sample_rate)

    monkeypatch.setattr(live.LiveSession, "push", logged_push)
    driver = _chrome(
        tmp_path / "profile",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
    )
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        tabs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"))
        next(t for t in tabs if t.text.strip() == "Live").click()
        panel = wait.until(_live_panel)
        _upload(panel, "image", app.DEFAULTS / "portrait.jpg")
        wait.until(lambda d: panel.find_elements(By.CSS_SELECTOR, "img[src*='portrait']"))
        _click(panel, "Start")
        WebDriverWait(driver, 180).until(lambda d: _live_status(d) not in ("", "Live: not started."))
        assert not _error_text(driver), _error_text(driver)
        _click(_block(driver, "Microphone"), "Record")
        # Frames keep arriving in the Live head image while the microphone streams into the session.
        frames, status, deadline = set(), "", time.monotonic() + 40
        while time.monotonic() < deadline and not (len(frames) >= 8 and len(pushed) >= 10):
            frames.add(
                driver.execute_script(
                    "return arguments[0].querySelector('img')?.src", _block(driver, "Live head")
                )
            )
            status = _live_status(driver)
            time.sleep(0.1)
        frames.discard(None)
        _click(_block(driver, "Microphone"), "Stop")
        _click(panel, "Stop")
        WebDriverWait(driver, 60).until(lambda d: _live_status(d) == "Live: stopped.")
        assert not _error_text(driver), _error_text(driver)
    finally:
        driver.quit()
    assert len(frames) >= 8, f"only {len(frames)} distinct live frames arrived"
    assert re.match(r"Live: \d+ frames, latency", status), status
    assert len(pushed) >= 10 and {rate for rate, _ in pushed} == {48_000}, pushed[:5]
    assert max(rms for _, rms in pushed) > 0.03  # the speech, not silence
    assert not app._LIVE  # Stop ended the session


# WebGL clears a canvas once its frame is on screen, so toDataURL reads it blank; keeping the buffer (set
# before the page's scripts run) changes nothing drawn. The canvas's alpha then tells the head from the
# background exactly, even where the head is black (the cap).
_KEEP_WEBGL_BUFFER = """
const getContext = HTMLCanvasElement.prototype.getContext;
HTMLCanvasElement.prototype.getContext = function (kind, options) {
  if (kind === "webgl2" || kind === "webgl") options = {...options, preserveDrawingBuffer: true};
  return getContext.call(this, kind, options);
};
"""


def test_browser_avatar3d_viewer_shows_the_face_filling_it(server, browser):
    from models.face_tracker import FaceTracker

    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _KEEP_WEBGL_BUFFER})
    browser.get(server)
    wait = WebDriverWait(browser, 60)
    tabs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"))
    next(t for t in tabs if t.text.strip() == "Avatar3D").click()
    panel = wait.until(_panel_with("Build the 3D head"))
    _set_number(panel, "Skin detail", 10_000)
    _set_number(panel, "Turntable length (s; 0: none)", 0)
    _upload(panel, "image", app.DEFAULTS / "portrait.jpg")
    wait.until(lambda d: panel.find_elements(By.CSS_SELECTOR, "img[src*='portrait']"))
    _click(panel, "Build the 3D head")
    WebDriverWait(browser, 240).until(lambda d: "head.splat" in _page_text(d) or _error_text(d))
    assert not _error_text(browser), _error_text(browser)
    viewer = _block(browser, "3D head (.ply): drag to turn, scroll to zoom")
    canvas = WebDriverWait(browser, 30).until(lambda d: viewer.find_elements(By.TAG_NAME, "canvas"))[0]
    rgba = _settled_canvas(browser, canvas)
    browser.execute_script("arguments[0].scrollIntoView()", viewer)
    time.sleep(0.5)
    if os.environ.get("HEADSPLAT_SCREENSHOT_DIR"):
        browser.save_screenshot(str(Path(os.environ["HEADSPLAT_SCREENSHOT_DIR"]) / "avatar3d_viewer.png"))
    height, width = rgba.shape[:2]
    head = rgba[..., 3] >= 128  # the head's pixels: at least half opaque
    rows, cols = np.nonzero(head.sum(axis=1) >= 3)[0], np.nonzero(head.sum(axis=0) >= 3)[0]
    assert rows.size and cols.size, "the viewer shows nothing"
    extent = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) / head.size
    report = f"{width}x{height} canvas: head on {head.mean():.1%} of it, its extent {extent:.1%}"
    # It fills the viewer: as tall as the canvas, at least 40% of the canvas's pixels are the head.
    assert head.mean() >= 0.40 and extent >= 0.40 and rows.size >= 0.8 * height, report
    # Nothing cut off but the shoulders: clear top, left and right edges.
    edge = max(2, height // 50)
    assert not head[:edge].any() and not head[:, :edge].any() and not head[:, -edge:].any(), report
    # The face, upright: found by the face detector with its eyes level and above its nose and mouth.
    shown = (rgba[..., :3].astype(np.float32) * rgba[..., 3:] / 255.0).astype(np.uint8)  # over black
    faces = FaceTracker().detect(shown)
    assert faces, f"no face in the viewer ({report})"
    eyes, nose, mouth = faces[0].keypoints[:2], faces[0].keypoints[2], faces[0].keypoints[3]
    assert eyes[:, 1].max() < nose[1] < mouth[1], faces[0].keypoints
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.2 * abs(eyes[0, 0] - eyes[1, 0]), faces[0].keypoints
    assert faces[0].width >= 0.25 * height, (faces[0].box, report)


def _panel_with(text: str):
    """A wait condition: the visible tab panel whose text has `text`."""

    def shown(driver):
        panels = driver.find_elements(By.CSS_SELECTOR, "[role=tabpanel]")
        return next((p for p in panels if p.is_displayed() and text in p.text), None)

    return shown


def _set_number(scope, label: str, value: float) -> None:
    """Type `value` into the number box of the slider whose label starts with `label`."""
    box = scope.find_element(By.CSS_SELECTOR, f"input[type=number][aria-label^='number input for {label}']")
    box.clear()
    box.send_keys(str(value), Keys.TAB)


def _settled_canvas(driver, canvas, timeout: float = 120.0) -> np.ndarray:
    """The canvas's RGBA pixels [H, W, 4] once something is drawn and two reads 0.5 s apart agree."""
    import base64
    import io

    from PIL import Image

    last, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        url = driver.execute_script("return arguments[0].toDataURL('image/png')", canvas)
        rgba = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))
        if last is not None and rgba.shape == last.shape and rgba[..., 3].any():
            if np.abs(rgba.astype(np.int16) - last).mean() < 0.5:
                return rgba
        last = rgba.astype(np.int16)
        time.sleep(0.5)
    raise AssertionError("the 3D viewer's canvas never settled on a drawn frame")


def _live_panel(driver):
    """The Live tab's panel once it shows, else None."""
    panels = driver.find_elements(By.CSS_SELECTOR, "[role=tabpanel]")
    return next((p for p in panels if p.is_displayed() and "Live head" in p.text), None)


def _block(driver, label: str):
    """The visible component block labelled `label`."""
    return driver.execute_script(
        "for (const el of document.querySelectorAll('[data-testid=\"block-label\"]'))"
        "  if (el.textContent.trim() === arguments[0] && el.offsetParent) return el.closest('.block');"
        "return null;",
        label,
    )


def _click(scope, text: str) -> None:
    buttons = [b for b in scope.find_elements(By.TAG_NAME, "button") if b.text.strip() == text]
    assert any(b.is_displayed() for b in buttons), f"no visible {text} button"
    next(b for b in buttons if b.is_displayed()).click()


def _live_status(driver) -> str:
    """The Live tab's status line, read in one go (the markdown is redrawn on every timer tick)."""
    return driver.execute_script(
        "const p = [...document.querySelectorAll('p')].find(p => p.textContent.startsWith('Live:'));"
        "return p ? p.textContent : '';"
    )


def _page_text(driver) -> str:
    """The page's visible text with line breaks dropped (file names render as 'talk' + '.mp4')."""
    return driver.find_element(By.TAG_NAME, "body").text.replace("\n", "")


def _error_text(driver) -> str:
    toasts = driver.find_elements(By.CSS_SELECTOR, ".toast-body, [data-testid='toast-body']")
    return " ".join(t.text for t in toasts if t.text.strip())


def _video_has_frames(driver) -> bool:
    return bool(
        driver.execute_script(
            "const v = document.querySelector('video'); return v && v.readyState >= 2 && v.videoWidth > 0;"
        )
    )


def test_each_tabs_main_button_is_in_view_at_1400x1100(server, browser):
    # A person sees the button that runs the tab without scrolling, on a common laptop window.
    browser.set_window_size(1400, 1100)
    browser.get(server)
    wait = WebDriverWait(browser, 60)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "button[role=tab]")))
    for tab, label in (
        ("Talk", "Generate"),
        ("Live", "Start"),
        ("Avatar3D", "Build the 3D head"),
        ("Guide", "Generate"),
    ):
        next(
            b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == tab
        ).click()
        button = wait.until(
            lambda d, label=label: next(
                (
                    b
                    for b in d.find_elements(By.TAG_NAME, "button")
                    if b.is_displayed() and b.text.strip() == label
                ),
                None,
            )
        )
        bottom = button.rect["y"] + button.rect["height"]
        assert bottom <= browser.execute_script("return window.innerHeight"), (tab, bottom)
