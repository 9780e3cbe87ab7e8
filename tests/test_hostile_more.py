"""More hostile inputs: motion files, training manifests, guide settings and Hub ids, track counts, the
emotion strength and Ctrl-C during training (benchmarks/hostile_inputs.py found each of them).

One test per defect; each fails on the code before its fix, and none loads a real model or trains for more
than a few steps.
"""

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile

from models.errors import HeadsplatError
from models.latent import Motion
from models.motion_diffusion import GenerationControls
from pipelines import audio_to_motion, guide, track, train_motion
from pipelines.guide import GuideConfig, SearchConfig, build_tiny_pipeline, generate
from pipelines.motion_io import load_identity, load_motion, motion_to_arkit_csv

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "assets" / "defaults" / "portrait.jpg"

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# 1. Motion files whose fps is not a number, JSON nested past Python's recursion limit, and CSV
#    timecodes far apart were tracebacks
@pytest.mark.parametrize("fps", ["fast", True, None, [25, 25, 25], {"rate": 25}])
def test_a_motion_json_whose_fps_is_not_one_number_is_a_clear_error(tmp_path, fps):
    data = Motion.idle(10).to_dict()
    data["fps"] = fps
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HeadsplatError, match="motion fps must be one number"):
        load_motion(path)


@pytest.mark.parametrize("fps", [np.array([25.0, 25.0, 25.0]), np.array("fast"), np.array(True)])
def test_a_motion_npz_whose_fps_is_not_one_number_is_a_clear_error(tmp_path, fps):
    arrays = Motion.idle(10).to_arrays()
    arrays["fps"] = fps
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(HeadsplatError, match="motion fps must be one number"):
        load_motion(path)


def test_a_motion_npz_fps_stored_as_a_one_element_array_still_reads(tmp_path):
    arrays = Motion.idle(10).to_arrays()
    arrays["fps"] = np.array([30.0])
    np.savez(tmp_path / "m.npz", **arrays)
    assert load_motion(tmp_path / "m.npz").fps == 30.0


@pytest.mark.parametrize("loader", [load_motion, load_identity])
def test_json_nested_100k_deep_is_a_clear_error(tmp_path, loader):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(HeadsplatError, match="deep.json: its JSON is nested too deeply"):
        loader(path)


@pytest.mark.parametrize(
    "second_timecode, message",
    [
        ("23:00:00:00.000", "spans 23.0 h from its first to its last timecode"),  # the rate rounded to 0
        ("00:00:00:00.010", "a motion's rate must be 1-1000 fps"),  # 6000 rows a second
    ],
)
def test_csv_rows_too_far_apart_or_too_close_are_a_clear_error(tmp_path, second_timecode, message):
    header, first, second = motion_to_arkit_csv(Motion.idle(2)).splitlines()
    second = second_timecode + second[second.index(",") :]
    path = tmp_path / "m.csv"
    path.write_text("\n".join([header, first, second]) + "\n")
    with pytest.raises(HeadsplatError, match=message):
        load_motion(path)


