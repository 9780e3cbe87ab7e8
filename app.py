"""headsplat in the browser: Talk, Live, Avatar3D and Guide tabs over the same pipeline functions as the CLIs.

    python app.py                          # serves http://127.0.0.1:7860
    HEADSPLAT_MAX_SECONDS=20 python app.py # a shorter audio limit

This file only adapts pipelines to widgets. Settings come from the environment (a Hugging Face Space sets
them in its Settings tab): HEADSPLAT_MAX_SECONDS (longest speech, default 60), HEADSPLAT_MAX_FILE_SIZE
(largest upload, default 25mb), HEADSPLAT_CONCURRENCY (jobs run at once per tab, default 1),
HEADSPLAT_QUEUE_SIZE (jobs waiting, default 16), HEADSPLAT_TALK_SIZE (Talk's default render size: auto,
the face's size in the photo, or 128-768).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import gradio as gr
import PIL.Image

from models.errors import HeadsplatError
from models.visemes import EMOTIONS
from pipelines.device import resolve_device
from pipelines.motion_io import MOTION_SUFFIXES

ROOT = Path(__file__).resolve().parent
DEFAULTS = ROOT / "assets" / "defaults"
#: Every output goes into a fresh folder under here; folders older than OUTPUT_MAX_AGE are removed.
OUTPUT_ROOT = Path(tempfile.gettempdir()) / "headsplat-app"
OUTPUT_MAX_AGE = 3600.0  # seconds

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".webm", ".mp4", ".mov")
#: The web's text limit, stricter than the command line's (pipelines.drivers.MAX_TEXT_CHARS).
MAX_TEXT_CHARS = 1000
GUIDE_MODELS = (
    "tiny-sd3",
    "tiny-flux",
    "stabilityai/stable-diffusion-3-medium-diffusers",
    "black-forest-labs/FLUX.1-dev",
)
# A Hugging Face id: owner/name. Anything else (a folder path in particular) is refused, so nobody can make
# the server read its own files.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEAD_SPEC = re.compile(r"^[\s0-9:*,]*$")


def _env_float(name: str, default: float, low: float = 1.0, high: float = 1e6) -> float:
    """A HEADSPLAT_* setting from the environment; a malformed or out-of-range value is an error, not ignored."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise HeadsplatError(f"{name}={text!r} is not a number") from None
    if not low <= value <= high:  # NaN fails this too
        raise HeadsplatError(f"{name}={text!r} must be from {low:g} to {high:g}")
    return value


def max_seconds() -> float:
    """The longest speech a Talk job takes, seconds (HEADSPLAT_MAX_SECONDS, default 60)."""
    return _env_float("HEADSPLAT_MAX_SECONDS", 60.0)


def gpu(duration: int):
    """`spaces.GPU(duration=...)` on a ZeroGPU Space; a no-op where the `spaces` package is missing."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


# ------------------------------------------------------------------------------------------------
# Files and errors
def new_workdir() -> Path:
    """A fresh folder for one job's outputs (old ones are swept away)."""
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in OUTPUT_ROOT.iterdir():
        try:
            if old.is_dir() and now - old.stat().st_mtime > OUTPUT_MAX_AGE:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another job removed it first
    return Path(tempfile.mkdtemp(prefix="job-", dir=OUTPUT_ROOT))


