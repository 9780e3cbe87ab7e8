"""Batch rendering: manifests checked up front, one bad item never stops the batch, resume, Ray = local."""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from models.latent import Motion
from pipelines.batch import (
    AVATAR3D_MISSING,
    RESULTS_NAME,
    BatchItem,
    ItemResult,
    ManifestError,
    PortraitScheduler,
    ResultsLog,
    apply_default_seed,
    default_workers,
    load_manifest,
    main,
    run_item,
    run_local,
)
from pipelines.motion_io import save_motion

# Not imported from pipelines.talk: worker processes of the pool test import this module, and stay light.
DEFAULT_PORTRAIT = Path(__file__).resolve().parents[1] / "assets" / "defaults" / "portrait.jpg"

# Tiny items: a half-second idle motion at 128², the square crop (no paste-back into the full photo).
TINY = {"size": 128, "crop": True}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _results(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / RESULTS_NAME).read_text().splitlines()]
    return {r["output"]: r for r in rows}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A manifest of three good items (one portrait, three motions) and one whose portrait is missing,
    and an avatar cache every run in this module shares, so the portrait is fitted once."""
    folder = tmp_path_factory.mktemp("batch")
    for seed in range(3):
        save_motion(Motion.idle(13, 25.0, seed=seed), folder / f"idle{seed}.npz")
    rows = [
        {"portrait": str(DEFAULT_PORTRAIT), "motion": "idle0.npz", "output": "a.mp4", **TINY},
        {"portrait": str(DEFAULT_PORTRAIT), "motion": "idle1.npz", "output": "b.mp4", "seed": 3, **TINY},
        {"portrait": "nobody.jpg", "motion": "idle1.npz", "output": "broken.mp4", **TINY},
        {"portrait": str(DEFAULT_PORTRAIT), "motion": "idle2.npz", "output": "clips/c.mp4", **TINY},
    ]
    manifest = _write_jsonl(folder / "manifest.jsonl", rows)
    return {"folder": folder, "manifest": manifest, "cache": folder / "avatars"}


@pytest.fixture(scope="module")
def local_run(shared):
    """The manifest rendered by the local engine with two workers."""
    out = shared["folder"] / "out-local"
    code = main(
        [
            str(shared["manifest"]),
            "-o",
            str(out),
            "--workers",
            "2",
            "--cache-dir",
            str(shared["cache"]),
            "--quiet",
        ]
    )
    return {"out": out, "code": code, "rows": _results(out)}


def test_three_good_items_and_a_missing_portrait_give_three_clips_one_error_and_exit_1(shared, local_run):
    out, rows = local_run["out"], local_run["rows"]
    assert local_run["code"] == 1
    assert list(rows) == ["a.mp4", "b.mp4", "broken.mp4", "clips/c.mp4"]  # manifest order
    for name in ("a.mp4", "b.mp4", "clips/c.mp4"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["outputs"] == [name]
        assert (out / name).stat().st_size > 1000
        assert rows[name]["seconds"] > 0
    broken = rows["broken.mp4"]
    assert broken["status"] == "error" and broken["outputs"] == []
    assert broken["error"] == f"portrait not found: {(shared['folder'] / 'nobody.jpg').resolve()}"
    assert not (out / "broken.mp4").exists()
    assert not [p for p in out.rglob(".*.mp4")], "a temporary file was left behind"
    # One avatar was built for the one portrait, and the other two items found it in the cache.
    assert len(list((shared["cache"] / "avatars").glob("*.safetensors"))) == 1


def test_running_again_only_retries_the_failed_item(shared, local_run, capsys):
    out = local_run["out"]
    before = {n: (out / n).stat().st_mtime_ns for n in ("a.mp4", "b.mp4", "clips/c.mp4")}
    first = local_run["rows"]
    code = main(
        [
            str(shared["manifest"]),
            "-o",
            str(out),
            "--workers",
            "2",
            "--cache-dir",
            str(shared["cache"]),
            "--quiet",
        ]
    )
    assert code == 1
    rows = _results(out)
    for name, mtime in before.items():
        assert rows[name]["status"] == "skipped"
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was rendered again"
        assert rows[name]["started"] == first[name]["started"]  # the row of the run that made it
    assert rows["broken.mp4"]["status"] == "error"
    assert rows["broken.mp4"]["started"] != first["broken.mp4"]["started"]  # tried again
    assert "0 ok, 1 failed, 3 skipped" in capsys.readouterr().err


def test_ray_engine_writes_the_same_results_as_the_local_engine(shared, local_run):
    pytest.importorskip("ray")
    out = shared["folder"] / "out-ray"
    code = main(
        [str(shared["manifest"]), "-o", str(out), "--engine", "ray", "--workers", "2",
         "--cache-dir", str(shared["cache"]), "--quiet"]
    )  # fmt: skip
    assert code == local_run["code"] == 1
    rows = _results(out)
    same = ("output", "line", "pipeline", "status", "outputs", "error", "fingerprint")
    assert [{k: r.get(k) for k in same} for r in rows.values()] == [
        {k: r.get(k) for k in same} for r in local_run["rows"].values()
    ]
    for name in ("a.mp4", "b.mp4", "clips/c.mp4"):
        assert (out / name).stat().st_size > 1000


def test_bad_manifest_lists_every_problem_with_its_line_and_exits_2(tmp_path, capsys):
    manifest = _write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"motion": "m.npz", "output": "ok.mp4", "size": 128},
            {"motion": "m.npz", "output": "typo.mp4", "sise": 128},
            {"motion": "m.npz", "output": "type.mp4", "size": "big", "still": "yes"},
            {"motion": "m.npz", "size": 128},
            {"motion": "m.npz", "output": "ok.mp4"},
            {"motion": "m.npz", "output": "../escape.mp4"},
            {"motion": "m.npz", "output": "clip.avi"},
            "{not json",
            {"pipeline": "cartoon", "output": "x.mp4"},
            "[1, 2]",
        ],
    )
    code = main([str(manifest), "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    expected = [
        "line 2: unknown key 'sise' (did you mean 'size'?)",
        "line 3: size: expected a whole number",
        "line 3: still: expected true or false",
        "line 4: no output name",
        "line 5: output 'ok.mp4' is also the output of line 1",
        "line 6: output '../escape.mp4' must be a name inside the output folder",
        "line 7: output 'clip.avi' must end in .mp4",
        "line 8: not valid JSON",
        "line 9: pipeline must be one of talk, avatar3d; got 'cartoon'",
        "line 10: expected a JSON object, got list",
    ]
    for line in expected:
        assert line in err, line
    assert "line 1:" not in err
    assert not (tmp_path / "out").exists(), "nothing may be written for a bad manifest"


def test_csv_manifest_reads_like_the_same_jsonl(tmp_path):
    (tmp_path / "m.npz").write_bytes(b"x")
    csv_path = tmp_path / "items.csv"
    csv_path.write_text(
        "pipeline,portrait,motion,output,size,crop,expression_scale,seed\n"
        "talk,face.jpg,m.npz,a.mp4,128,true,0.5,\n"
        ",,m.npz,b.mp4,,no,,7\n"
    )
    jsonl = _write_jsonl(
        tmp_path / "items.jsonl",
        [
            {"pipeline": "talk", "portrait": "face.jpg", "motion": "m.npz", "output": "a.mp4", "size": 128,
             "crop": True, "expression_scale": 0.5},
            {"motion": "m.npz", "output": "b.mp4", "crop": False, "seed": 7},
        ],
    )  # fmt: skip
    from_csv, from_jsonl = load_manifest(csv_path), load_manifest(jsonl)
    assert [i.fingerprint for i in from_csv] == [i.fingerprint for i in from_jsonl]
    assert from_csv[0].options == {"size": 128, "crop": True, "expression_scale": 0.5}
    assert from_csv[0].inputs["portrait"] == str(tmp_path / "face.jpg")  # relative to the manifest
    assert from_csv[1].options == {"crop": False, "seed": 7}


def test_seed_flag_fills_in_items_without_their_own_seed(tmp_path):
    rows = [{"output": "a.mp4"}, {"output": "b.mp4", "seed": 5}]
    items = load_manifest(_write_jsonl(tmp_path / "m.jsonl", rows))
    before = [i.fingerprint for i in items]
    apply_default_seed(items, 9)
    assert [i.options.get("seed") for i in items] == [9, 5]
    assert items[0].fingerprint != before[0] and items[1].fingerprint == before[1]  # a new seed re-renders


def test_resume_reuses_only_unchanged_items_whose_outputs_exist(tmp_path):
    item = BatchItem(output="a.mp4", inputs={"motion": "/m.npz"}, options={"seed": 1})
    done = ItemResult("a.mp4", 1, "talk", status="ok", outputs=["a.mp4"], fingerprint=item.fingerprint)
    log = ResultsLog(tmp_path / RESULTS_NAME, [item], {"a.mp4": done})
    assert log.done_before(item, tmp_path) is None  # the output is gone
    (tmp_path / "a.mp4").write_bytes(b"mp4")
    assert log.done_before(item, tmp_path) is done
    changed = BatchItem(output="a.mp4", inputs={"motion": "/m.npz"}, options={"seed": 2})
    assert log.done_before(changed, tmp_path) is None  # same output name, different item
    log.previous["a.mp4"] = ItemResult("a.mp4", 1, "talk", status="error", fingerprint=item.fingerprint)
    assert log.done_before(item, tmp_path) is None


def test_scheduler_builds_each_portrait_once_before_its_other_items():
    items = [
        BatchItem(output=f"{who}{i}.mp4", inputs={"portrait": f"/{who}.jpg"}, options={"size": 128})
        for who in ("ann", "bob")
        for i in range(3)
    ]
    items.append(BatchItem(output="ann_big.mp4", inputs={"portrait": "/ann.jpg"}, options={"size": 512}))
    scheduler = PortraitScheduler(items)
    first = [scheduler.take() for _ in range(4)]
    # One item per distinct avatar (ann at 128, bob at 128, ann at 512), then nothing until one is built.
    assert [i.output for i in first[:3]] == ["ann0.mp4", "bob0.mp4", "ann_big.mp4"] and first[3] is None
    scheduler.finished(first[1])
    assert [scheduler.take().output for _ in range(2)] == ["bob1.mp4", "bob2.mp4"]
    assert scheduler.take() is None
    scheduler.finished(first[0])
    assert scheduler.take().output == "ann1.mp4"


def _exit_on_crash_item(item: BatchItem, out_dir: str) -> ItemResult:
    """A stand-in pipeline for the pool test: crash*.mp4 kills its worker process, hang*.mp4 never ends."""
    if item.output.startswith("crash"):
        os._exit(3)
    if item.output.startswith("hang"):
        time.sleep(3600)
    return ItemResult(
        item.output, item.line, item.pipeline, status="ok", outputs=[item.output], worker=str(os.getpid())
    )


def test_a_worker_process_that_dies_or_hangs_fails_only_its_item(tmp_path):
    names = ["a", "crash", "b", "hang", "c", "d"]
    items = [BatchItem(output=f"{name}.mp4", line=i + 1) for i, name in enumerate(names)]
    for item in items:
        item.inputs = {"portrait": f"/{item.output}.jpg"}  # distinct portraits: nothing waits for a build
    got: list[ItemResult] = []
    run_local(
        items, (str(tmp_path),), workers=2, threads=1, on_result=got.extend, runner=_exit_on_crash_item,
        item_timeout=2.0,
    )  # fmt: skip
    by_name = {r.output: r for r in got}
    assert sorted(by_name) == sorted(f"{n}.mp4" for n in names)
    assert by_name["crash.mp4"].status == "error"
    assert by_name["crash.mp4"].error.startswith(
        "the worker process died while making this item (exit code 3)"
    )
    assert by_name["hang.mp4"].status == "error"
    assert by_name["hang.mp4"].error.startswith("stopped after 2 s (--item-timeout)")
    assert all(by_name[n].status == "ok" for n in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"))


def test_avatar3d_items_fail_with_a_clear_message_when_the_pipeline_is_not_in_the_build(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "pipelines.avatar3d", None)  # as in a build without it
    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"pipeline": "avatar3d", "output": "head3d", "size": 64}])
    (item,) = load_manifest(manifest)
    result = run_item(item, str(tmp_path))
    assert result.status == "error" and result.error == AVATAR3D_MISSING
    assert result.detail is None  # an expected condition, not a crash


def test_avatar3d_items_are_checked_against_its_config_when_the_pipeline_is_present(tmp_path):
    pytest.importorskip("pipelines.avatar3d")
    row = {"pipeline": "avatar3d", "portrait": "face.jpg", "output": "head3d", "background": [0, 0.5, 1]}
    (item,) = load_manifest(_write_jsonl(tmp_path / "good.jsonl", [row]))
    assert item.options == {"background": (0.0, 0.5, 1.0)}
    bad = [{**row, "num_gaussians": "many"}, {**row, "output": "head.mp4"}, {**row, "background": [1, 1]}]
    with pytest.raises(ManifestError) as caught:
        load_manifest(_write_jsonl(tmp_path / "bad.jsonl", bad))
    assert [p.split(":")[0] for p in caught.value.problems] == ["line 1", "line 2", "line 3"]
    assert "num_gaussians: expected a whole number" in caught.value.problems[0]
    assert "names a folder" in caught.value.problems[1]
    assert "expected a list of 3 values" in caught.value.problems[2]


def test_ray_engine_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"output": "a.mp4"}])
    assert main([str(manifest), "-o", str(tmp_path / "out"), "--engine", "ray", "--quiet"]) == 2
    assert "pip install 'headsplat[dist]'" in capsys.readouterr().err


def test_default_workers_follow_cores_and_memory():
    gib = 1 << 30
    assert default_workers(cpus=16, memory_bytes=8 * gib) == 4  # memory-bound
    assert default_workers(cpus=2, memory_bytes=64 * gib) == 2  # core-bound
    assert default_workers(cpus=8, memory_bytes=gib) == 1
    assert default_workers(cpus=8, memory_bytes=0) == 8  # memory unknown: cores decide


@pytest.mark.slow
def test_avatar3d_items_run_through_the_batch_when_the_pipeline_is_present(tmp_path):
    pytest.importorskip("pipelines.avatar3d")
    shutil.copy(DEFAULT_PORTRAIT, tmp_path / "face.jpg")
    row = {"pipeline": "avatar3d", "portrait": "face.jpg", "output": "head3d", "num_gaussians": 5000,
           "size": 64, "turntable_seconds": 0.2}  # fmt: skip
    manifest = _write_jsonl(tmp_path / "m.jsonl", [row])
    assert main([str(manifest), "-o", str(tmp_path / "out"), "--workers", "1", "--quiet"]) == 0
    rows = _results(tmp_path / "out")
    assert rows["head3d"]["status"] == "ok"
    assert "head3d/head.ply" in rows["head3d"]["outputs"]
