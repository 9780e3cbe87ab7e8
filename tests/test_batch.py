"""Batch rendering: manifests checked up front, one bad item never stops the batch, resume, Ray = local."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from models.latent import Motion
from pipelines.batch import (
    PIPELINES,
    RESULTS_NAME,
    BatchConfig,
    BatchItem,
    ItemResult,
    ManifestError,
    PortraitScheduler,
    ResultsLog,
    apply_default_seed,
    build_parser,
    default_workers,
    load_manifest,
    main,
    run_item,
    run_local,
)
from pipelines.config_cli import config_from_args
from pipelines.files import atomic_output
from pipelines.motion_io import save_motion

REPO = Path(__file__).resolve().parents[1]

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


def _render_shared(shared: dict, out: Path, *flags: str) -> int:
    """The shared manifest rendered into `out` by two workers with the shared avatar cache; the exit code."""
    cache = str(shared["cache"])
    return main(
        [str(shared["manifest"]), "-o", str(out), "--workers", "2", "--cache-dir", cache, "--quiet", *flags]
    )


@pytest.fixture(scope="module")
def local_run(shared):
    """The manifest rendered by the local engine with two workers."""
    out = shared["folder"] / "out-local"
    code = _render_shared(shared, out)
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
    code = _render_shared(shared, out)
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
    code = _render_shared(shared, out, "--engine", "ray")
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
        item_timeout=2.0, warm_up=None,
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
    # Every row says how long it took, the stopped one too (from when its worker began it).
    assert 2.0 <= by_name["hang.mp4"].seconds < 30
    assert all("seconds" in r.to_json() for r in got)


def _running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _gone(pid: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while _running(pid) and time.monotonic() < end:
        time.sleep(0.05)
    return not _running(pid)


def _half_make_and_hang(item: BatchItem, out_dir: str) -> ItemResult:
    """A stand-in item that is stopped mid-way: a half-written output, a temporary folder with a file in
    it and a helper process (as ffmpeg would be), all noted in ../made.json, then it never ends."""
    out = Path(out_dir)
    with atomic_output(out / item.output) as partial, tempfile.TemporaryDirectory(prefix="headsplat-") as tmp:
        partial.write_bytes(b"half a clip")
        (Path(tmp) / "speech.wav").write_bytes(b"RIFF")
        helper = subprocess.Popen(["sleep", "3600"])
        made = {"partial": str(partial), "tmp": tmp, "helper": helper.pid, "worker": os.getpid()}
        (out.parent / "made.json").write_text(json.dumps(made))
        time.sleep(3600)
    raise AssertionError("not reached")


def test_a_stopped_item_leaves_no_temporary_files_folders_or_processes(tmp_path):
    out = tmp_path / "out"
    (out / "clips").mkdir(parents=True)
    item = BatchItem(output="clips/slow.mp4", line=1)
    got: list[ItemResult] = []
    run_local(
        [item], (str(out),), workers=1, threads=1, on_result=got.extend, runner=_half_make_and_hang,
        item_timeout=2.0, warm_up=None,
    )  # fmt: skip
    (result,) = got
    assert result.status == "error" and result.error.startswith("stopped after 2 s")
    made = json.loads((tmp_path / "made.json").read_text())
    # The item's temporary folder was its own, inside out/.tmp, and all of out/.tmp is gone now.
    assert Path(made["tmp"]).is_relative_to(out / ".tmp")
    assert not Path(made["tmp"]).exists() and not (out / ".tmp").exists()
    assert not Path(made["partial"]).exists()
    assert [p.name for p in out.rglob("*")] == ["clips"], "the stopped item left files behind"
    assert _gone(made["worker"]) and _gone(made["helper"]), "a process of the stopped item still runs"


def _imports_its_pipeline(item: BatchItem, out_dir: str) -> ItemResult:
    """A stand-in item that imports its pipeline first, as run_item does (torch: a second or more)."""
    import importlib

    importlib.import_module(PIPELINES[item.pipeline].module)
    return ItemResult(item.output, item.line, item.pipeline, status="ok", outputs=[item.output], seconds=0.01)


def test_the_item_timeout_does_not_count_the_workers_start_up(tmp_path):
    # A fresh worker imports torch and the pipeline (well over the one second allowed here) before it
    # begins the item; only the item itself is timed.
    got: list[ItemResult] = []
    run_local(
        [BatchItem(output="a.mp4", line=1)], (str(tmp_path),), workers=1, threads=1, on_result=got.extend,
        runner=_imports_its_pipeline, item_timeout=1.0,
    )  # fmt: skip
    assert [(r.status, r.error) for r in got] == [("ok", None)]


def _run_script(tmp_path: Path, body: str) -> Path:
    """A script that runs `body` (after the repository is importable), written into tmp_path."""
    script = tmp_path / "script.py"
    header = f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
    script.write_text(header + textwrap.dedent(body))
    return script


def test_no_leaked_semaphore_warning_after_an_item_is_stopped(tmp_path):
    # tqdm's default lock holds a multiprocessing semaphore; a worker killed with one used to make
    # Python's resource tracker warn about a leaked semaphore when the batch exited.
    script = _run_script(
        tmp_path,
        """
        import time
        from pipelines.batch import BatchItem, run_local

        def bar_and_hang(item, out_dir):
            from tqdm import tqdm

            tqdm(total=1, disable=True)
            time.sleep(3600)

        if __name__ == "__main__":
            got = []
            run_local([BatchItem(output="a.mp4")], (sys.argv[1],), 1, 1, got.extend, runner=bar_and_hang,
                      item_timeout=0.5, warm_up=None)
            assert got[0].error.startswith("stopped after"), got
        """,
    )
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_stop_the_batch_and_leave_nothing_half_made(tmp_path, signum, code):
    script = _run_script(
        tmp_path,
        """
        import json, os, signal, tempfile, time
        from pathlib import Path

        import pipelines.batch as batch
        import pipelines.batch.run as batch_run
        from pipelines.files import atomic_output

        def stand_in(item, out_dir, *rest):
            out = Path(out_dir)
            if item.output == "a.mp4":
                (out / "a.mp4").write_bytes(b"a clip")
                return batch.ItemResult("a.mp4", item.line, item.pipeline, status="ok", outputs=["a.mp4"],
                                        seconds=0.01, fingerprint=item.fingerprint)
            with atomic_output(out / item.output) as partial, tempfile.TemporaryDirectory() as tmp:
                partial.write_bytes(b"half a clip")
                made = {"worker": os.getpid(), "tmp": tmp}
                (out.parent / "made.json").write_text(json.dumps(made))
                time.sleep(3600)

        def no_warm_up(item):
            pass

        if __name__ == "__main__":
            signal.signal(signal.SIGINT, signal.default_int_handler)  # even where it started ignored
            batch_run.run_item, batch_run.import_pipeline = stand_in, no_warm_up  # what run_batch hands workers
            sys.exit(batch.main(sys.argv[1:]))
        """,
    )
    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"output": "a.mp4"}, {"output": "hang.mp4"}])
    out = tmp_path / "out"
    args = [sys.executable, str(script), str(manifest), "-o", str(out), "--workers", "1", "--device", "cpu"]
    proc = subprocess.Popen(args + ["--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while not (tmp_path / "made.json").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < end, "the hanging item never started"
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert err.strip().endswith("interrupted; finished items are in results.jsonl, run again to do the rest")
    assert "Traceback" not in err and "leaked" not in err, err
    made = json.loads((tmp_path / "made.json").read_text())
    assert _gone(made["worker"]) and not Path(made["tmp"]).exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", RESULTS_NAME], "something half-made was left"
    rows = _results(out)
    assert rows["a.mp4"]["status"] == "ok"
    assert rows["hang.mp4"]["status"] == "pending" and rows["hang.mp4"]["seconds"] == 0


def test_a_folder_output_named_dot_writes_into_the_output_folder_itself(tmp_path, monkeypatch, capsys):
    # "." (or "./") used to crash the manifest check with an IndexError.
    monkeypatch.chdir(tmp_path)
    for name in (".", "./"):
        row = {"pipeline": "avatar3d", "portrait": "nobody.jpg", "output": name}
        manifest = _write_jsonl(tmp_path / "m.jsonl", [row])
        assert [i.output for i in load_manifest(manifest)] == ["."]
        for out in (".", "./"):
            assert main([str(manifest), "-o", out, "--quiet"]) == 1  # the missing portrait, nothing else
            rows = _results(tmp_path)
            assert rows["."]["status"] == "error" and rows["."]["error"].startswith("portrait not found")
    # A clip named "." is refused like any other name without .mp4; so is a clip the folder item writes.
    bad = [{"output": "."}, {"pipeline": "avatar3d", "output": "."}, {"output": "turntable.mp4"}]
    assert main([str(_write_jsonl(tmp_path / "bad.jsonl", bad)), "-o", ".", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "line 1: output '.' must end in .mp4" in err
    assert "line 3: output 'turntable.mp4' writes turntable.mp4, which line 2 writes too" in err


def test_an_output_that_leads_outside_the_output_folder_through_a_link_fails_its_item(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "x.mp4").write_bytes(b"precious")
    (elsewhere / ".c.abcdefgh.mp4").write_bytes(b"not the batch's")
    (out / "x.mp4").symlink_to(elsewhere / "x.mp4")
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    rows = [{"output": "x.mp4"}, {"output": "sub/c.mp4"}, {"output": "sub/deeper/d.mp4"}]
    manifest = _write_jsonl(tmp_path / "m.jsonl", rows)
    assert main([str(manifest), "-o", str(out), "--quiet"]) == 1
    results = _results(out)
    for row in rows:
        got = results[row["output"]]
        assert got["status"] == "error", got
        assert "leads outside the output folder" in got["error"] and str(elsewhere) in got["error"]
    assert (elsewhere / "x.mp4").read_bytes() == b"precious"
    assert sorted(p.name for p in elsewhere.iterdir()) == [".c.abcdefgh.mp4", "x.mp4"]  # not cleaned there
    # The same check guards the item where it runs (a worker, a Ray task), before any folder is made.
    (item,) = [i for i in load_manifest(manifest) if i.output == "sub/deeper/d.mp4"]
    result = run_item(item, str(out))
    assert result.status == "error" and "leads outside the output folder" in result.error
    assert not (elsewhere / "deeper").exists()


def test_an_output_that_would_overwrite_one_of_its_inputs_fails_and_keeps_the_input(tmp_path):
    (tmp_path / "voice.mp4").write_bytes(b"a recording")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "talk3d.mp4").write_bytes(b"a driving video")
    os.link(tmp_path / "voice.mp4", tmp_path / "same.mp4")  # the same file by another name
    rows = [
        {"audio": "voice.mp4", "output": "voice.mp4"},
        {"audio": "voice.mp4", "output": "same.mp4"},
        {"pipeline": "avatar3d", "driving": "clip/talk3d.mp4", "output": "clip"},
    ]
    manifest = _write_jsonl(tmp_path / "m.jsonl", rows)
    assert main([str(manifest), "-o", str(tmp_path), "--quiet"]) == 1
    results = _results(tmp_path)
    assert "would overwrite its audio input" in results["voice.mp4"]["error"]
    assert "would overwrite its audio input" in results["same.mp4"]["error"]
    assert "would overwrite its driving input" in results["clip"]["error"]
    assert (tmp_path / "voice.mp4").read_bytes() == b"a recording"
    assert (tmp_path / "clip" / "talk3d.mp4").read_bytes() == b"a driving video"


def test_a_new_run_removes_the_temporary_files_a_killed_run_left(tmp_path):
    out = tmp_path / "out"
    stale = [
        out / ".a.abcdefgh.mp4",
        out / "clips" / ".c.x1y2z3_4.mp4",
        out / ".results.abcdefgh.jsonl",
        out / ".tmp" / "item-abc" / "speech.wav",
        out / "head3d" / ".head.ply.abcdefgh.tmp",
        out / "head3d" / ".head.abcdefgh.ply",
        out / "head3d" / ".avatar3d-abcdefgh" / "head.ply",  # Avatar3D's staging folder
        out / ".cache" / "avatars" / f".{'0' * 24}.abcdefgh.safetensors",
    ]
    kept = [
        out / ".keep.abcdefgh.mp4",  # no item makes keep.mp4
        out / ".a.mp4.notes",
        out / "a.txt",
        out / ".cache" / "avatars" / f"{'0' * 24}.safetensors",
    ]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    rows = [
        {"portrait": "nobody.jpg", "output": "a.mp4"},
        {"portrait": "nobody.jpg", "output": "clips/c.mp4"},
        {"pipeline": "avatar3d", "portrait": "nobody.jpg", "output": "head3d"},
    ]
    assert main([str(_write_jsonl(tmp_path / "m.jsonl", rows)), "-o", str(out), "--quiet"]) == 1
    assert [p for p in stale if p.exists()] == [] and not (out / ".tmp").exists()
    assert not (out / "head3d" / ".avatar3d-abcdefgh").exists()
    assert all(p.exists() for p in kept)
    assert all("seconds" in row for row in _results(out).values())


def test_avatar3d_items_are_checked_against_its_config_when_the_pipeline_is_present(tmp_path):
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


def test_every_flag_of_the_readme_sets_its_batch_config_field():
    def parse(*flags: str) -> BatchConfig:
        return config_from_args(BatchConfig, build_parser().parse_args(["m.jsonl", *flags]))

    assert parse() == BatchConfig(
        "m.jsonl", output_dir="out", engine="local", workers=None, threads=None, device="auto",
        cache_dir=None, redo=False, ray_address=None, gpus_per_item=None, item_timeout=None, seed=None,
        progress=True,
    )  # fmt: skip
    flags = ["-o", "o", "--workers", "3", "--threads", "2", "--device", "cpu", "--cache-dir", "c",
             "--item-timeout", "1.5", "--redo", "--seed", "4", "--quiet", "--engine", "ray",
             "--ray-address", "auto", "--gpus-per-item", "0.5"]  # fmt: skip
    assert parse(*flags) == BatchConfig(
        "m.jsonl", output_dir="o", engine="ray", workers=3, threads=2, device="cpu", cache_dir="c",
        redo=True, ray_address="auto", gpus_per_item=0.5, item_timeout=1.5, seed=4, progress=False,
    )  # fmt: skip
    assert parse("--output-dir", "p").output_dir == "p"


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