_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+([^\s'\"/\\]+)")


def plain_message(err: BaseException) -> str:
    """The error's message with every folder path cut down to its file name (no server paths leak)."""
    return _PATH.sub(r"\1", str(err))


def refusal(message: str, title: str = "Cannot do that") -> gr.Error:
    """The gr.Error a user's mistake gets: titled, shown until closed (not hidden after 10 s), and kept out
    of the server log, where Gradio would otherwise print its traceback (a mistake is not a fault)."""
    return gr.Error(message, title=title, duration=None, print_exception=False)


def user_error(err: HeadsplatError) -> gr.Error:
    """A HeadsplatError as the gr.Error the browser shows."""
    return refusal(plain_message(err))


def require_suffix(path: str | None, allowed: tuple[str, ...], what: str) -> None:
    """Refuse a file whose extension is not one of `allowed`, naming the accepted ones."""
    if path and Path(path).suffix.lower() not in allowed:
        raise refusal(
            f"the {what} must be one of {', '.join(allowed)}; got a {Path(path).suffix or 'file without extension'}",
            title="Wrong file type",
        )


def plain_image_errors(image: gr.Image) -> gr.Image:
    """Make an unreadable upload to `image` fail with a plain message instead of a bare 'Error'.

    Wrapped on the instance: a gr.Image subclass would make Gradio write an app.pyi beside this file.
    """
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (PIL.UnidentifiedImageError, OSError, ValueError) as err:
            raise refusal(
                "the portrait is not an image this app can read: upload a JPEG, PNG or WebP photo",
                title="Wrong file type",
            ) from err

    image.preprocess = checked
    return image


# ------------------------------------------------------------------------------------------------
# Talk
def check_inputs(
    portrait: str | None, audio: str | None, text: str | None, motion_file: str | None
) -> dict[str, str | None]:
    """The portrait and driver fields of a Talk or Avatar3D config, after the checks both make (a portrait,
    file types, the driver rules with the web's text limit)."""
    from pipelines.drivers import check_drivers

    if not portrait:
        raise refusal("upload a portrait photo (or take one with the webcam)", title="No portrait")
    require_suffix(portrait, IMAGE_SUFFIXES, "portrait")
    require_suffix(audio, AUDIO_SUFFIXES, "audio")
    require_suffix(motion_file, MOTION_SUFFIXES, "motion file")
    text = (text or "").strip()
    try:
        check_drivers(audio or None, text or None, motion_file or None, None, max_text_chars=MAX_TEXT_CHARS)
    except HeadsplatError as err:
        raise user_error(err) from err
    return {"image": portrait, "audio": audio or None, "text": text or None, "motion": motion_file or None}


def run_talk(
    portrait: str | None,
    audio: str | None,
    text: str,
    motion_file: str | None,
    seed: float,
    steps: float,
    emotion: str,
    expression_scale: float,
    pose_scale: float,
    blink_rate: float,
    still: bool,
    crop: bool,
    size: float,
    fps: float,
    progress=gr.Progress(),  # noqa: B008 (Gradio's own idiom)
) -> Iterator[tuple]:
    """Stream the talking-head video chunk by chunk; at the end, the full mp4 and the motion CSV."""
    from pipelines.streaming import StreamConfig, stream_talk
    from pipelines.talk import TalkConfig

    inputs = check_inputs(portrait, audio, text, motion_file)
    if not (inputs["audio"] or inputs["text"] or inputs["motion"]):
        raise refusal("upload or record some speech, or type a text to say", title="Nothing to say")
    workdir = new_workdir()
    cfg = TalkConfig(
        **inputs,
        output=str(workdir / "talk.mp4"),
        fps=float(fps),
        size=int(size) or None,  # 0: auto, the face's size in the photo
        steps=int(steps),
        seed=int(seed),
        emotion=emotion,
        expression_scale=float(expression_scale),
        pose_scale=float(pose_scale),
        blink_rate=float(blink_rate),
        still=bool(still),
        crop=bool(crop),
        progress=False,
    )
    stream = StreamConfig(max_seconds=max_seconds(), motion_file=str(workdir / "motion.csv"))
    progress(0.0, desc="fitting the head to the portrait")
    try:
        device = resolve_device("auto", rendering=True)  # the GPU only where gsplat can draw on it
        for event in stream_talk(cfg, workdir, stream, device=device):
            if event.stage == "avatar":
                progress(0.05, desc="making the motion")
            elif event.stage == "chunk":
                progress(event.frames_done / event.frames_total, desc="rendering", unit="frames")
                yield str(event.chunk), gr.skip(), gr.skip()
            elif event.stage == "done":
                yield gr.skip(), str(event.video), stream.motion_file
    except HeadsplatError as err:
        raise user_error(err) from err


# ------------------------------------------------------------------------------------------------
# Live
#: Live sessions running now: each takes both cores to hold real time, so the app runs one at a time.
_LIVE_LOCK = threading.Lock()
_LIVE: dict[str, object] = {}


def live_status(session) -> str:
    """One line about a running session: frames, latency, drops."""
    stats = session.stats
    recent = list(itertools.islice(reversed(stats.latencies), 50))
    if not recent:
        return "Live: listening. Speak into the microphone; the head idles meanwhile."
    recent = sorted(recent)
    p50, p95 = recent[len(recent) // 2], recent[int(0.95 * (len(recent) - 1))]
    return (
        f"Live: {stats.frames} frames, latency (audio in to frame out) median {1000 * p50:.0f} ms, "
        f"95% under {1000 * p95:.0f} ms; {stats.dropped_late} dropped to keep up."
    )


def run_live_start(portrait: str | None, size: float, request: gr.Request):
    """Fit the portrait and start a live session for this browser tab; show its first frame."""
    from pipelines.live import LiveConfig, LiveSession

    if not portrait:
        raise refusal("upload a portrait photo (or take one with the webcam)", title="No portrait")
    require_suffix(portrait, IMAGE_SUFFIXES, "portrait")
    key = request.session_hash or "local"
    with _LIVE_LOCK:
        old = _LIVE.pop(key, None)
        if old is not None:
            old.close()
        if _LIVE:
            raise refusal("another live session is running; try again when it ends", title="Busy")
        try:
            session = LiveSession(LiveConfig(image=portrait, size=int(size), idle_after=0.3))
        except HeadsplatError as err:
            raise user_error(err) from err
        _LIVE[key] = session
    return session.photo, live_status(session), gr.Timer(active=True)


def run_live_push(chunk, request: gr.Request) -> None:
    """A microphone chunk (rate, samples) from the browser into this tab's session."""
    session = _LIVE.get(request.session_hash or "local")
    if session is None or chunk is None:
        return
    rate, samples = chunk
    try:
        session.push(samples, sample_rate=int(rate))
    except HeadsplatError as err:
        raise user_error(err) from err


def run_live_frame(request: gr.Request):
    """The newest frame of this tab's session (the timer asks ~12 times a second)."""
    session = _LIVE.get(request.session_hash or "local")
    if session is None:
        return gr.skip(), gr.skip()
    try:
        frame = session.latest()
    except HeadsplatError as err:
        _LIVE.pop(request.session_hash or "local", None)
        raise user_error(err) from err
    return (gr.skip() if frame is None else frame.image), live_status(session)


def run_live_stop(request: gr.Request):
    with _LIVE_LOCK:
        session = _LIVE.pop(request.session_hash or "local", None)
    if session is not None:
        session.close()
    return "Live: stopped.", gr.Timer(active=False)


def run_live_close(request: gr.Request) -> None:
    """The browser tab was closed or reloaded: end its session, which would otherwise render on for good
    and keep every other visitor out ("another live session is running")."""
    run_live_stop(request)


# ------------------------------------------------------------------------------------------------
# Avatar3D
def run_avatar3d(
    portrait: str | None,
    num_gaussians: float,
    size: float,
    turntable_seconds: float,
    audio: str | None,
    text: str,
    motion_file: str | None,
    camera: str,
    emotion: str,
    seed: float,
    still: bool,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008
):
    """Portrait → (3D view .ply, turntable mp4, talking mp4 or None, [ply, splat, avatar] downloads)."""
    from pipelines.avatar3d import VIEWER_HEIGHT, Avatar3DConfig, avatar3d, write_viewer_ply
    from pipelines.streaming import check_audio_length

    inputs = check_inputs(portrait, audio, text, motion_file)
    workdir = new_workdir()
    cfg = Avatar3DConfig(
        **inputs,
        output=str(workdir),
        camera=camera,
        num_gaussians=int(num_gaussians),
        size=int(size),
        turntable_seconds=float(turntable_seconds),
        seed=int(seed),
        emotion=emotion,
        still=bool(still),
        progress=True,  # tqdm bars, which gr.Progress(track_tqdm=True) shows
    )
    try:
        check_audio_length(cfg.audio, max_seconds())
        progress(0.0, desc="building the 3D head")
        written = avatar3d(cfg)
    except HeadsplatError as err:
        raise user_error(err) from err
    downloads = [str(written[k]) for k in ("ply", "splat", "avatar") if k in written]
    turntable = str(written["turntable"]) if "turntable" in written else None
    talking = str(written["talk"]) if "talk" in written else None
    # The viewer (gsplat.js) ignores camera_position and would show the standard head.ply tiny and from
    # behind: it gets a copy turned, centred and scaled for its fixed camera; the downloads stay standard.
    view = write_viewer_ply(written["ply"], VIEWER_HEIGHT)
    return str(view), turntable, talking, downloads


# ------------------------------------------------------------------------------------------------
# Guide
_pipelines: dict[str, object] = {}
_pipelines_lock = threading.Lock()


def check_model(model: str) -> str:
    """A tiny model or a Hugging Face id; folder paths are refused (the server's files stay private)."""
    from pipelines.guide import TINY_MODELS

    model = (model or "").strip()
    if model in TINY_MODELS or (_REPO_ID.match(model) and ".." not in model):
        return model
    raise refusal(
        f"the model must be {' or '.join(TINY_MODELS)} or a Hugging Face id like owner/name",
        title="Unknown model",
    )


def guide_pipeline(model: str):
    """The loaded pipeline for `model` (one model is kept loaded at a time)."""
    from pipelines.guide import load_pipeline

    with _pipelines_lock:
        if model not in _pipelines:
            _pipelines.clear()  # big models do not fit twice
            _pipelines[model] = load_pipeline(model)
        return _pipelines[model]


def check_heads(heads: str, heads_file: str | None) -> str:
    """The head spec to use: an uploaded heads JSON, or typed 'L:H,L:H' / 'L:*'."""
    heads = (heads or "").strip()
    if heads_file:
        require_suffix(heads_file, (".json",), "heads file")
        if heads:
            raise refusal("give the heads either as text or as a JSON file, not both", title="Two head sets")
        return heads_file
    if not _HEAD_SPEC.match(heads):
        raise refusal("heads are written like 12:3,12:7 or 12:* (layer:head)", title="Bad head list")
    return heads


@gpu(duration=120)
def run_guide(
    prompt: str,
    model: str,
    heads: str,
    heads_file: str | None,
    scale: float,
    soft: float,
    cfg: float,
    steps: float,
    seed: float,
    compare: bool,
    progress=gr.Progress(),  # noqa: B008
):
    """One guided image (and the same seed without head guidance, to compare)."""
    from pipelines.guide import GuideConfig, generate

    if not (prompt or "").strip():
        raise refusal("type a prompt", title="No prompt")
    model = check_model(model)
    spec = check_heads(heads, heads_file)
    try:
        progress(0.0, desc=f"loading {model}")
        pipeline = guide_pipeline(model)
        config = GuideConfig(
            prompt=prompt.strip(),
            model=model,
            heads=spec,
            scale=float(scale),
            soft=float(soft),
            cfg=float(cfg),
            steps=int(steps),
            seed=int(seed),
        )
        progress(0.3, desc="sampling with head guidance")
        guided = generate(config, pipeline)
        baseline = None
        if compare:
            progress(0.65, desc="sampling without head guidance")
            baseline = generate(GuideConfig(**{**asdict(config), "heads": "", "scale": 0.0}), pipeline)
    except HeadsplatError as err:
        raise user_error(err) from err
    from pipelines.guide import TINY_MODELS

    if model not in TINY_MODELS:
        return guided, baseline, ""
    return _enlarged(guided), _enlarged(baseline), TINY_CAPTION


#: What a tiny model's image is: its weights are random, so it tests the pipeline, not the picture.
TINY_CAPTION = (
    "**Random weights: a test of the pipeline, not an image model.** Its 16 px images are shown 16x."
)


def _enlarged(image):
    """A tiny random model's 16 px image at least 256 px wide, nearest neighbour: its pixels as they are."""
    if image is None:
        return None
    k = max(1, -(-256 // min(image.size)))
    return image.resize((image.width * k, image.height * k), PIL.Image.NEAREST)


@gpu(duration=300)
def run_search(
    prompts: str,
    seeds: str,
    k: float,
    rounds: float,
    objective: str,
    pool: str,
    model: str,
    steps: float,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008
):
    """HeadHunter search; returns the heads JSON (usable as the heads file above) and its summary."""
    from pipelines.guide import SearchConfig, SearchState, make_objective, save_search, search_heads

    model = check_model(model)
    prompt_list = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
    if not prompt_list:
        raise refusal("write at least one prompt, one per line", title="No prompts")
    if objective not in ("sharpness", "colorfulness"):
        raise refusal("the objective must be sharpness or colorfulness", title="Unknown objective")
    try:
        seed_list = [int(s) for s in (seeds or "0").split(",") if s.strip()]
    except ValueError:
        raise refusal("seeds are whole numbers separated by commas, like 0,1,2", title="Bad seeds") from None
    if not _HEAD_SPEC.match(pool or ""):
        raise refusal("the candidate pool is a head list like 0:*,1:* (empty: all heads)", title="Bad pool")
    config = SearchConfig(
        prompts=prompt_list,
        seeds=seed_list or [0],
        k=int(k),
        rounds=int(rounds),
        objective=objective,
        num_inference_steps=int(steps),
        pool=(pool or "").strip(),
    )
    out = new_workdir() / "heads.json"
    try:
        pipeline = guide_pipeline(model)
        state = SearchState(model=model, config=asdict(config))
        state = search_heads(
            pipeline, config, make_objective(objective), state, save=lambda s: save_search(s, out)
        )
    except HeadsplatError as err:
        raise user_error(err) from err
    summary = {"heads": state.heads, "scores": state.scores}
    return str(out), summary


# ------------------------------------------------------------------------------------------------
# Layout
# Every control starts at its config's default (TalkConfig, Avatar3DConfig), as the flags and batch keys
# do; only the render sizes and the Gaussian count start lower, for a web server's CPU.
def _portrait_input() -> gr.Image:
    return plain_image_errors(
        gr.Image(label="Portrait", type="filepath", sources=["upload", "webcam", "clipboard"], height=240)
    )


def _speech_inputs() -> tuple[gr.Audio, gr.Textbox]:
    audio = gr.Audio(label="Speech", type="filepath", sources=["upload", "microphone"], format=None)
    text = gr.Textbox(label="…or text to say", lines=2, max_length=MAX_TEXT_CHARS)
    return audio, text


def _motion_file_input() -> gr.File:
    return gr.File(
        label="Motion file instead of generating one (Live Link Face .csv, .npz, .json)",
        file_types=list(MOTION_SUFFIXES),
    )


def _size_slider(label: str) -> gr.Slider:
    return gr.Slider(128, 768, value=talk_size_default() or 384, step=64, label=label)


def talk_size_default() -> int:
    """Talk's render size from HEADSPLAT_TALK_SIZE: 0 (auto, the default, as on the command line) or 128-768."""
    if os.environ.get("HEADSPLAT_TALK_SIZE", "").strip().lower() in ("", "auto"):
        return 0
    return int(_env_float("HEADSPLAT_TALK_SIZE", 0, 128, 768))


def _talk_size_input() -> gr.Dropdown:
    """The face's render resolution. The video always keeps the photo's size (the face is pasted back at
    its size there), so a bigger render is only downsampled and a smaller one blurs: auto picks the face's
    own size, like the command line's default."""
    default = talk_size_default()
    sizes = sorted({256, 384, 512, 768} | ({default} - {0}))
    return gr.Dropdown(
        [("auto: the face's size in the photo", 0), *((f"{n} px", n) for n in sizes)],
        value=default,
        allow_custom_value=True,  # API clients (and typing) may ask for any size Talk takes
        label="Face render resolution (the video keeps the photo's size; auto is sharpest for it)",
    )


def _talk_tab() -> None:
    from models.controls import MAX_STEPS
    from pipelines.talk_config import TalkConfig

    defaults = TalkConfig()
    gr.Markdown(
        "A portrait and some speech become a lip-synced video. The video starts playing while the rest "
        f"is still being made. Speech up to {max_seconds():g} s."
    )
    with gr.Row():
        with gr.Column():
            portrait = _portrait_input()
            audio, text = _speech_inputs()
            go = gr.Button("Generate", variant="primary")  # in view at 1400x1100, above the controls
            with gr.Accordion("Controls", open=False):
                with gr.Row():
                    emotion = gr.Dropdown(list(EMOTIONS), value=defaults.emotion, label="Emotion")
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed (head motion, blinks)")
                expression_scale = gr.Slider(
                    0.0, 2.0, value=defaults.expression_scale, step=0.05, label="Expression scale"
                )
                pose_scale = gr.Slider(
                    0.0, 2.0, value=defaults.pose_scale, step=0.05, label="Head movement scale"
                )
                blink_rate = gr.Slider(0.0, 3.0, value=defaults.blink_rate, step=0.1, label="Blink rate")
                with gr.Row():
                    still = gr.Checkbox(value=defaults.still, label="Still head")
                    crop = gr.Checkbox(value=defaults.crop, label="Face crop only")
                size = _talk_size_input()
                steps = gr.Slider(
                    0, MAX_STEPS, value=defaults.steps, step=1, label="Motion diffusion steps (0: rule-based)"
                )
                fps = gr.Slider(10, 30, value=defaults.fps, step=1, label="Frames per second")
                motion_file = _motion_file_input()
        with gr.Column():
            live = gr.Video(label="Talking head", streaming=True, autoplay=True, interactive=False)
            video = gr.File(label="Video (mp4)", interactive=False)
            motion = gr.File(label="Motion (Live Link Face CSV)", interactive=False)
    gr.Examples(
        examples=[[str(DEFAULTS / "portrait.jpg"), str(DEFAULTS / "speech.wav")]],
        inputs=[portrait, audio],
        label="Try the shipped portrait and speech",
    )
    inputs = [portrait, audio, text, motion_file, seed, steps, emotion, expression_scale, pose_scale]
    inputs += [blink_rate, still, crop, size, fps]
    # Progress shows once, over the video, not copied into the download boxes too.
    go.click(
        run_talk,
        inputs,
        [live, video, motion],
        api_name="talk",
        concurrency_id="talk",
        show_progress_on=[live],
    )


def _live_tab() -> None:
    gr.Markdown(
        "Talk into the microphone and the portrait talks with you, live, on this machine's CPU. Pick a "
        "portrait, press Start, then record. Between words the head breathes, blinks and looks around."
    )
    with gr.Row():
        with gr.Column():
            portrait = _portrait_input()
            size = gr.Radio([256, 320], value=256, label="Live size (px): 256 holds real time on 2 cores")
            with gr.Row():
                start = gr.Button("Start", variant="primary")
                stop = gr.Button("Stop")
            mic = gr.Audio(label="Microphone", sources=["microphone"], streaming=True, type="numpy")
        with gr.Column():
            view = gr.Image(label="Live head", format="jpeg", interactive=False, height=420)
            status = gr.Markdown("Live: not started.")
    gr.Examples(examples=[[str(DEFAULTS / "portrait.jpg")]], inputs=[portrait], label="The shipped portrait")
    # The timer polls only while a session runs: Start switches it on and Stop off (both must list it as
    # an output, or the gr.Timer they return is dropped and Stop's reply does not fit its one output).
    tick = gr.Timer(0.08, active=False)
    start.click(
        run_live_start, [portrait, size], [view, status, tick], api_name="live_start", concurrency_id="live"
    )
    mic.stream(run_live_push, [mic], None, stream_every=0.1, time_limit=600, concurrency_limit=None)
    tick.tick(run_live_frame, None, [view, status], show_progress="hidden", concurrency_limit=None)
    stop.click(run_live_stop, None, [status, tick], api_name="live_stop")


def _avatar3d_tab() -> None:
    from pipelines.avatar3d_config import CAMERAS, VIEWER_HEIGHT, Avatar3DConfig

    defaults = Avatar3DConfig()
    gr.Markdown(
        "A portrait becomes a 3D Gaussian head: turn it around in the viewer, download it as a standard "
        "3DGS `.ply` (SuperSplat, gsplat and other viewers open it), and give it speech to make it talk."
    )
    with gr.Row():
        with gr.Column():
            portrait = _portrait_input()
            with gr.Row():
                num_gaussians = gr.Slider(
                    10_000,
                    200_000,
                    value=50_000,
                    step=5_000,
                    label="Skin detail: Gaussians asked for the skin (the head holds 20-30k more for the mouth, "
                    "neck and edges, and never fewer than ~70k in all)",
                )
                size = _size_slider("Video size (px)")
            turntable_seconds = gr.Slider(
                0, 8, value=defaults.turntable_seconds, step=1, label="Turntable length (s; 0: none)"
            )
            with gr.Accordion("Make it talk", open=False):
                audio, text = _speech_inputs()
                motion_file = _motion_file_input()
                with gr.Row():
                    camera = gr.Radio(list(CAMERAS), value=defaults.camera, label="Camera")
                    emotion = gr.Dropdown(list(EMOTIONS), value=defaults.emotion, label="Emotion")
                with gr.Row():
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed")
                    still = gr.Checkbox(value=defaults.still, label="Still head")
            go = gr.Button("Build the 3D head", variant="primary")
        with gr.Column():
            view = gr.Model3D(label="3D head (.ply): drag to turn, scroll to zoom", height=VIEWER_HEIGHT)
            turntable = gr.Video(label="Turntable", autoplay=True, loop=True, interactive=False)
            talking = gr.Video(label="Talking 3D head", interactive=False)
            files = gr.File(
                label="Downloads (.ply, .splat, avatar)", file_count="multiple", interactive=False
            )
    gr.Examples(
        examples=[[str(DEFAULTS / "portrait.jpg")]], inputs=[portrait], label="Try the shipped portrait"
    )
    inputs = [portrait, num_gaussians, size, turntable_seconds, audio, text, motion_file, camera, emotion]
    inputs += [seed, still]
    outputs = [view, turntable, talking, files]
    go.click(
        run_avatar3d, inputs, outputs, api_name="avatar3d", concurrency_id="avatar3d", show_progress_on=[view]
    )


def _guide_tab() -> None:
    gr.Markdown(
        "Diffusion-Transformer images steered by head-level perturbed attention (arXiv 2506.10978). "
        "`tiny-sd3` and `tiny-flux` are small random models that run anywhere; real SD3/FLUX ids work when "
        "their weights are in the Hugging Face cache."
    )
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", value="a portrait of an old sailor", lines=2)
            model = gr.Dropdown(list(GUIDE_MODELS), value="tiny-sd3", allow_custom_value=True, label="Model")
            go = gr.Button("Generate", variant="primary")  # in view at 1400x1100, above the head settings
            heads = gr.Textbox(label="Heads to perturb (layer:head, e.g. 1:0,1:2 or 1:*)", value="1:*")
            heads_file = gr.File(label="…or a heads JSON from the search", file_types=[".json"])
            with gr.Row():
                scale = gr.Slider(0.0, 10.0, value=3.0, step=0.5, label="Head guidance w")
                soft = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="SoftPAG u")
            with gr.Row():
                cfg = gr.Slider(0.0, 12.0, value=4.0, step=0.5, label="CFG / distilled guidance")
                steps = gr.Slider(1, 50, value=4, step=1, label="Steps")
                seed = gr.Number(value=0, precision=0, label="Seed")
            compare = gr.Checkbox(value=True, label="Also show the same seed without head guidance")
        with gr.Column():
            guided = gr.Image(label="With head guidance", format="png")
            baseline = gr.Image(label="Without head guidance", format="png")
            caption = gr.Markdown("")
    gr.Examples(
        examples=[["a portrait of an old sailor, oil painting"], ["a red fox in the snow"]], inputs=[prompt]
    )
    go.click(
        run_guide,
        [prompt, model, heads, heads_file, scale, soft, cfg, steps, seed, compare],
        [guided, baseline, caption],
        api_name="guide",
        concurrency_id="guide",
        show_progress_on=[guided],
    )
    with gr.Accordion("Head search (HeadHunter): a long job that writes a heads JSON", open=False):
        with gr.Row():
            with gr.Column():
                prompts = gr.Textbox(label="Prompts, one per line", lines=4, value="a portrait\na landscape")
                with gr.Row():
                    search_seeds = gr.Textbox(label="Seeds", value="0")
                    k = gr.Number(value=1, precision=0, minimum=1, label="Heads per round")
                    rounds = gr.Number(value=1, precision=0, minimum=1, label="Rounds")
                with gr.Row():
                    objective = gr.Dropdown(
                        ["sharpness", "colorfulness"], value="sharpness", label="Objective"
                    )
                    pool = gr.Textbox(label="Candidate heads (empty: all)", value="")
                    search_steps = gr.Number(value=2, precision=0, minimum=1, label="Steps")
                search = gr.Button("Search")
            with gr.Column():
                heads_json = gr.File(label="Heads JSON", interactive=False)
                summary = gr.JSON(label="Chosen heads and scores")
    search.click(
        run_search,
        [prompts, search_seeds, k, rounds, objective, pool, model, search_steps],
        [heads_json, summary],
        api_name="search",
        concurrency_id="guide",
        show_progress_on=[summary],
    )


def build_demo() -> gr.Blocks:
    """The whole app: Talk, Avatar3D (when its pipeline is present) and Guide tabs over the CLIs' pipelines."""
    concurrency = int(_env_float("HEADSPLAT_CONCURRENCY", 1))
    with gr.Blocks(title="headsplat", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# headsplat\nTalking heads and 3D head avatars drawn with Gaussian splatting.")
        with gr.Tab("Talk"):
            _talk_tab()
        with gr.Tab("Live"):
            _live_tab()
        demo.unload(run_live_close)  # a closed or reloaded browser tab ends its live session
        with gr.Tab("Avatar3D"):
            _avatar3d_tab()
        with gr.Tab("Guide"):
            _guide_tab()
    demo.queue(default_concurrency_limit=concurrency, max_size=int(_env_float("HEADSPLAT_QUEUE_SIZE", 16)))
    return demo


def launch_options() -> dict:
    """Keyword arguments of `Blocks.launch` shared by `python app.py` and the tests."""
    return {"max_file_size": os.environ.get("HEADSPLAT_MAX_FILE_SIZE", "25mb")}


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # numba renders in parallel; torch's own threads would only fight it
    try:
        demo = build_demo()
    except HeadsplatError as err:  # a malformed HEADSPLAT_* setting
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    demo.launch(**launch_options())