# ------------------------------------------------------------------------------------------------
# 2. A training manifest with a broken line was an uncaught json.JSONDecodeError
@pytest.fixture
def pair_folder(tmp_path) -> Path:
    """One (speech, motion) pair: a second of a 220 Hz tone and a second of idle motion."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
    soundfile.write(folder / "a.wav", tone.astype(np.float32), 16000)
    np.savez(folder / "a.npz", **Motion.idle(25).to_arrays())
    return folder


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("m.jsonl", '{"audio": "a.wav", "motion": "a.npz"}\n{"audio": "a.wav", "motion": \n', "line 2: invalid JSON"),
        ("m.jsonl", '["a.wav", "a.npz"]\n', "line 1: expected a JSON object, got a list"),
        ("m.jsonl", "[" * 100_000 + "\n", "line 1: JSON nested too deeply"),
        ("m.jsonl", b"\xff\xfe\x00\x81 not text", "is not a text file"),
        ("m.csv", "audio,clip\na.wav,a.npz\n", "line 2: give the 'audio' and 'motion' file names"),
    ],
)  # fmt: skip
def test_a_broken_pairs_manifest_names_the_file_and_line(pair_folder, capsys, name, content, message):
    manifest = pair_folder / name
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = sorted(p.name for p in pair_folder.iterdir())
    out = pair_folder / "w.safetensors"
    assert train_motion.main(["--pairs", str(manifest), "--out", str(out), "--steps", "2"]) == 2
    line = _one_error_line(capsys)
    assert name in line and message in line, line
    assert sorted(p.name for p in pair_folder.iterdir()) == before


def test_a_broken_corpus_manifest_names_its_line(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.jsonl").write_text('{"id": "a", "audio": "a.wav"\n')
    assert train_motion.main(["--corpus", str(corpus), "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "manifest.jsonl line 1: invalid JSON" in _one_error_line(capsys)


# ------------------------------------------------------------------------------------------------
# 3. A binary prompts file was a UnicodeDecodeError
def test_a_binary_prompts_file_is_a_clear_error(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(bytes(range(128, 256)) * 8)
    out = tmp_path / "heads.json"
    args = ["search", "--prompts-file", str(prompts), "--model", "tiny-sd3", "-o", str(out)]
    assert guide.main(args) == 2
    assert "prompts file" in _one_error_line(capsys) and not out.exists()


# ------------------------------------------------------------------------------------------------
# 4. Guide sampled with a NaN scale (a broken PNG), 0 steps (20 steps), a 7-pixel side and a float7 dtype;
#    5. an unknown Hub id waited ~30 s on the Hub client's retries and printed a dozen lines
@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, and a network that fails the test if anything connects to it."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--scale", "nan"], "--scale must be a finite number, got nan"),
        (["--cfg", "inf"], "--cfg must be a finite number, got inf"),
        (["--soft", "nan"], "--soft (SoftPAG strength) must be in [0, 1], got nan"),
        (["--steps", "0"], "--steps must be 1-1000, got 0"),
        (["--steps", "1001"], "--steps must be 1-1000, got 1001"),
        (["--height", "7"], "--height must be a positive multiple of 16 pixels"),
        (["--width", "0"], "--width must be a positive multiple of 16 pixels"),
        (["--guidance-range", "nan,1"], "--guidance-range nan,1.0 must satisfy"),
        (["--seed", "-1"], "--seed must be 0 to 2**64 - 1"),
    ],
)
@pytest.mark.parametrize("model", ["tiny-sd3", "nobody/not-there"])
def test_guide_settings_no_model_can_use_fail_before_a_model_loads(
    offline_hub_cache, tmp_path, capsys, flags, message, model
):
    # With a model that is nowhere, the setting's error shows that it was checked first.
    out = tmp_path / "g.png"
    assert guide.main(["--prompt", "a cat", "--model", model, *flags, "-o", str(out)]) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_generate_checks_its_config_before_loading_the_model(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model")

    monkeypatch.setattr("pipelines.guide.text_to_image.load_pipeline", no_loading)
    for bad in (dict(scale=float("nan")), dict(steps=0), dict(height=8), dict(dtype="float7")):
        with pytest.raises(HeadsplatError):
            generate(GuideConfig(prompt="a cat", model="tiny-sd3", **bad))


def test_search_settings_are_checked_before_a_model_loads(offline_hub_cache, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    args = [
        "search",
        "--prompts-file",
        str(prompts),
        "--model",
        "nobody/not-there",
        "-o",
        str(tmp_path / "h.json"),
    ]
    for flags, message in (
        (["--height", "24"], "try 32"),
        (["--scale", "nan"], "--scale"),
        (["-k", "0"], "-k"),
    ):
        assert guide.main([*args, *flags]) == 2
        assert message in _one_error_line(capsys)
    with pytest.raises(HeadsplatError, match="--batch-size must be at least 1"):
        SearchConfig(prompts=["a cat"], batch_size=0).check()


def test_guide_dtype_is_one_of_its_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        guide.main(["--prompt", "a cat", "--model", "tiny-sd3", "--dtype", "float7"])
    assert exit_info.value.code == 2 and "invalid choice: 'float7'" in _one_error_line(capsys)


def test_an_uncached_hub_id_fails_at_once_with_one_line(offline_hub_cache, tmp_path, capsys):
    out = tmp_path / "g.png"
    assert guide.main(["--prompt", "a cat", "--model", "nobody/not-there", "-o", str(out)]) == 2
    assert _one_error_line(capsys).startswith(
        "error: model nobody/not-there is not in the local Hugging Face cache (nor a local folder): "
        "download it first with `hf download nobody/not-there`"
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    search = ["search", "--prompts-file", str(prompts), "--model", "tiny-sd3", "-o", str(tmp_path / "h.json")]
    assert guide.main([*search, "--objective", "clip:nobody/no-clip"]) == 2
    assert _one_error_line(capsys).startswith(
        "error: CLIP scorer nobody/no-clip is not in the local Hugging Face cache"
    )
    assert guide.main([*search, "--objective", "clip:nobody/no-clip", "--steps", "1"]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "prompts.txt"]


def test_a_cached_hub_id_samples_from_its_snapshot_without_the_network(offline_hub_cache, tmp_path, capsys):
    repo = offline_hub_cache / "models--someone--tiny-sd3"
    build_tiny_pipeline("tiny-sd3").save_pretrained(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    out = tmp_path / "g.png"
    args = ["--prompt", "a cat", "--model", "someone/tiny-sd3", "--steps", "1", "--no-t5", "-o", str(out)]
    assert guide.main(args) == 0
    assert out.stat().st_size > 100
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------
# 6. Track took --threads 0, --identity-frames 0 and a negative --max-frames silently
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--identity-frames", "0"], "--identity-frames must be at least 1, got 0"),
        (["--max-frames=-5"], "--max-frames must be at least 0, got -5"),
        (["--num-identity", "51"], "--num-identity must be 0 to 50, got 51"),
        (["--face-index=-1"], "--face-index must be at least 0, got -1"),
    ],
)
def test_track_refuses_counts_it_cannot_use_before_reading_the_input(tmp_path, capsys, flags, message):
    out = tmp_path / "m.csv"
    # A missing input: the flag's error shows that it was checked first.
    assert track.main([str(tmp_path / "missing.mp4"), "-o", str(out), *flags]) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_track_help_says_max_frames_0_means_every_frame(capsys):
    with pytest.raises(SystemExit):
        track.main(["--help"])
    assert "(default: 0, all of them)" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------------------------------------
# 7. audio_to_motion took --emotion-strength 5 although its help says 0-1
@pytest.mark.parametrize("strength", ["5", "1.01", "-0.1", "nan"])
def test_emotion_strength_outside_0_1_is_refused_before_the_audio_is_read(tmp_path, capsys, strength):
    out = tmp_path / "m.npz"
    args = ["--audio", str(tmp_path / "missing.wav"), "--out", str(out), "--emotion", "happy"]
    assert audio_to_motion.main([*args, f"--emotion-strength={strength}"]) == 2
    assert "emotion_strength must be 0-1" in _one_error_line(capsys)
    assert not out.exists()


def test_emotion_strength_0_and_1_are_accepted():
    for strength in (0.0, 1.0):
        GenerationControls(emotion="happy", emotion_strength=strength).check()


# ------------------------------------------------------------------------------------------------
# 8. Ctrl-C during training printed "interrupted; ..." glued to the progress bar, and a bar after it
def test_ctrl_c_in_training_closes_the_bar_before_the_message(pair_folder, monkeypatch, capsys):
    real_loss = train_motion.diffusion_loss
    calls = []

    def loss_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_motion, "diffusion_loss", loss_then_ctrl_c)
    out = pair_folder / "w.safetensors"
    args = ["--pairs", str(pair_folder), "--out", str(out), "--steps", "100", "--width", "32", "--depth", "1"]
    assert train_motion.main([*args, "--threads", "1"]) == 130
    err = capsys.readouterr().err
    message = (
        f"interrupted; {out} was not written (a run stopped after a checkpoint continues with --resume "
        f"{pair_folder / 'w.checkpoint.safetensors'})"
    )
    assert "training:" in err and "2/100" in err  # the bar ran, and was closed at the step it reached
    assert err.endswith("\n" + message + "\n"), err[-400:]
    assert not out.exists()
