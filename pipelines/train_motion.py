"""Train the audio-to-motion diffusion model on (speech, motion) pairs.

Data sources (combine freely):
  --corpus DIR      a synthetic corpus from `pipelines.synth_corpus` (its held-out voices are used for eval)
  --pairs PATH      a folder of audio files each with a same-named motion file (.npz/.json/Live Link Face
                    .csv), or a manifest (.jsonl with "audio" and "motion" keys, or .csv with those columns)
  --videos DIR      talking-head videos, tracked into motion by headsplat's face tracker
                    (`pipelines.track:track_video`) or by --tracker MODULE:FUNCTION, any callable
                    `(video_path) -> models.latent.Motion`; the audio comes from each video's own track

    python -m pipelines.train_motion --corpus data/motion_corpus --out weights/motion_diffusion.safetensors \
        --minutes 30 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from models.errors import HeadsplatError
from models.latent import Motion
from models.motion_diffusion import (
    LIP_COLUMNS,
    MOTION_DIM,
    GenerationControls,
    MotionDenoiser,
    MotionModelConfig,
    count_parameters,
    generate_frames,
    postprocess,
)
from models.visemes import EMOTIONS, bilabial_closure, mouth_opening
from pipelines.cli import check_output, run_cli
from pipelines.config_cli import add_config_arguments, config_from_args, flag
from pipelines.device import DEVICES
from pipelines.files import atomic_output, require_file
from pipelines.training_data import (
    Clip,
    corpus_clips,
    paired_clips,
    resolve_tracker,
    video_clips,
)


@dataclass
class TrainConfig:
    """How the motion model is trained."""

    steps: int = 6000
    """Optimiser steps (training also stops when --minutes run out)."""
    minutes: float = 30.0
    """Wall-clock budget of the training loop, in minutes."""
    batch_size: int = 24
    """Windows per batch."""
    lr: float = 1e-3
    """Peak AdamW learning rate (cosine decay after 200 warm-up steps)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    audio_dropout: float = 0.1
    """Share of windows trained without audio (the unconditional branch of classifier-free guidance)."""
    context_dropout: float = 0.2
    """Share of windows trained without past frames (the first window of a clip)."""
    lip_weight: float = 3.0
    """Loss weight of the lip channels relative to the others."""
    velocity_weight: float = 1.0
    """Weight of the frame-to-frame velocity loss (smoothness)."""
    ema: float = 0.998
    """Exponential moving average of weights kept for sampling."""
    threads: int = 2
    """CPU threads for torch."""
    seed: int = 0
    """Random seed for initialisation and batches."""
    fps: float = 25.0
    """Motion frame rate (the model's)."""
    model: MotionModelConfig = field(default_factory=MotionModelConfig)
    """Network shape."""


@dataclass
class TrainCommand(TrainConfig):
    """TrainConfig plus the data and files of `python -m pipelines.train_motion`; each field is one of its
    flags but the ones training tunes itself (`TRAINING_ONLY`)."""

    corpus: Path | None = field(default=None, metadata=flag(parse=Path))
    """Synthetic corpus folder (pipelines.synth_corpus)."""
    pairs: Path | None = field(default=None, metadata=flag(parse=Path))
    """Folder of audio+motion files, or a .jsonl/.csv manifest."""
    videos: Path | None = field(default=None, metadata=flag(parse=Path))
    """Folder of talking-head videos (tracked by --tracker)."""
    tracker: str = field(
        default="pipelines.track:track_video", metadata=flag(default_help="the face tracker")
    )
    """MODULE:FUNCTION turning a video path into a Motion."""
    out: Path = field(kw_only=True, metadata=flag(parse=Path))
    """Weights to write (.safetensors; a .json goes beside)."""
    checkpoint: Path | None = field(
        default=None, metadata=flag(parse=Path, default_help="OUT.checkpoint.safetensors")
    )
    """Where to keep the resumable checkpoint."""
    relabel: bool = False
    """Recompute corpus motion with the current teacher from the stored phones."""
    resume: Path | None = field(default=None, metadata=flag(parse=Path))
    """Checkpoint to continue from (OUT.checkpoint.safetensors)."""
    init: Path | None = field(default=None, metadata=flag(parse=Path))
    """Weights to fine-tune (.safetensors + .json, e.g. the shipped model); keeps their architecture, ignores
    --width/--depth."""
    # The network's shape, flattened into two flags.
    width: int = MotionModelConfig.width
    """Transformer width."""
    depth: int = MotionModelConfig.depth
    """Transformer blocks."""
    device: str = field(default="cpu", metadata=flag(choices=DEVICES))
    """Training runs on the CPU (the model is small); cuda is not used yet."""

    @property
    def train_config(self) -> TrainConfig:
        """The training settings alone, with the network shape the flags give (what the weights' .json records)."""
        values = {f.name: getattr(self, f.name) for f in fields(TrainConfig) if f.name != "model"}
        return TrainConfig(**values, model=MotionModelConfig(width=self.width, depth=self.depth))


