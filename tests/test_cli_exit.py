"""Every command line tool's exit convention (pipelines.cli): bad input is exit 2 and one "error:" line.

Each case fails before any model runs or any file is written, so the whole file takes seconds. Also here:
the flags of audio_to_motion, synth_corpus, train_motion and guide that used to be accepted or to end in a
traceback, the outputs' permissions and audio_to_motion's torch threads.
"""

from __future__ import annotations

import importlib
import os
import shutil
import stat

import numpy as np
import pytest
import torch

from models.latent import Motion

MISSING = "missing"  # replaced by a path under tmp_path that does not exist


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Talk sets torch's threads for its process; the tests after these keep their own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and lines[0] != "error:", err
    assert "Traceback" not in err
    return lines[0]


def _run(module: str, args: list[str], tmp_path) -> int:
    """`module`.main(args) with MISSING and TMP/ in the arguments made paths under tmp_path."""
    main = importlib.import_module(module).main
    args = [
        str(tmp_path / "missing" / "input") if a == MISSING else a.replace("TMP/", f"{tmp_path}/")
        for a in args
    ]
    return main(args)


# One plainly bad input per tool, each reaching the tool's own checks (not argparse's).
CASES = {
    "talk": ("pipelines.talk", ["--audio", MISSING, "-o", "TMP/talk.mp4"]),
    "avatar3d": ("pipelines.avatar3d", ["-s", MISSING, "-o", "TMP/"]),
    "track": ("pipelines.track", [MISSING, "-o", "TMP/motion.csv"]),
    "batch": ("pipelines.batch", [MISSING, "-o", "TMP/out"]),
    "audio_to_motion": ("pipelines.audio_to_motion", ["--audio", MISSING, "--out", "TMP/m.npz"]),
    "synth_corpus": ("pipelines.synth_corpus", ["--out", "TMP/corpus", "--clips", "-3"]),
    "train_motion": ("pipelines.train_motion", ["--corpus", MISSING, "--out", "TMP/m.safetensors"]),
    "guide": (
        "pipelines.guide",
        ["--prompt", "a face", "--model", "tiny-sd3", "--heads", "TMP/missing.json", "-o", "TMP/guide.png"],
    ),  # fmt: skip
    "guide search": (
        "pipelines.guide",
        ["search", "--prompts-file", MISSING, "--model", "tiny-sd3", "-o", "TMP/heads.json"],
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_tool_exits_2_with_one_error_line_on_bad_input(name, tmp_path, capsys):
    module, args = CASES[name]
    assert _run(module, args, tmp_path) == 2
    _one_error_line(capsys)
    # Nothing was written beside the (missing) inputs.
    assert [p.name for p in tmp_path.iterdir()] == []


# --------------------------------------------------------------------------------------------------
# audio_to_motion
@pytest.fixture
def speech_wav(tmp_path):
    from pipelines.audio_io import save_wav

    t = np.arange(16000) / 16000
    path = tmp_path / "speech.wav"
    save_wav((0.3 * np.sin(2 * np.pi * 150 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32), path)
    return path


@pytest.mark.parametrize("fps", ["1e-9", "0.5", "1e9", "121", "nan", "inf", "-inf", "0", "-25"])
def test_audio_to_motion_refuses_absurd_frame_rates(fps, speech_wav, tmp_path, capsys):
    from pipelines.audio_to_motion import main

    out = tmp_path / "m.npz"
    assert main(["--audio", str(speech_wav), "--out", str(out), f"--fps={fps}"]) == 2
    assert "fps must be in [1, 120]" in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out", "SPEECH"], "also an input"),
        (["--out", "TMP/no/m.npz"], "output folder does not exist"),
        (["--out", "TMP/"], "is a folder"),
        (["--out", "TMP/m.mp4"], "motion files end in"),
        (["--out", "TMP/m.npz", "--seed", "-1"], "seed must be 0 or more"),
        (["--out", "TMP/m.npz", "--guidance", "nan"], "guidance must be a number"),
        (["--out", "TMP/m.npz", "--steps", "0", "--pose-scale", "-1"], "pose_scale must be a non-negative"),
    ],
)
def test_audio_to_motion_bad_outputs_and_flags(flags, message, speech_wav, tmp_path, capsys):
    from pipelines.audio_to_motion import main

    before = speech_wav.read_bytes()
    flags = [str(speech_wav) if f == "SPEECH" else f.replace("TMP/", f"{tmp_path}/") for f in flags]
    assert main(["--audio", str(speech_wav), *flags]) == 2
    assert message in _one_error_line(capsys)
    assert speech_wav.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.wav"]


def test_audio_to_motion_writes_a_readable_file_with_one_torch_thread(speech_wav, tmp_path, capsys, umask_022,
                                                                      monkeypatch):  # fmt: skip
    from pipelines import audio_to_motion
    from pipelines.motion_io import load_motion

    seen = []
    generate = audio_to_motion.AudioToMotion.generate
    monkeypatch.setattr(
        audio_to_motion.AudioToMotion,
        "generate",
        lambda self, *a, **k: seen.append(torch.get_num_threads()) or generate(self, *a, **k),
    )
    torch.set_num_threads(2)
    out = tmp_path / "m.npz"
    assert audio_to_motion.main(["--audio", str(speech_wav), "--out", str(out), "--fps", "30"]) == 0
    assert seen == [audio_to_motion.TORCH_THREADS] and torch.get_num_threads() == 2  # restored
    assert _mode(out) == 0o644
    assert load_motion(out).fps == 30


@pytest.mark.parametrize("terminated, code", [(False, 130), (True, 143)])
def test_audio_to_motion_interrupted_writes_nothing(
    terminated, code, speech_wav, tmp_path, capsys, monkeypatch
):
    from pipelines import audio_to_motion
    from pipelines.cli import Terminated

    def interrupt(*args, **kwargs):
        raise Terminated() if terminated else KeyboardInterrupt()

    monkeypatch.setattr(audio_to_motion.AudioToMotion, "generate", interrupt)
    assert audio_to_motion.main(["--audio", str(speech_wav), "--out", str(tmp_path / "m.npz")]) == code
    assert capsys.readouterr().err.strip() == "interrupted; nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.wav"]


