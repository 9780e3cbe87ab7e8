"""A real browser (headless Chromium) uses the Talk tab: uploads a portrait and speech, clicks Generate, sees
the video play and the downloads appear. Skips without Chromium/chromedriver (CI installs them)."""

import os
import shutil
import time
from pathlib import Path

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
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import app  # noqa: E402
from pipelines.audio_io import load_audio, save_wav  # noqa: E402


@pytest.fixture(scope="module")
def server():
    with app_server(talk_size="128") as url:
        yield url


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1300",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
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