#: TrainConfig fields that are not flags: tuned, or (the network shape) given as --width/--depth.
TRAINING_ONLY = (
    "weight_decay", "audio_dropout", "context_dropout", "lip_weight", "velocity_weight", "ema", "fps", "model"
)  # fmt: skip
DATA_FLAGS = ("corpus", "pairs", "videos", "tracker", "out", "checkpoint", "relabel", "resume", "init")


# --------------------------------------------------------------------------------------------------
# Batches and loss
def motion_statistics(clips: Sequence[Clip]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std [59] of the training motion (std floored so rare shapes stay learnable)."""
    values = np.concatenate([c.motion for c in clips])
    return values.mean(0), np.maximum(values.std(0), 0.02)


def sample_batch(
    clips: Sequence[Clip], config: TrainConfig, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """A batch of equal-length windows: [context | new frames (| look-ahead)] cut from random clips."""
    context = config.model.context
    has_context = rng.random() >= config.context_dropout
    lengths = np.array([c.motion.shape[0] for c in clips])
    longest = config.model.max_frames - (context if has_context else 0)
    new = int(rng.integers(6, max(7, min(longest, 64))))
    total = new + (context if has_context else 0)
    eligible = np.flatnonzero(lengths >= total)
    if eligible.size == 0:
        total = int(lengths.max())
        new = total - (context if has_context else 0)
        eligible = np.flatnonzero(lengths >= total)
    weights = lengths[eligible] / lengths[eligible].sum()
    picks = rng.choice(eligible, size=config.batch_size, p=weights)
    audio, motion, known_mask, emotion, blink = [], [], [], [], []
    for i in picks:
        clip = clips[i]
        # Windows without context are first windows: they start at the clip's start half the time.
        start = (
            0
            if (not has_context and rng.random() < 0.5)
            else int(rng.integers(0, clip.motion.shape[0] - total + 1))
        )
        audio.append(clip.features[start : start + total])
        motion.append(clip.motion[start : start + total])
        mask = np.zeros(total, np.float32)
        if has_context:
            mask[:context] = 1
        known_mask.append(mask)
        emotion.append(clip.emotion)
        blink.append(clip.blink_rate)
    return {
        "audio": torch.from_numpy(np.stack(audio)),
        "motion": torch.from_numpy(np.stack(motion)),
        "known_mask": torch.from_numpy(np.stack(known_mask)),
        "emotion": torch.from_numpy(np.stack(emotion)),
        "blink_rate": torch.tensor(blink, dtype=torch.float32),
    }


def diffusion_loss(net: MotionDenoiser, batch: dict[str, torch.Tensor], config: TrainConfig,
                   generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """Weighted x0 MSE plus velocity MSE on the frames to generate (context frames excluded)."""
    x0 = net.normalize(batch["motion"])
    b = x0.shape[0]
    # Half uniform, half logit-normal noise levels: few-step samplers live at the high-noise end.
    u = torch.rand(b, generator=generator)
    logit = torch.sigmoid(torch.randn(b, generator=generator))
    t = torch.where(torch.rand(b, generator=generator) < 0.5, u, logit).clamp(1e-3, 1.0)
    noise = torch.randn(x0.shape, generator=generator)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    mask = batch["known_mask"]
    known = x0 * mask[..., None]
    keep = torch.rand(b, generator=generator) >= config.audio_dropout
    tokens = net.encode_audio(batch["audio"], keep)
    pred = net(xt, t, tokens, known, mask, batch["emotion"], batch["blink_rate"])
    channel_weight = torch.ones(MOTION_DIM)
    channel_weight[list(LIP_COLUMNS)] = config.lip_weight
    frame_weight = (1 - mask)[..., None]
    err = (pred - x0) ** 2 * channel_weight * frame_weight
    loss = err.sum() / (frame_weight.sum() * MOTION_DIM)
    vel_err = ((pred[:, 1:] - pred[:, :-1]) - (x0[:, 1:] - x0[:, :-1])) ** 2 * channel_weight
    vel_weight = frame_weight[:, 1:]
    return loss + config.velocity_weight * (vel_err * vel_weight).sum() / (vel_weight.sum() * MOTION_DIM)


# --------------------------------------------------------------------------------------------------
# Evaluation
def generate_clip(net: MotionDenoiser, clip: Clip, controls: GenerationControls, fps: float,
                  chunk: int = 72, lookahead: int = 8) -> Motion:  # fmt: skip
    """Offline generation for one clip's precomputed features."""
    frames = np.concatenate(
        list(generate_frames(net, iter([(clip.features, True)]), controls, chunk, lookahead))
    )
    return postprocess(frames, clip.features[:, -1], controls, fps)


def lip_sync_scores(net: MotionDenoiser, clips: Sequence[Clip], fps: float, seed: int = 0,
                    steps: int = 3, guidance: float = 1.0) -> dict:  # fmt: skip
    """Mouth-opening correlation with the teacher (pooled over frames) and the p/b/m closure share."""
    generated, target = [], []
    closed = total = 0
    for clip in clips:
        emotion = EMOTIONS[int(np.argmax(clip.emotion))]
        controls = GenerationControls(seed=seed, steps=steps, guidance=guidance, emotion=emotion,
                                      emotion_strength=float(clip.emotion.max()), blink_rate=clip.blink_rate)  # fmt: skip
        motion = generate_clip(net, clip, controls, fps)
        generated.append(mouth_opening(motion.expression))
        target.append(mouth_opening(clip.motion[:, : motion.expression.shape[1]]))
        c, n = bilabial_closure(clip.phones, motion.expression, fps)
        closed, total = closed + c, total + n
    g, t = np.concatenate(generated), np.concatenate(target)
    return {
        "mouth_opening_correlation": float(np.corrcoef(g, t)[0, 1]),
        "pbm_closed_share": closed / total if total else float("nan"),
        "pbm_phones": total,
        "clips": len(clips),
    }


# --------------------------------------------------------------------------------------------------
# Checkpoints
def save_weights(net: MotionDenoiser, path: Path, meta: dict, half: bool = True) -> None:
    """Weights as .safetensors (fp16 by default: the shipped file stays small) and config/notes as .json."""
    from safetensors.torch import save

    state = {k: (v.half() if half and v.is_floating_point() and "motion_" not in k else v).contiguous()
             for k, v in net.state_dict().items()}  # fmt: skip
    with atomic_output(path) as tmp:
        # Bytes written into the file atomic_output made: save_file replaces it with a new 0600 file.
        tmp.write_bytes(save(state))
    with atomic_output(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"model": net.config.to_dict(), **meta}, indent=2))