# --------------------------------------------------------------------------------------------------
# synth_corpus
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out", "FILE"], "is a file"),
        (["--out", "FILE/corpus"], "the folder of --out"),
        (["--clips", "-3"], "--clips must be at least 1"),
        (["--clips", "0"], "--clips must be at least 1"),
        (["--held-out-clips", "-1"], "--held-out-clips must be 0 or more"),
        (["--clips", "1000000"], "at most 100000 clips"),
        (["--noise-share", "1.5"], "--noise-share must be a share in [0, 1]"),
        (["--noise-share", "nan"], "--noise-share must be a share in [0, 1]"),
        (["--voice-shift-share", "-0.1"], "--voice-shift-share must be a share in [0, 1]"),
        (["--fps", "0"], "--fps must be in [1, 120]"),
        (["--fps", "-25"], "--fps must be in [1, 120]"),
        (["--fps", "1e9"], "--fps must be in [1, 120]"),
        (["--fps", "inf"], "--fps must be in [1, 120]"),
        (["--seed", "-1"], "--seed must be 0 or more"),
    ],
)
def test_synth_corpus_refuses_bad_flags_and_creates_nothing(flags, message, tmp_path, capsys):
    from pipelines.synth_corpus import main

    existing = tmp_path / "corpus.txt"
    existing.write_text("not a folder")
    if "--out" not in flags:
        flags = [*flags, "--out", "TMP/corpus"]
    flags = [f.replace("FILE", str(existing)).replace("TMP/", f"{tmp_path}/") for f in flags]
    assert main(flags) == 2
    assert message in _one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.txt"] and existing.read_text() == "not a folder"


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None, reason="needs espeak-ng and flite"
)
def test_synth_corpus_files_have_the_usual_permissions(tmp_path, umask_022):
    from pipelines.synth_corpus import CorpusConfig, build_corpus

    manifest = build_corpus(
        tmp_path / "c", CorpusConfig(clips=1, held_out_clips=1, noise_share=0.0), progress=False
    )
    files = [p for p in manifest.parent.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".wav", ".npz", ".jsonl", ".json"}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}


