"""Motion diffusion: tiny models built in code, the sampler, windowing and streaming, and the shipped weights."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from models.audio import FeatureConfig, align_phones, speech_features
from models.errors import HeadsplatError
from models.motion_diffusion import (
    MAX_STEPS,
    MOTION_DIM,
    GenerationControls,
    GuidedDenoiser,
    MotionControls,
    MotionDenoiser,
    MotionModelConfig,
    count_parameters,
    flow_sigmas,
    generate_frames,
    sample_euler,
)
from models.visemes import LIPS_CLOSED_BELOW, bilabial_closure, mouth_opening, teacher_motion
from pipelines.audio_io import load_audio
from pipelines.audio_to_motion import DEFAULT_WEIGHTS, STREAM_CHUNK, AudioToMotion, load_model
from pipelines.train_motion import TrainConfig, diffusion_loss, sample_batch, save_weights, train
from pipelines.training_data import Clip

TINY = MotionModelConfig(width=16, depth=2, heads=2, max_frames=48, context=4)
D = FeatureConfig().dim
needs_weights = pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="shipped motion weights not built")


def _tiny_net(seed: int = 0) -> MotionDenoiser:
    torch.manual_seed(seed)
    net = MotionDenoiser(TINY).eval()
    # adaLN-Zero starts every block as identity; perturb so guidance and audio have an effect.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def _clips(n: int = 3, frames: int = 60) -> list[Clip]:
    rng = np.random.default_rng(0)
    clips = []
    for i in range(n):
        feats = rng.standard_normal((frames, D)).astype(np.float32)
        motion = teacher_motion([], frames, 25.0, seed=i)
        values = np.concatenate([motion.expression, motion.rotation, motion.translation], 1)
        # Make the jaw follow one audio channel so there is something to learn.
        values[:, 26] = np.clip(feats[:, 0] * 0.2 + 0.2, 0, 1)
        clips.append(Clip(feats, values.astype(np.float32), np.eye(5, dtype=np.float32)[0], 1.0, f"c{i}"))
    return clips


def test_tiny_model_trains_and_samples_with_the_right_shapes():
    config = TrainConfig(steps=40, batch_size=8, threads=1, model=TINY, lr=3e-3)
    clips = _clips()
    net, meta = train(clips, config, progress=False, log=lambda _: None)
    assert meta["summary"]["steps"] == 40
    # The same initial network train() starts from (same seed), with the same data statistics.
    torch.manual_seed(config.seed)
    initial = MotionDenoiser(TINY)
    initial.motion_mean.copy_(net.motion_mean)
    initial.motion_std.copy_(net.motion_std)
    batches = [sample_batch(clips, config, np.random.default_rng(i)) for i in range(4)]

    def mean_loss(model):
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return float(np.mean([diffusion_loss(model, b, config, gen) for b in batches]))

    assert mean_loss(net) < 0.9 * mean_loss(initial)
    frames = np.concatenate(
        list(generate_frames(net, iter([(clips[0].features, True)]), GenerationControls(steps=2), 20, 4))
    )
    assert frames.shape == (60, MOTION_DIM)
    assert np.all(np.isfinite(frames))


def test_parameter_budget_of_the_default_model():
    assert count_parameters(MotionDenoiser()) <= 10_000_000


def test_euler_sampler_reaches_the_denoised_target_and_uses_all_steps():
    target = torch.full((1, 5, 3), 0.7)
    calls = []

    def denoiser(x, sigma):
        calls.append(float(sigma[0]))
        return target

    out = sample_euler(denoiser, torch.randn(1, 5, 3), flow_sigmas(4))
    torch.testing.assert_close(out, target)
    assert calls == pytest.approx([1.0, 0.75, 0.5, 0.25])
    shifted = flow_sigmas(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and shifted[1] > 0.75  # more time at high noise


def test_guidance_zero_is_plain_conditioning_and_nonzero_changes_the_result():
    net = _tiny_net()
    x = torch.randn(1, 12, MOTION_DIM)
    t = torch.full((1,), 0.6)
    args = dict(audio=torch.randn(1, 12, D), known=torch.zeros(1, 12, MOTION_DIM), known_mask=torch.zeros(1, 12),
                emotion=torch.eye(5)[:1], blink_rate=torch.ones(1))  # fmt: skip
    with torch.no_grad():
        plain = net(x, t, net.encode_audio(args["audio"]), args["known"], args["known_mask"], args["emotion"],
                    args["blink_rate"])  # fmt: skip
        torch.testing.assert_close(GuidedDenoiser(net, 0.0)(x, t, **args), plain)
        guided = GuidedDenoiser(net, 2.0)(x, t, **args)
    assert (guided - plain).abs().max() > 1e-3


def test_context_frames_are_kept_exactly():
    net = _tiny_net()
    known = torch.randn(1, 10, MOTION_DIM)
    mask = torch.zeros(1, 10)
    mask[:, :4] = 1
    with torch.no_grad():
        out = net(torch.randn(1, 10, MOTION_DIM), torch.ones(1), net.encode_audio(torch.randn(1, 10, D)), known,
                  mask, torch.eye(5)[:1], torch.ones(1))  # fmt: skip
    torch.testing.assert_close(out[:, :4], known[:, :4])


def test_feature_block_sizes_do_not_change_the_result():
    net = _tiny_net()
    feats = np.random.default_rng(0).standard_normal((53, D)).astype(np.float32)
    controls = GenerationControls(seed=4, steps=2)
    whole = np.concatenate(list(generate_frames(net, iter([(feats, True)]), controls, 8, 2)))
    blocks = [(feats[i : i + 7], i + 7 >= 53) for i in range(0, 53, 7)]
    pieces = np.concatenate(list(generate_frames(net, iter(blocks), controls, 8, 2)))
    assert whole.shape == (53, MOTION_DIM)
    np.testing.assert_allclose(pieces, whole, atol=1e-5)


def test_bad_inputs_raise_clear_errors(tmp_path):
    net = _tiny_net()
    with pytest.raises(HeadsplatError, match="audio features must be"):
        list(
            generate_frames(
                net, iter([(np.zeros((10, 5), np.float32), True)]), GenerationControls(steps=2), 8, 2
            )
        )
    with pytest.raises(HeadsplatError, match="steps"):
        GenerationControls(steps=0).check()
    with pytest.raises(HeadsplatError, match="emotion"):
        GenerationControls(emotion="bored").check()
    with pytest.raises(HeadsplatError, match=f"steps must be 1-{MAX_STEPS}"):
        GenerationControls(steps=MAX_STEPS + 1).check()
    bad = tmp_path / "motion_diffusion.safetensors"
    bad.write_bytes(b"garbage that is not safetensors")
    save_weights(net, tmp_path / "ok.safetensors", {})
    (tmp_path / "motion_diffusion.json").write_text((tmp_path / "ok.json").read_text())
    with pytest.raises(HeadsplatError, match="cannot read"):
        load_model(bad)
    reloaded = load_model(tmp_path / "ok.safetensors")
    assert reloaded.config == TINY


# --------------------------------------------------------------------------------------------------
# The shipped weights
@pytest.fixture(scope="module")
def sentence(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    path = tmp_path_factory.mktemp("speech") / "sentence.wav"
    text = "Bob bought a map of the moon, please pass me the butter"
    subprocess.run(["espeak-ng", "-v", "en-us+m3", "-s", "160", "-w", str(path), text], check=True)
    audio = load_audio(path)
    audio = np.concatenate([np.zeros(4000, np.float32), audio, np.zeros(4000, np.float32)])
    phones = align_phones(audio, text)
    feats = speech_features(audio)
    teacher = teacher_motion(phones, feats.num_frames, 25.0, feats.energy_db, feats.f0_hz)
    return audio, phones, teacher


@pytest.fixture(scope="module")
def model():
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("shipped motion weights not built")
    torch.set_num_threads(2)
    return AudioToMotion.from_pretrained()


@needs_weights
def test_shipped_model_lip_syncs_a_sentence(model, sentence):
    audio, phones, teacher = sentence
    motion = model.generate(audio, 16000, seed=0)
    assert motion.num_frames == teacher.num_frames and motion.fps == 25.0
    r = np.corrcoef(mouth_opening(motion.expression), mouth_opening(teacher.expression))[0, 1]
    closed, total = bilabial_closure(phones, motion.expression, 25.0)
    assert r > 0.6
    assert closed >= 0.7 * total and total >= 6


@needs_weights
def test_seeds_change_head_and_blinks_not_lips(model, sentence):
    audio, _, _ = sentence
    a, b = model.generate(audio, 16000, seed=1), model.generate(audio, 16000, seed=2)
    lips = np.abs(mouth_opening(a.expression) - mouth_opening(b.expression)).mean()
    head = np.degrees(np.abs(a.rotation - b.rotation)).mean()
    assert head > 0.3  # degrees, averaged over frames and axes
    assert lips < 0.05  # lip gap units (open vowels ~0.5)
    np.testing.assert_array_equal(a.expression, model.generate(audio, 16000, seed=1).expression)


@needs_weights
def test_streaming_approximates_offline_and_windows_have_no_seams(model, sentence):
    audio, _, _ = sentence
    long_audio = np.concatenate([audio, audio])  # > two offline windows
    offline = model.generate(long_audio, 16000, seed=0)
    chunks = list(model.stream(long_audio, seed=0))
    streamed = np.concatenate([c.expression for c in chunks])
    assert streamed.shape == offline.expression.shape
    assert max(c.num_frames for c in chunks[:-1]) == STREAM_CHUNK
    r = np.corrcoef(mouth_opening(streamed), mouth_opening(offline.expression))[0, 1]
    assert r > 0.8
    # Frame-to-frame changes at window joins look like changes anywhere else.
    for values in (
        np.concatenate([offline.rotation, offline.expression], 1),
        np.concatenate([c.rotation for c in chunks]),
    ):
        steps = np.abs(np.diff(values, axis=0)).max(1)
        joins = (
            steps[71::72]
            if values.shape[0] == offline.num_frames
            else steps[STREAM_CHUNK - 1 :: STREAM_CHUNK]
        )
        assert joins.max() <= max(3 * np.percentile(steps, 95), 1e-3)


@needs_weights
def test_silence_is_idle_and_noise_does_not_move_the_lips(model):
    silence = np.zeros(16000 * 20, np.float32)
    idle = model.generate(silence, 16000, seed=0)
    assert mouth_opening(idle.expression).max() < LIPS_CLOSED_BELOW
    assert np.ptp(idle.rotation, axis=0).max() > np.radians(0.2)  # still alive
    closed = idle["eyeBlink_L"] > 0.5
    assert np.sum(closed[1:] & ~closed[:-1]) >= 1  # 20 s without a blink would look dead
    noise = (np.random.default_rng(0).standard_normal(16000 * 4) * 0.1).astype(np.float32)
    noisy = model.generate(noise, 16000, seed=0)
    assert np.percentile(mouth_opening(noisy.expression), 95) < 0.1


@needs_weights
def test_controls_work(model, sentence):
    audio, _, _ = sentence
    base = model.generate(audio, 16000, seed=0)
    still = model.generate(audio, 16000, seed=0, still=True)
    assert np.abs(still.rotation).max() == 0
    calm = model.generate(audio, 16000, seed=0, pose_scale=0.5)
    np.testing.assert_allclose(calm.rotation, 0.5 * base.rotation, atol=1e-6)
    happy = model.generate(audio, 16000, seed=0, emotion="happy", emotion_strength=1.0)
    assert happy["mouthSmile_L"].mean() > base["mouthSmile_L"].mean() + 0.1
    at_30 = model.generate(audio, 16000, fps=30)
    assert at_30.fps == 30 and abs(at_30.duration - base.duration) < 0.05


def test_pipeline_controls_carry_over_to_generation_and_steps_0_is_the_teacher():
    MotionControls(steps=0).check()  # a pipeline may ask for the teacher ...
    with pytest.raises(HeadsplatError, match="steps"):
        MotionControls(steps=MAX_STEPS + 1).check()  # ... but not for more steps than the limit
    controls = GenerationControls.from_controls(
        MotionControls(seed=4, pose_scale=0.5, still=True), guidance=2.0
    )
    assert (controls.seed, controls.pose_scale, controls.still, controls.guidance) == (4, 0.5, True, 2.0)
    assert controls.steps == MotionControls().steps and controls.voice_gate


def test_teacher_fallback_with_a_transcript(sentence):
    audio, phones, _ = sentence
    motion = AudioToMotion(None).generate(
        audio, 16000, steps=0, transcript="Bob bought a map of the moon, please pass me the butter"
    )
    closed, total = bilabial_closure(phones, motion.expression, 25.0)
    assert closed == total
