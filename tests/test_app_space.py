"""The repository works as a Hugging Face Space as pushed: front matter, requirements, the app's shape,
and the small helpers that keep server paths out of messages."""

import re
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import app

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")

ROOT = Path(__file__).resolve().parents[1]


def _front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with the Space's YAML front matter"
    pairs = (line.split(":", 1) for line in match.group(1).splitlines() if ":" in line)
    return {key.strip(): value.strip().strip('"') for key, value in pairs}


def _requirement_names(lines) -> dict[str, str]:
    names = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
            names[name.lower().replace("_", "-")] = line
    return names


def test_front_matter_names_a_gradio_space_that_runs_app_py_on_the_installed_gradio():
    meta = _front_matter()
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == gr.__version__
    assert meta["python_version"] == "3.12"
    assert (ROOT / meta["app_file"]).is_file() and meta["app_file"] == "app.py"


def test_space_requirements_cover_every_project_dependency_and_pin_gradio_to_the_sdk():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = _requirement_names(project["dependencies"])
    space = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    missing = sorted(set(required) - set(space))
    assert not missing, f"requirements.txt lacks {missing} (the Space installs from it, not pyproject)"
    assert space["gradio"] == f"gradio=={_front_matter()['sdk_version']}"
    assert "gsplat" not in space, "gsplat needs nvcc at run time, which a Space does not have"
    assert "spaces" in space, "ZeroGPU's decorator package"
    assert "espeak-ng" in (ROOT / "packages.txt").read_text().split(), "text input needs a synthesiser"


def test_the_app_has_its_tabs_and_the_api_endpoints_the_tests_use():
    demo = app.build_demo()
    assert isinstance(demo, gr.Blocks)
    tabs = [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    endpoints = {fn.api_name for fn in demo.fns.values()}
    assert tabs == ["Talk", "Live", "Avatar3D", "Guide"]
    assert {"talk", "live_start", "live_stop", "avatar3d", "guide", "search"} <= endpoints
    live = next(b for b in demo.blocks.values() if isinstance(b, gr.Video))
    assert live.streaming and live.autoplay


def test_the_talk_controls_start_at_the_config_defaults_and_stop_at_the_step_limit():
    from models.motion_diffusion import MAX_STEPS
    from pipelines.talk import TalkConfig

    demo = app.build_demo()
    sliders = {b.label: b for b in demo.blocks.values() if isinstance(b, gr.Slider)}
    steps = sliders["Motion diffusion steps (0: rule-based)"]
    assert (steps.minimum, steps.maximum, steps.value) == (0, MAX_STEPS, TalkConfig().steps)
    assert sliders["Head movement scale"].value == TalkConfig().pose_scale


def test_gpu_decorator_is_a_no_op_without_the_spaces_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError

    def work():
        return 42

    assert app.gpu(60)(work) is work


def test_messages_lose_their_folders():
    err = Exception("cannot read audio from /tmp/gradio/abc123/secret name.wav: bad header")
    assert app.plain_message(err) == "cannot read audio from secret name.wav: bad header"
    assert (
        app.plain_message(Exception("audio file not found: /srv/app/x.wav")) == "audio file not found: x.wav"
    )


@pytest.mark.parametrize(("value", "expected"), [(None, 60.0), ("12.5", 12.5), ("", 60.0)])
def test_the_speech_limit_comes_from_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("HEADSPLAT_MAX_SECONDS", raising=False)
    else:
        monkeypatch.setenv("HEADSPLAT_MAX_SECONDS", value)
    assert app.max_seconds() == expected


def test_each_job_gets_its_own_folder_under_the_app_temp_root():
    first, second = app.new_workdir(), app.new_workdir()
    assert first != second and first.parent == second.parent == app.OUTPUT_ROOT
    assert first.is_dir() and not any(first.iterdir())


@pytest.mark.parametrize(("name", "value"), [("HEADSPLAT_CONCURRENCY", "two"), ("HEADSPLAT_QUEUE_SIZE", "0"),
                                             ("HEADSPLAT_TALK_SIZE", "5000"), ("HEADSPLAT_MAX_SECONDS", "nan")])  # fmt: skip
def test_a_malformed_setting_is_an_error_not_ignored(monkeypatch, name, value):
    from models.errors import HeadsplatError

    monkeypatch.setenv(name, value)
    with pytest.raises(HeadsplatError, match=name):
        app.build_demo()
        app.max_seconds()


def test_the_live_handlers_start_take_microphone_chunks_show_frames_and_stop(monkeypatch, tmp_path):
    # The Live tab's functions as Gradio calls them: a session per browser tab, one at a time.
    from types import SimpleNamespace

    from pipelines.audio_io import load_audio

    monkeypatch.setenv("HEADSPLAT_CACHE", str(tmp_path / "cache"))
    tab, other = SimpleNamespace(session_hash="tab-1"), SimpleNamespace(session_hash="tab-2")
    photo, status, timer = app.run_live_start(str(app.DEFAULTS / "portrait.jpg"), 128, tab)
    try:
        assert photo.ndim == 3 and "listening" in status
        with pytest.raises(gr.Error, match="another live session"):
            app.run_live_start(str(app.DEFAULTS / "portrait.jpg"), 128, other)
        speech = (load_audio(app.DEFAULTS / "speech.wav")[:16_000] * 32767).astype("int16")
        for i in range(0, speech.size, 1600):  # 0.1 s chunks, as the browser streams them
            app.run_live_push((16_000, speech[i : i + 1600]), tab)
        import time

        shown = []
        for _ in range(200):
            image, status = app.run_live_frame(tab)
            if isinstance(image, np.ndarray):
                shown.append(image)
            if len(shown) >= 3:
                break
            time.sleep(0.05)
        assert len(shown) >= 3 and shown[0].shape == photo.shape
        assert "frames" in status and "latency" in status
    finally:
        assert app.run_live_stop(tab)[0] == "Live: stopped."
    assert app.run_live_frame(tab) == (gr.skip(), gr.skip())


def test_talks_render_size_defaults_to_auto_like_the_command_line(monkeypatch):
    size = next(
        b
        for b in app.build_demo().blocks.values()
        if isinstance(b, gr.Dropdown) and "resolution" in (b.label or "")
    )
    assert size.value == 0 and ("auto: the face's size in the photo", 0) in size.choices
    monkeypatch.setenv("HEADSPLAT_TALK_SIZE", "200")
    assert app.talk_size_default() == 200
    monkeypatch.setenv("HEADSPLAT_TALK_SIZE", "auto")
    assert app.talk_size_default() == 0


def test_user_mistakes_stay_on_screen_and_out_of_the_server_log():
    from models.errors import HeadsplatError

    err = app.user_error(HeadsplatError("the audio is empty: /srv/uploads/a.wav"))
    assert err.title == "Cannot do that" and err.duration is None and err.print_exception is False
    assert "/srv" not in str(err.message) and "a.wav" in str(err.message)
    with pytest.raises(gr.Error) as raised:
        app.check_inputs(None, None, "", None)
    assert raised.value.title == "No portrait" and raised.value.duration is None


def test_progress_shows_once_per_job_not_in_every_output_box():
    config = app.build_demo().get_config_file()
    jobs = {
        d["api_name"]: d for d in config["dependencies"] if d.get("api_name") in ("talk", "avatar3d", "guide")
    }
    assert set(jobs) == {"talk", "avatar3d", "guide"}
    for dep in jobs.values():
        assert dep["show_progress_on"] == dep["outputs"][:1], dep["api_name"]