# --------------------------------------------------------------------------------------------------
# train_motion
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out", "TMP/no/m.safetensors"], "output folder does not exist"),
        (["--out", "TMP/w.safetensors", "--init", "TMP/w.safetensors"], "also an input"),
        (["--out", "TMP/m.safetensors", "--checkpoint", "TMP/m.safetensors"], "another file than --out"),
        (
            ["--out", "TMP/m.safetensors", "--checkpoint", "TMP/no/c.safetensors"],
            "output folder does not exist",
        ),
        (["--out", "TMP/m.safetensors", "--threads", "0"], "--threads must be at least 1"),
        (["--out", "TMP/m.safetensors", "--steps", "-1"], "--steps must be at least 1"),
        (["--out", "TMP/m.safetensors", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--out", "TMP/m.safetensors", "--minutes", "nan"], "--minutes must be a positive number"),
        (["--out", "TMP/m.safetensors", "--lr", "-1"], "--lr must be a positive number"),
        (["--out", "TMP/m.safetensors", "--width", "30"], "--width must be a positive multiple of 4"),
        (["--out", "TMP/m.safetensors", "--depth", "0"], "--depth at least 1"),
        (["--out", "TMP/m.safetensors", "--seed", "-1"], "--seed must be 0 or more"),
    ],
)
def test_train_motion_checks_flags_and_outputs_before_reading_data(flags, message, tmp_path, capsys):
    from pipelines.train_motion import main

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not read: the output check comes first")
    flags = [f.replace("TMP/", f"{tmp_path}/") for f in flags]
    # The corpus does not exist: each flag or output error must come before the data is looked at.
    assert main(["--corpus", str(tmp_path / "no-corpus"), *flags]) == 2
    assert message in _one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_train_motion_weights_and_checkpoints_have_the_usual_permissions(tmp_path, umask_022):
    from models.motion_diffusion import MotionDenoiser, MotionModelConfig
    from pipelines.train_motion import TrainConfig, save_checkpoint, save_weights

    net = MotionDenoiser(MotionModelConfig(width=32, depth=1))
    optimizer = torch.optim.AdamW(net.parameters())
    save_weights(net, tmp_path / "m.safetensors", {"summary": {}})
    ema = MotionDenoiser(net.config)
    save_checkpoint(tmp_path / "m.checkpoint.safetensors", net, ema, optimizer, 1, TrainConfig())
    modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
    assert len(modes) == 4 and set(modes.values()) == {0o644}, modes


# --------------------------------------------------------------------------------------------------
# guide
@pytest.mark.parametrize("search", [False, True])
def test_guide_refuses_a_missing_output_folder_and_creates_none(search, tmp_path, capsys):
    from pipelines import guide

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a face\n")
    out = tmp_path / "no" / ("heads.json" if search else "guide.png")
    if search:
        args = ["search", "--prompts-file", str(prompts), "--model", "tiny-sd3", "-o", str(out)]
    else:
        args = ["--prompt", "a face", "--model", "tiny-sd3", "-o", str(out)]
    assert guide.main(args) == 2
    assert _one_error_line(capsys) == f"error: output folder does not exist: {out.parent}"
    assert not out.parent.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "a face", "-o", "TMP/guide.gifx"], "cannot tell the image format"),
        (["--prompt", "a face", "--heads", "TMP/heads.json", "-o", "TMP/heads.json"], "also an input"),
        (["--prompt", "a face", "-o", "TMP/"], "is a folder"),
        (["search", "--prompts-file", "TMP/heads.json", "-o", "TMP/heads.json"], "also an input"),
    ],
)
def test_guide_checks_its_output_before_loading_a_model(args, message, tmp_path, capsys):
    from pipelines import guide

    heads = tmp_path / "heads.json"
    heads.write_text("[[1, 0]]\n")
    # A model that does not exist: the output check must come first.
    args = [a.replace("TMP/", f"{tmp_path}/") for a in args] + ["--model", str(tmp_path / "no-model")]
    assert guide.main(args) == 2
    assert message in _one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["heads.json"] and heads.read_text() == "[[1, 0]]\n"


def test_guide_images_and_searches_have_the_usual_permissions(tmp_path, umask_022):
    from PIL import Image

    from pipelines.guide import SearchState, save_image, save_search

    save_image(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    save_search(SearchState(model="tiny-sd3", config={}), tmp_path / "heads.json")
    assert _mode(tmp_path / "a.png") == 0o644 and _mode(tmp_path / "heads.json") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "heads.json"]  # no temporary left


def test_motion_files_have_the_usual_permissions(tmp_path, umask_022):
    from models.latent import NUM_EXPRESSIONS
    from pipelines.motion_io import save_motion

    motion = Motion(np.zeros((3, NUM_EXPRESSIONS)), np.zeros((3, 3)), np.zeros((3, 3)), 25.0)
    for suffix in (".npz", ".json", ".csv"):
        save_motion(motion, tmp_path / f"m{suffix}")
        assert _mode(tmp_path / f"m{suffix}") == 0o644


@pytest.mark.parametrize(
    "module, flag",
    [
        ("pipelines.talk", "--output"),
        ("pipelines.avatar3d", "--output"),
        ("pipelines.audio_to_motion", "--out"),
        ("pipelines.track", "--identity"),
    ],
)
def test_help_answers_without_loading_torch_or_numba(module, flag):
    # `--help` and a wrong flag must not wait for torch and numba (seconds on a small machine). Python's
    # own import log says what was imported, the way a user runs the command.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and flag in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "pipelines.lazy" in imported  # the log is there to read
    assert not imported & {"torch", "numba", "scipy"}, sorted(imported & {"torch", "numba", "scipy"})
