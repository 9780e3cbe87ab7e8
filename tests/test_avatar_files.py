"""Damaged or crafted avatar files are refused with one line naming the field (never indexed out of
bounds, never a traceback), for portrait (Talk) and 3D head (Avatar3D) avatars alike; Talk rebuilds a
damaged cache entry and Avatar3D's CLI fails cleanly on one."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from models.errors import HeadsplatError
from models.gaussian_avatar import PortraitAvatar, PortraitAvatarConfig, build_portrait_avatar
from models.head_avatar import HeadAvatar, HeadAvatarConfig, build_head_avatar
from models.head_model import HeadModel
from pipelines import avatar3d, avatar_io, talk
from pipelines.avatar_io import load_avatar, save_avatar
from pipelines.image_io import load_image

PORTRAIT_SIZE = 64
#: Per kind: the avatar class and the names its file gives to the roles the corruptions below touch.
KINDS = {
    "portrait": (
        PortraitAvatar,
        {
            "colors": "bound_colors",
            "opacities": "bound_opacities",
            "means": "rigid_means",
            "camera": "camera",
        },
    ),
    "head": (
        HeadAvatar,
        {"colors": "colors", "opacities": "opacities", "means": "binding.offset", "camera": "photo_camera"},
    ),
}


@pytest.fixture(scope="module")
def head():
    return HeadModel()


@pytest.fixture(scope="module")
def photo():
    return load_image(talk.DEFAULT_PORTRAIT)


@pytest.fixture(scope="module")
def states(head, photo):
    """(tensors, metadata) of a small built avatar of each kind, as save_avatar writes them."""
    fit = talk.fit_portrait(photo)
    portrait = build_portrait_avatar(
        photo, fit.to_identity(), fit.expression, head, PortraitAvatarConfig(crop_size=PORTRAIT_SIZE)
    )
    head3d = build_head_avatar(
        photo,
        fit.to_identity(),
        fit.expression,
        head,
        HeadAvatarConfig(num_gaussians=5000, photo_size=96, refinement_steps=0),
    )
    return {"portrait": portrait.state(), "head": head3d.state()}


def _copy(states, kind):
    tensors, meta = states[kind]
    return {k: v.detach().clone() for k, v in tensors.items()}, json.loads(json.dumps(meta))


def _write(path, tensors, meta):
    """A well-formed safetensors file with these tensors; `meta`: a dict (stored as JSON), raw header
    text, or None for no headsplat metadata at all."""
    header = None if meta is None else {"headsplat": meta if isinstance(meta, str) else json.dumps(meta)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=header)
    return path


def _refused(path, head, kind=None):
    with pytest.raises(HeadsplatError) as caught:
        load_avatar(path, head, kind=kind)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------
# Corruptions: each changes the tensors `t` and/or metadata `m` (or returns raw metadata text) of a good
# avatar; `f` maps roles to the kind's names. The expected word is formatted with `f`.
def _set(t, name, index, value):
    t[name] = t[name].clone()
    t[name][index] = value


def _resize_colour_table(t, f):
    t[f["colors"]] = t[f["colors"]][:-1]


CORRUPTIONS = [
    ("negative_triangle", lambda t, m, f, h: _set(t, "binding.triangle", 0, -1), "binding.triangle"),
    ("huge_triangle", lambda t, m, f, h: _set(t, "binding.triangle", -1, 2**40), "binding.triangle"),
    (
        "triangle_one_past_the_mesh",
        lambda t, m, f, h: _set(t, "binding.triangle", 3, len(h.triangles)),
        "binding.triangle",
    ),
    ("short_colours", lambda t, m, f, h: _resize_colour_table(t, f), "{colors}"),
    (
        "long_opacities",
        lambda t, m, f, h: t.update({f["opacities"]: torch.cat([t[f["opacities"]], torch.ones(5)])}),
        "{opacities}",
    ),
    (
        "short_barycentric",
        lambda t, m, f, h: t.update({"binding.barycentric": t["binding.barycentric"][1:]}),
        "binding.barycentric",
    ),
    (
        "vertex_weights_of_another_mesh",
        lambda t, m, f, h: t.update({"vertex_weights": t["vertex_weights"][:100]}),
        "vertex_weights",
    ),
    ("int8_colours", lambda t, m, f, h: t.update({f["colors"]: t[f["colors"]].to(torch.int8)}), "{colors}"),
    (
        "float_triangles",
        lambda t, m, f, h: t.update({"binding.triangle": t["binding.triangle"].double()}),
        "binding.triangle",
    ),
    (
        "bool_triangles",
        lambda t, m, f, h: t.update({"binding.triangle": t["binding.triangle"] > 0}),
        "binding.triangle",
    ),
    (
        "flat_barycentric",
        lambda t, m, f, h: t.update({"binding.barycentric": t["binding.barycentric"].reshape(-1)}),
        "binding.barycentric",
    ),
    ("identity_of_rank_1", lambda t, m, f, h: t.update({"identity": t["identity"][0]}), "identity"),
    (
        "identity_longer_than_the_head_model",
        lambda t, m, f, h: t.update({"identity": torch.zeros(1, h.num_identity + 1)}),
        "identity",
    ),
    ("nan_colour", lambda t, m, f, h: _set(t, f["colors"], (4, 1), math.nan), "{colors}"),
    ("nan_means", lambda t, m, f, h: _set(t, f["means"], 0, math.nan), "{means}"),
    ("inf_scale", lambda t, m, f, h: _set(t, "binding.scale", (2, 0), math.inf), "binding.scale"),
    ("negative_scale", lambda t, m, f, h: _set(t, "binding.scale", (2, 0), -0.5), "binding.scale"),
    ("huge_offset", lambda t, m, f, h: _set(t, "binding.offset", 1, 1e30), "binding.offset"),
    ("colour_above_one", lambda t, m, f, h: _set(t, f["colors"], (0, 2), 3.0), "{colors}"),
    ("negative_opacity", lambda t, m, f, h: _set(t, f["opacities"], 0, -0.2), "{opacities}"),
    ("vertex_weight_above_one", lambda t, m, f, h: _set(t, "vertex_weights", 0, 7.0), "vertex_weights"),
    ("zero_rotation", lambda t, m, f, h: _set(t, "binding.rotation", 5, 0.0), "binding.rotation"),
    ("missing_scale", lambda t, m, f, h: t.pop("binding.scale"), "binding.scale"),
    ("missing_colours", lambda t, m, f, h: t.pop(f["colors"]), "{colors}"),
    ("metadata_not_json", lambda t, m, f, h: '{"kind": "headsplat.', "metadata"),
    ("metadata_not_an_object", lambda t, m, f, h: "[1, 2, 3]", "metadata"),
    ("no_metadata", lambda t, m, f, h: None, "metadata"),
    ("wrong_kind", lambda t, m, f, h: m.update(kind="headsplat.something_else"), "kind"),
    ("kind_not_a_string", lambda t, m, f, h: m.update(kind=["headsplat.head_avatar"]), "kind"),
    ("no_kind", lambda t, m, f, h: m.pop("kind"), "kind"),
    ("no_camera", lambda t, m, f, h: m.pop(f["camera"]), "{camera}"),
    ("camera_not_an_object", lambda t, m, f, h: m.update({f["camera"]: "front"}), "{camera}"),
    ("camera_zero_width", lambda t, m, f, h: m[f["camera"]].update(width=0), "{camera}.width"),
    ("camera_huge_height", lambda t, m, f, h: m[f["camera"]].update(height=10**9), "{camera}.height"),
    ("camera_float_width", lambda t, m, f, h: m[f["camera"]].update(width=64.5), "{camera}.width"),
    ("camera_text_focal", lambda t, m, f, h: m[f["camera"]].update(fx="158"), "{camera}.fx"),
    ("camera_nan_centre", lambda t, m, f, h: m[f["camera"]].update(cy=math.nan), "{camera}.cy"),
    ("camera_missing_fy", lambda t, m, f, h: m[f["camera"]].pop("fy"), "{camera}.fy"),
    ("camera_negative_focal", lambda t, m, f, h: m[f["camera"]].update(fx=-10.0), "{camera}.fx"),
    ("camera_near_beyond_far", lambda t, m, f, h: m[f["camera"]].update(near=50.0, far=10.0), "{camera}"),
    (
        "camera_not_rigid",
        lambda t, m, f, h: m[f["camera"]].update(
            world_to_camera=[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
        ),
        "{camera}",
    ),
    (
        "camera_matrix_3x3",
        lambda t, m, f, h: m[f["camera"]].update(world_to_camera=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
        "{camera}.world_to_camera",
    ),
    ("crop_box_of_three", lambda t, m, f, h: m.update(crop_box=[0, 0, 10]), "crop_box"),
    ("crop_box_empty", lambda t, m, f, h: m.update(crop_box=[50, 0, 10, 40]), "crop_box"),
    ("crop_box_text", lambda t, m, f, h: m.update(crop_box=["0", "0", "10", "10"]), "crop_box"),
    ("crop_box_infinite", lambda t, m, f, h: m.update(crop_box=[0, 0, math.inf, 10]), "crop_box"),
    ("no_crop_box", lambda t, m, f, h: m.pop("crop_box"), "crop_box"),
]

#: Corruptions only a portrait avatar's file can have.
PORTRAIT_CORRUPTIONS = [
    ("num_mouth_too_big", lambda t, m, f, h: m.update(num_mouth=len(t["binding.triangle"]) + 1), "num_mouth"),
    ("num_mouth_negative", lambda t, m, f, h: m.update(num_mouth=-3), "num_mouth"),
    ("num_mouth_text", lambda t, m, f, h: m.update(num_mouth="all"), "num_mouth"),
    ("lip_gap_text", lambda t, m, f, h: m.update(lip_gap_cm=None), "lip_gap_cm"),
    ("short_rigid_quats", lambda t, m, f, h: t.update(rigid_quats=t["rigid_quats"][:-2]), "rigid_quats"),
    ("rigid_weight_above_one", lambda t, m, f, h: _set(t, "rigid_weights", 0, 1.5), "rigid_weights"),
    ("rigid_quat_zero", lambda t, m, f, h: _set(t, "rigid_quats", 0, 0.0), "rigid_quats"),
    (
        "background_of_another_size",
        lambda t, m, f, h: t.update(background=torch.zeros(PORTRAIT_SIZE + 1, PORTRAIT_SIZE, 3)),
        "background",
    ),
    (
        "background_uint8",
        lambda t, m, f, h: t.update(background=(t["background"] * 255).to(torch.uint8)),
        "background",
    ),
    (
        "moving_mask_of_rank_3",
        lambda t, m, f, h: t.update(moving_mask=t["moving_mask"][..., None]),
        "moving_mask",
    ),
    (
        "camera_larger_than_the_background",
        lambda t, m, f, h: m["camera"].update(width=PORTRAIT_SIZE * 2),
        "background",
    ),
    (
        "rest_expression_too_short",
        lambda t, m, f, h: t.update(rest_expression=torch.zeros(1, 52)),
        "rest_expression",
    ),
    ("missing_background", lambda t, m, f, h: t.pop("background"), "background"),
]

CASES = [
    pytest.param(kind, corrupt, word, id=f"{kind}-{name}")
    for kind in KINDS
    for name, corrupt, word in CORRUPTIONS + (PORTRAIT_CORRUPTIONS if kind == "portrait" else [])
]


@pytest.mark.parametrize("kind, corrupt, word", CASES)
def test_a_damaged_file_is_refused_with_one_line_naming_the_field(
    states, head, tmp_path, kind, corrupt, word
):
    cls, names = KINDS[kind]
    tensors, meta = _copy(states, kind)
    raw = corrupt(tensors, meta, names, head)
    if word == "metadata":  # the corruption replaced the metadata's text itself
        meta = raw
    path = _write(tmp_path / "avatar.safetensors", tensors, meta)
    for wanted in (None, cls):
        message = _refused(path, head, kind=wanted)
        assert word.format(**names) in message, message
        assert "cannot read" not in message  # the file itself is well-formed: the avatar check said no


@pytest.mark.parametrize("kind", KINDS)
def test_an_intact_file_loads_and_other_float_and_index_types_are_converted(states, head, tmp_path, kind):
    cls, _ = KINDS[kind]
    tensors, meta = _copy(states, kind)
    assert isinstance(load_avatar(_write(tmp_path / "a.safetensors", tensors, meta), head), cls)
    # A writer that stored float64 and int32 (numpy's defaults, say) still gives the same avatar.
    wide = {k: v.double() if v.is_floating_point() else v.to(torch.int32) for k, v in tensors.items()}
    again = load_avatar(_write(tmp_path / "b.safetensors", wide, meta), head)
    assert again.binding.triangle.dtype == torch.int64
    torch.testing.assert_close(again.binding.triangle, tensors["binding.triangle"], rtol=0, atol=0)
    for name in ("barycentric", "scale", "rotation"):
        got = getattr(again.binding, name)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, tensors[f"binding.{name}"], rtol=0, atol=0)
    # Tensors the avatar does not use are left unread.
    extra = _write(tmp_path / "c.safetensors", {**tensors, "notes": torch.zeros(3, dtype=torch.int8)}, meta)
    assert isinstance(load_avatar(extra, head), cls)


def test_the_avatar_wanted_must_be_the_kind_the_file_holds(states, head, tmp_path):
    portrait = _write(tmp_path / "p.safetensors", *_copy(states, "portrait"))
    message = _refused(portrait, head, kind=HeadAvatar)
    assert "HeadAvatar" in message and "portrait_avatar" in message


@pytest.mark.parametrize("value", ["fifty", -1, 10**6, True, None])
def test_num_identity_is_checked_when_the_file_picks_the_head_model(states, tmp_path, value):
    tensors, meta = _copy(states, "head")
    meta["num_identity"] = value
    message = _refused(_write(tmp_path / "a.safetensors", tensors, meta), None)
    assert "num_identity" in message


def test_files_that_are_not_safetensors_or_too_big_are_refused_before_reading(
    states, head, tmp_path, monkeypatch
):
    good = save_avatar(
        PortraitAvatar.from_state(*_copy(states, "portrait"), head), tmp_path / "good.safetensors"
    )
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    assert "cannot read avatar" in _refused(truncated, head)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    assert "cannot read avatar" in _refused(garbage, head)
    # A header claiming more rows than any avatar has is refused from the header alone.
    monkeypatch.setattr(avatar_io, "MAX_AVATAR_GAUSSIANS", 1000)
    message = _refused(good, head)
    assert "binding.triangle" in message and "1000" in message
    # So is a header claiming more numbers in one array than that many Gaussians' quaternions hold.
    monkeypatch.setattr(avatar_io, "MAX_AVATAR_GAUSSIANS", 100_000)
    tensors, meta = _copy(states, "head")
    tensors["identity"] = torch.zeros(1, 400_001, dtype=torch.float16)
    message = _refused(_write(tmp_path / "wide.safetensors", tensors, meta), head)
    assert "identity" in message and "400001" in message
    monkeypatch.undo()
    monkeypatch.setattr(avatar_io, "MAX_AVATAR_FILE_BYTES", len(data) - 1)
    assert "GB" in _refused(good, head)


# ------------------------------------------------------------------------------------------------
# Users of avatar files
def test_talk_rebuilds_a_damaged_cache_entry(states, head, photo, tmp_path, monkeypatch):
    cfg = talk.TalkConfig(size=PORTRAIT_SIZE, cache_dir=str(tmp_path))
    cache = talk._cache_path(photo.tobytes() + str(photo.shape).encode(), cfg)
    cache.parent.mkdir(parents=True)
    tensors, meta = _copy(states, "portrait")
    _set(tensors, "binding.triangle", 0, -(2**40))
    damaged = _write(cache, tensors, meta).read_bytes()

    _, avatar = talk.prepare_avatar(cfg, head)
    assert isinstance(avatar, PortraitAvatar) and avatar.camera.width == PORTRAIT_SIZE
    assert int(avatar.binding.triangle.min()) >= 0
    assert cache.read_bytes() != damaged  # the entry was rewritten with the rebuilt avatar
    cached = load_avatar(cache, head, kind=PortraitAvatar)
    torch.testing.assert_close(cached.binding.triangle, avatar.binding.triangle, rtol=0, atol=0)

    # The next run uses the rebuilt entry without building again.
    def no_build(*args, **kwargs):
        raise AssertionError("the avatar was built again instead of loaded from the cache")

    monkeypatch.setattr(talk, "build_portrait_avatar", no_build)
    _, again = talk.prepare_avatar(cfg, head)
    torch.testing.assert_close(again.bound_colors, avatar.bound_colors, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kind, corrupt, word",
    [
        ("head", lambda t, m: _set(t, "binding.triangle", 0, -1), "binding.triangle"),
        ("head", lambda t, m: _set(t, "colors", 0, math.nan), "colors"),
        ("head", lambda t, m: m["photo_camera"].update(width=0), "photo_camera.width"),
        ("portrait", lambda t, m: None, "kind"),
    ],
    ids=["negative-triangle", "nan-colour", "zero-width-camera", "portrait-avatar"],
)
def test_avatar3d_cli_refuses_a_damaged_avatar_with_one_line_and_writes_nothing(
    states, tmp_path, capsys, kind, corrupt, word
):
    tensors, meta = _copy(states, kind)
    corrupt(tensors, meta)
    bad = _write(tmp_path / "bad.safetensors", tensors, meta)
    out = tmp_path / "out"
    out.mkdir()
    threads = torch.get_num_threads()
    try:
        code = avatar3d.main(["--avatar", str(bad), "-o", str(out), "--turntable-seconds", "0", "--quiet"])
    finally:
        torch.set_num_threads(threads)  # main() pins torch to one thread for the rest of the process
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], err
    assert list(out.iterdir()) == []