def save_checkpoint(path: Path, net: MotionDenoiser, ema: MotionDenoiser, optimizer: torch.optim.Optimizer,
                    step: int, config: TrainConfig) -> None:  # fmt: skip
    """Everything needed to resume: model, EMA, optimiser moments (safetensors) and the step (json)."""
    from safetensors.torch import save

    tensors = {f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()})
    names = [n for n, _ in net.named_parameters()]
    for i, name in enumerate(names):
        state = optimizer.state.get(optimizer.param_groups[0]["params"][i], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"opt.{name}.{key}"] = state[key].contiguous()
    with atomic_output(path) as tmp:
        tmp.write_bytes(save(tensors))  # not save_file: see save_weights
    with atomic_output(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"step": step, "train": _config_dict(config)}))


def load_checkpoint(
    path: Path, net: MotionDenoiser, ema: MotionDenoiser, optimizer: torch.optim.Optimizer
) -> int:
    """Restore a `save_checkpoint` file; returns the step to continue from."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(require_file(path, "checkpoint")))
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except (RuntimeError, OSError, ValueError) as err:
        raise HeadsplatError(f"cannot resume from {path.name}: {str(err).splitlines()[0]}") from err
    for i, (name, _) in enumerate(net.named_parameters()):
        param = optimizer.param_groups[0]["params"][i]
        if f"opt.{name}.exp_avg" in tensors:
            optimizer.state[param] = {
                "step": torch.tensor(0.0),
                "exp_avg": tensors[f"opt.{name}.exp_avg"],
                "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"],
            }
    step = int(json.loads(path.with_suffix(".json").read_text())["step"])
    for state in optimizer.state.values():
        state["step"] = torch.tensor(float(step))
    return step


def _config_dict(config: TrainConfig) -> dict:
    data = asdict(config)
    data["model"] = config.model.to_dict()
    return data


# --------------------------------------------------------------------------------------------------
def train(clips: Sequence[Clip], config: TrainConfig, eval_clips: Sequence[Clip] = (), checkpoint: Path | None = None,
          resume: Path | None = None, progress: bool = True, log: Callable[[str], None] = print,
          init: MotionDenoiser | None = None) -> tuple[MotionDenoiser, dict]:  # fmt: skip
    """Train on `clips` (checkpointing every 500 steps to `checkpoint`); returns the EMA network and a summary.

    `init` fine-tunes an existing network (its architecture and motion normalisation are kept).
    """
    from tqdm import tqdm

    if not clips:
        raise HeadsplatError("no training clips")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    audio_dim = clips[0].features.shape[1]
    model_config = config.model if config.model.audio_dim == audio_dim else MotionModelConfig(
        **{**config.model.to_dict(), "audio_dim": audio_dim})  # fmt: skip
    config = TrainConfig(**{**asdict(config), "model": model_config})
    if resume is not None:  # the checkpoint's own architecture, whatever --width/--depth say now
        try:
            saved = json.loads(require_file(resume, "checkpoint").with_suffix(".json").read_text())
            model_config = MotionModelConfig.from_dict(saved["train"]["model"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise HeadsplatError(f"{resume.name} has no readable .json beside it ({err})") from err
        config = TrainConfig(**{**asdict(config), "model": model_config})
    if init is not None:
        if init.config.audio_dim != audio_dim:
            raise HeadsplatError(
                f"--init model expects {init.config.audio_dim} audio features, the data has {audio_dim}"
            )
        model_config = init.config
        config = TrainConfig(**{**asdict(config), "model": model_config})
        net = MotionDenoiser(model_config)
        net.load_state_dict(init.state_dict())
    else:
        net = MotionDenoiser(model_config)
        mean, std = motion_statistics(clips)
        net.motion_mean.copy_(torch.from_numpy(mean))
        net.motion_std.copy_(torch.from_numpy(std))
    ema = MotionDenoiser(model_config)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if resume is not None:
        step = load_checkpoint(resume, net, ema, optimizer)
        log(f"resumed from {resume} at step {step}")

    def lr_at(i: int, elapsed: float) -> float:
        # The cosine runs over whichever budget (steps or minutes) will run out first.
        done = min(1.0, max(i / config.steps, elapsed / (config.minutes * 60)))
        warm = min(1.0, (i + 1) / 200)
        return config.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * done)))

    start = time.perf_counter()
    losses = []
    net.train()
    # Closed on the way out, Ctrl-C included: the CLI's "interrupted; ..." line then starts a line of its
    # own instead of trailing the half-drawn bar, and no bar is redrawn after it.
    with tqdm(total=config.steps, initial=step, desc="training", disable=not progress) as bar:
        while step < config.steps and (time.perf_counter() - start) < config.minutes * 60:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, time.perf_counter() - start)
            loss = diffusion_loss(net, sample_batch(clips, config, rng), config, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                decay = min(config.ema, (1 + step) / (10 + step))
                for e, p in zip(ema.parameters(), net.parameters()):
                    e.lerp_(p, 1 - decay)
            losses.append(loss.item())
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if checkpoint is not None and step % 500 == 0:
                save_checkpoint(checkpoint, net, ema, optimizer, step, config)
    elapsed = time.perf_counter() - start
    if checkpoint is not None:
        save_checkpoint(checkpoint, net, ema, optimizer, step, config)
    ema.eval()
    summary = {
        "steps": step,
        "train_minutes": round(elapsed / 60, 2),
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        "parameters": count_parameters(ema),
        "train_clips": len(clips),
        "train_frames": int(sum(c.motion.shape[0] for c in clips)),
    }
    if eval_clips:
        with torch.inference_mode():
            summary["eval"] = lip_sync_scores(
                ema, [c for c in eval_clips if c.phones] or eval_clips, config.fps
            )
    return ema, {"train": _config_dict(config), "summary": summary}


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m pipelines.train_motion`: every flag is a field of TrainCommand."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.train_motion", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    add_config_arguments(parser, TrainCommand, only=DATA_FLAGS)
    add_config_arguments(parser, TrainCommand, skip=(*DATA_FLAGS, *TRAINING_ONLY))
    return parser


def main(argv: list[str] | None = None) -> int:
    command = config_from_args(TrainCommand, build_parser().parse_args(argv))
    checkpoint = command.checkpoint or command.out.with_name(command.out.stem + ".checkpoint.safetensors")
    return run_cli(
        lambda: _run(command, checkpoint),
        interrupted=f"interrupted; {command.out} was not written (a run stopped after a checkpoint "
        f"continues with --resume {checkpoint})",
    )


def check_train_config(config: TrainConfig) -> None:
    """A HeadsplatError naming the first setting no training run can use."""
    for name in ("steps", "batch_size", "threads"):
        if getattr(config, name) < 1:
            raise HeadsplatError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}"
            )
    for name in ("minutes", "lr"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise HeadsplatError(f"--{name} must be a positive number, got {value}")
    if config.seed < 0:
        raise HeadsplatError(f"--seed must be 0 or more, got {config.seed}")
    model = config.model
    if model.width < 1 or model.depth < 1 or model.width % model.heads:
        raise HeadsplatError(
            f"--width must be a positive multiple of {model.heads} and --depth at least 1, "
            f"got width {model.width}, depth {model.depth}"
        )


def _run(command: TrainCommand, checkpoint: Path) -> int:
    if not (command.corpus or command.pairs or command.videos):
        raise HeadsplatError("give training data: --corpus, --pairs and/or --videos")
    if command.init and command.resume:
        raise HeadsplatError("give --init or --resume, not both")
    if command.out.suffix != ".safetensors":
        raise HeadsplatError("--out must end in .safetensors")
    config = command.train_config
    check_train_config(config)
    # The outputs (weights, their .json, the checkpoint) before the data is read: none may be an input.
    # The checkpoint may be the one resumed from: it is rewritten as training goes on.
    inputs = [command.corpus, command.pairs, command.videos, command.init, command.resume]
    check_output(command.out, inputs, "output")
    check_output(command.out.with_suffix(".json"), inputs, "output's .json")
    check_output(checkpoint, inputs[:4], "checkpoint")
    if os.path.realpath(checkpoint) == os.path.realpath(command.out):
        raise HeadsplatError(f"--checkpoint must be another file than --out ({command.out})")
    torch.set_num_threads(config.threads)
    init = None
    if command.init:  # before the data: a bad path fails at once
        from pipelines.audio_to_motion import load_model

        init = load_model(command.init).train()
    train_clips, eval_clips = [], []
    if command.corpus:
        t, h = corpus_clips(command.corpus, config.fps, relabel=command.relabel)
        train_clips += t
        eval_clips += h
    if command.pairs:
        train_clips += paired_clips(command.pairs, config.fps)
    if command.videos:
        train_clips += video_clips(command.videos, resolve_tracker(command.tracker), config.fps)
    net, meta = train(
        train_clips, config, eval_clips, checkpoint=checkpoint, resume=command.resume, init=init
    )
    meta["data"] = {"init": str(command.init) if command.init else None,
                    "corpus": str(command.corpus) if command.corpus else None,
                    "pairs": str(command.pairs) if command.pairs else None,
                    "videos": str(command.videos) if command.videos else None}  # fmt: skip
    save_weights(net, command.out, meta)
    print(json.dumps(meta["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
