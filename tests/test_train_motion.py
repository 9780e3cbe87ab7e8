"""pipelines.train_motion's command line: a synthetic corpus, fine-tuning, resuming, tracked videos, errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.audio_io import load_audio, save_wav
from pipelines.audio_to_motion import load_model
from pipelines.synth_corpus import CorpusConfig, build_corpus
from pipelines.talk import DEFAULT_AUDIO, DEFAULT_PORTRAIT
from pipelines.train_motion import main

TINY = ["--width", "32", "--depth", "1", "--batch-size", "4", "--threads", "1"]
needs_tts = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None, reason="needs espeak-ng and flite"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("needs espeak-ng and flite")
    root = tmp_path_factory.mktemp("corpus")
    build_corpus(root, CorpusConfig(clips=5, held_out_clips=2, noise_share=0.2, seed=1), progress=False)
    return root


@needs_tts
def test_corpus_training_then_fine_tuning_then_resuming(corpus, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["--corpus", str(corpus), "--out", str(out), "--steps", "6", *TINY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        summary["steps"] == 6
        and summary["eval"]["clips"] == 2
        and "mouth_opening_correlation" in summary["eval"]
    )
    first = load_model(out)
    assert first.config.width == 32 and out.with_suffix(".json").exists()

    tuned = tmp_path / "tuned.safetensors"
    # --init keeps the loaded architecture (the --width given here is ignored) and its normalisation.
    code = main(["--corpus", str(corpus), "--init", str(out), "--out", str(tuned), "--steps", "3", "--width", "64",
                 "--depth", "2", "--threads", "1", "--batch-size", "4"])  # fmt: skip
    assert code == 0
    again = load_model(tuned)
    assert again.config == first.config
    assert np.array_equal(again.motion_mean.numpy(), first.motion_mean.numpy())
    assert json.loads(tuned.with_suffix(".json").read_text())["data"]["init"] == str(out)

    checkpoint = out.with_name("m.checkpoint.safetensors")
    assert checkpoint.exists()
    code = main(
        [
            "--corpus",
            str(corpus),
            "--resume",
            str(checkpoint),
            "--out",
            str(out),
            "--steps",
            "9",
            "--width",
            "64",
            "--threads",
            "1",
            "--batch-size",
            "4",
        ]  # the checkpoint's architecture wins over --width given again
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 9


def test_talking_videos_are_tracked_by_the_face_tracker(tmp_path, capsys):
    import cv2

    from pipelines.video_io import VideoWriter

    photo = np.asarray(Image.open(DEFAULT_PORTRAIT).convert("RGB"))
    audio = save_wav(load_audio(DEFAULT_AUDIO)[:16000], tmp_path / "a.wav")
    videos = tmp_path / "videos"
    videos.mkdir()
    with VideoWriter(videos / "talk.mp4", 25.0, audio=audio) as writer:
        for k in range(25):
            m = cv2.getRotationMatrix2D((256.0, 260.0), 5.0 * np.sin(2 * np.pi * k / 25), 1.0)
            writer.write(cv2.warpAffine(photo, m, photo.shape[1::-1], borderMode=cv2.BORDER_REPLICATE))
    out = tmp_path / "v.safetensors"
    assert main(["--videos", str(videos), "--out", str(out), "--steps", "2", *TINY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["train_clips"] == 1 and summary["train_frames"] == 25


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give training data"),
        (["--pairs", "nowhere", "--out", "x.pt"], "must end in .safetensors"),
        (["--pairs", "nowhere", "--init", "a.safetensors", "--resume", "b.safetensors"], "not both"),
        (["--videos", "v", "--tracker", "nodots"], "MODULE:FUNCTION|package.module:function"),
    ],
)
def test_bad_arguments_give_one_clear_error(tmp_path, capsys, args, message):
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "m.safetensors")]
    if "--videos" in args:
        Path(tmp_path / "v").mkdir()
        args = [str(tmp_path / "v") if a == "v" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert re.search(message, err[0])
