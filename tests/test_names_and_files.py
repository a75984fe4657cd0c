"""Issue 23: names from prompts never become paths, every file read back is checked, nothing of the user's is
overwritten; and the commands stop cleanly on SIGTERM and Ctrl-C.

The counts of what these tests try are in docs/benchmarks.md ("Reliability: what the tests try").
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import lab
from lab import cli
from lab._checks import LabError
from lab.experiments import META, RESULTS, Comparison, RunRecord, compare
from lab.paths import file_stem, inside
from lab.stats import Latency

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
QUICK = ["--model", "tiny-random", "--steps", "2", "--size", "64", "--repeats", "1", "--warmup", "0", "--quiet"]
PQUICK = ["--model", "tiny-random", "--steps", "2", "--size", "64", "--repeats", "1", "--quiet"]  # profile, diagnose
HOSTILE = ["../../escaped here", "/tmp/absolute name", "a/b c", "x" * 300, "..", "a\\b:c*?"]


def lab_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(code, err, *words):
    lines = [line for line in err.strip().splitlines() if not line.startswith("[transformers]")]
    assert code not in (0, None) and len(lines) == 1 and lines[0].startswith("error:"), (code, err)
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def random_pipe():
    return lab.load_pipeline("tiny-random", device="cpu")


# -- names and paths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", HOSTILE + ["-leading-dash", "caf\u00e9 au lait"], ids=lambda t: repr(t)[:30])
def test_a_file_stem_is_one_bounded_safe_name(text):
    stem = file_stem(text)
    assert "/" not in stem and "\\" not in stem and ".." not in stem and not stem.startswith((".", "-"))
    assert 0 < len(stem) <= 80 and Path(stem).name == stem


def test_different_unsafe_names_never_share_a_stem():
    names = ["a/b", "a b", "a:b", "A/B", "x" * 300, "x" * 301]
    assert len({file_stem(n) for n in names}) == len(names)
    assert file_stem("red-circle-blue-circle-black") == "red-circle-blue-circle-black"  # safe names unchanged


def test_inside_refuses_traversal_absolute_names_and_symlinks_out(tmp_path):
    base = tmp_path / "out"
    base.mkdir()
    (base / "link").symlink_to(tmp_path)
    assert inside(base, "images", "a.png") == base / "images" / "a.png"
    for parts in (("..", "x"), ("/etc/passwd",), ("images", "../../x"), ("link", "x")):
        with pytest.raises(LabError, match="outside"):
            inside(base, *parts)


def test_prompts_sharing_their_first_four_words_keep_their_own_names():
    cases = [lab.Case(f"a red circle on the {where}") for where in ("left", "right", "top")]
    assert len({c.name for c in cases}) == 3
    assert lab.Case("a cat").name == "a-cat" and lab.Case("a red circle on").name == "a-red-circle-on"
    assert all(len(lab.Case(p).name) <= 60 and "/" not in lab.Case(p).name for p in HOSTILE if p.strip("."))


@pytest.mark.parametrize("name", ["/tmp/absolute-case", "../../up", "a/b", "y" * 300])
def test_a_case_name_never_leaves_the_image_folder(random_pipe, name, tmp_path):
    images = tmp_path / "run" / "images"
    result = lab.benchmark(random_pipe, lab.Case("a cat", steps=1, name=name), warmup=0, repeats=1,
                           image_dir=images, progress=False)
    assert not result.failed, result.cases[0].error
    written = files_under(tmp_path)
    assert len(written) == 1 and next(iter(written)).parent == images
    assert not Path("/tmp/absolute-case.png").exists()


def test_bench_with_hostile_and_colliding_prompts_keeps_every_image_inside_out(tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    same_start = [{"prompt": f"a red circle on the {w}", "steps": 1} for w in ("left", "right", "top")]
    hostile = [{"prompt": p, "steps": 1} for p in HOSTILE if p.strip(".")]
    prompts.write_text(json.dumps({"cases": same_start + hostile}))
    out = tmp_path / "d" / "out"
    code, _, err = lab_cli(capsys, "bench", *QUICK, "--prompts", prompts, "--out", out)
    assert code == 0, err
    result = lab.BenchmarkResult.load(out / "results.json")
    assert len(result.cases) == 8 and not result.failed
    images = {Path(c.image) for c in result.cases}
    assert len(images) == 8 and all(p.parent == out / "images" and p.is_file() for p in images)
    assert files_under(tmp_path) - {prompts} == images | {out / "results.json", out / "results.md", out / ".lock"}


def test_compare_images_and_fidelity_files_stay_inside_out(tmp_path, capsys):
    out = tmp_path / "d" / "out"
    code, _, err = lab_cli(capsys, "compare", *QUICK, "--recipes", "fp32,bf16", "--prompt", "../../escaped here",
                           "--out", out)
    assert code == 0, err
    written = files_under(tmp_path)
    assert all(out in p.parents for p in written), written
    records = Comparison.load(out).records
    assert [r.status for r in records] == ["ok", "ok"] and all((out / r.image).is_file() for r in records)
    assert len(list((out / "fidelity").rglob("*.safetensors"))) == 2
    assert {r.model for r in records} == {"tiny-random"}  # rows say which model they were measured on


def test_profile_twice_with_a_traversal_prompt_deletes_nothing_of_the_user(tmp_path, capsys):
    victim = tmp_path / "victim-here"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    out = tmp_path / "a" / "b" / "out"
    for _ in range(2):  # the second run used to rmtree its (escaped) tensorboard folder: the user's
        code, _, err = lab_cli(capsys, "profile", *PQUICK, "--prompt", "../../../../victim here", "--out", out)
        assert code == 0, err
    assert (victim / "keep.txt").read_text() == "mine"
    runs = list((out / "tensorboard").iterdir())
    assert len(runs) == 1 and len(list(runs[0].glob("*.pt.trace.json"))) == 1  # one trace per run folder
    code, _, err = lab_cli(capsys, "profile", *PQUICK, "--prompt", "a/b c", "--out", tmp_path / "p2")
    assert code == 0, err  # a separator in the prompt: no FileNotFoundError, no StopIteration


# -- locks and directories that are not ours ----------------------------------------------------------------
def _finished_run(folder: Path) -> None:
    """A run directory with one finished run, written by hand (what report needs to get as far as its lock)."""
    folder.mkdir(parents=True)
    rec = RunRecord(recipe="fp32", case="a", seed=0, status="ok", latency=Latency.from_values([1.0]))
    (folder / RESULTS).write_text(json.dumps(rec.to_dict()) + "\n")


@pytest.mark.parametrize("command", ["bench", "profile", "diagnose", "report", "demo", "train"])
def test_every_command_that_writes_locks_its_directory(command, tmp_path, capsys):
    locked = tmp_path / ("m.work" if command == "train" else "out")
    argv = {"bench": ["bench", *QUICK, "--out", locked], "profile": ["profile", *PQUICK, "--out", locked],
            "diagnose": ["diagnose", *PQUICK, "--out", locked], "report": ["report", locked],
            "demo": ["demo", "--out", locked, "--notebooks", "01"],
            "train": ["train", "--smoke", "--quiet", "--out", tmp_path / "m"]}[command]
    if command == "report":
        _finished_run(locked)
    locked.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time; from lab.paths import run_lock\n"
                                "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)"),
         str(locked)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = files_under(tmp_path)
        code, _, err = lab_cli(capsys, *argv)
        one_error(code, err, str(locked), "in use by", f"pid {holder.pid}")
        assert files_under(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


def test_two_benches_into_one_out_lose_nothing(tmp_path):
    args = [sys.executable, "-m", "lab", "bench", *QUICK, "--cases", "2", "--repeats", "3", "--out", str(tmp_path)]
    first = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / ".lock").is_file() or not (tmp_path / ".lock").read_text():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    if second.returncode != 0:  # it started while the first held the lock: refused, naming it
        assert "in use by" in second.stderr and "Traceback" not in second.stderr
    assert len(lab.BenchmarkResult.load(tmp_path / "results.json").cases) == 2


def test_train_refuses_a_compare_run_and_a_file_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    _finished_run(run)
    (run / "notes.md").write_text("mine")
    before = files_under(tmp_path)
    code, _, err = lab_cli(capsys, "train", "--smoke", "--quiet", "--out", run)
    one_error(code, err, str(run), "not a model lab trained")
    plain = tmp_path / "model.txt"
    plain.write_text("mine")
    code, _, err = lab_cli(capsys, "train", "--smoke", "--quiet", "--out", plain)
    one_error(code, err, str(plain), "is a file")
    assert files_under(tmp_path) == before | {plain} and plain.read_text() == "mine"
    assert not any(p.name.endswith((".new", ".work")) for p in tmp_path.iterdir())


# -- what is read back --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    cmp = compare("tiny-random", ["fp32"], [lab.Case("a cat", steps=2)], repeats=1, warmup=0, out=out,
                  progress=False, prime=False)
    assert [r.status for r in cmp.records] == ["ok"]
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


BAD_LINES = {
    "ok without latency": {"status": "ok", "latency": None},
    "latency not an object": {"latency": 5},
    "seed a string": {"seed": "0"},
    "status unknown": {"status": "fine"},
    "another model's row": {"model": "sd15-arch"},
    "steps a list": {"steps": [2]},
}


def test_results_lines_that_break_the_schema_are_set_aside(finished, tmp_path, capsys):
    run = _copy_run(finished, tmp_path / "run")
    good = json.loads((run / RESULTS).read_text().splitlines()[0])
    with open(run / RESULTS, "a") as f:
        f.writelines(json.dumps({**good, **change}) + "\n" for change in BAD_LINES.values())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = Comparison.load(run)
    assert loaded.corrupt_lines == list(range(2, 2 + len(BAD_LINES)))
    assert len(caught) == len(BAD_LINES) and [r.seed for r in loaded.records] == [0]
    assert "sd15-arch" in str(caught[4].message)
    code, _, err = lab_cli(capsys, "report", run)  # no TypeError on the line without latency
    assert code == 0 and "Traceback" not in err
    size = (run / RESULTS).stat().st_size
    again = compare("tiny-random", ["fp32"], [lab.Case("a cat", steps=2)], repeats=1, warmup=0, out=run,
                    progress=False, prime=False)
    assert (run / RESULTS).stat().st_size == size  # nothing measured twice: the real row counts as done
    assert len(again.records) == 1


@pytest.mark.parametrize("meta", [{"identity": 5}, {"recipes": 5}, {"recipes": [1]}, {"model": ["x"]}, [1]],
                         ids=repr)
def test_comparison_json_with_wrong_types_refuses_the_resume_in_one_line(finished, meta, tmp_path, capsys):
    run = _copy_run(finished, tmp_path / "run")
    (run / META).write_text(json.dumps(meta))
    code, _, err = lab_cli(capsys, "compare", *QUICK, "--recipes", "fp32", "--prompt", "a cat", "--out", run)
    one_error(code, err, "settings cannot be checked")


def test_a_fifo_or_device_is_refused_never_read(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / RESULTS)
    with pytest.raises(LabError, match="not a regular file"):
        Comparison.load(run)
    code, _, err = lab_cli(capsys, "compare", *QUICK, "--recipes", "fp32", "--cases", "1", "--out", run)
    one_error(code, err, RESULTS, "not a regular file")
    os.mkfifo(tmp_path / "profile.json")
    with pytest.raises(LabError, match="not a regular file"):
        lab.ProfileResult.load(tmp_path / "profile.json")
    with pytest.raises(LabError, match="not a regular file"):
        lab.load_prompts("/dev/zero")


def test_records_read_back_are_type_checked():
    with pytest.raises(TypeError, match="Case.steps"):
        lab.Case.from_dict({"prompt": "a cat", "steps": "2"})
    with pytest.raises(TypeError, match="seed"):
        RunRecord.from_dict({"recipe": "fp32", "case": "a", "seed": True, "status": "error"})
    with pytest.raises(TypeError, match="expected a JSON object"):
        RunRecord.from_dict([1, 2])
    case = lab.Case.from_dict({"prompt": "a cat", "guidance": 7})  # an int where a float is expected: fine
    assert case.guidance == 7.0 and isinstance(case.guidance, float)


def test_a_non_utf8_byte_in_argv_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable.encode(), b"-m", b"lab", b"bench", b"--prompt", b"caf\xe9",
                           b"--out", str(out).encode()], cwd=ROOT, env=ENV, capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    one_error(proc.returncode, err, "0xe9", "not UTF-8")
    assert not out.exists()


def test_a_size_the_machine_cannot_hold_is_refused_with_the_memory_needed(tmp_path, capsys, monkeypatch):
    from lab import memory

    small = memory.estimate_image_bytes("tiny-random", 512, 512)
    assert memory.estimate_image_bytes("tiny-random", 1024, 1024) == 4 * small  # activations grow with the area
    free = type("M", (), {"available": 2 * small})
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: free)
    code, _, err = lab_cli(capsys, "bench", *QUICK, "--size", "1024", "--out", tmp_path / "out")
    one_error(code, err, "1024x1024", "GiB", "--size")
    assert not (tmp_path / "out").exists()
    lines = []
    memory.check_fits("tiny-random", [(512, 512)], echo=lines.append)  # fits, but half of what is free
    assert len(lines) == 1 and "progress" in lines[0]


# -- signals ------------------------------------------------------------------------------------------------
def _wait_for(proc, condition, what, limit=300):
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what} never came: {proc.communicate()}")
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_bench_stopped_after_a_case_records_what_finished(sig, code, word, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lab", "bench", *QUICK, "--cases", "5", "--repeats", "3",
                             "--out", str(out)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(proc, lambda: any((out / "images").glob("*.png")), "the first image")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err, err
    result = lab.BenchmarkResult.load(out / "results.json")
    assert result.interrupted and 1 <= len(result.cases) < 5
    assert f"{word}: {len(result.cases)} of 5 cases finished" in err.strip().splitlines()[-1]
    assert {Path(c.image).name for c in result.cases} == {p.name for p in (out / "images").iterdir()}


def test_bench_terminated_before_any_case_says_so_and_leaves_no_empty_out(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lab", "bench", *QUICK[:-1], "--repeats", "200", "--out",
                             str(out)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the progress bar appears once the model is loaded and the first case started
    _wait_for(proc, lambda: (out / "images").is_dir(), "the image folder")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert "nothing was recorded" in err.strip().splitlines()[-1] and not out.exists()


def test_demo_stops_on_sigterm_saving_what_ran(tmp_path):
    import nbformat

    src = tmp_path / "src"
    src.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('before', flush=True)"),
                nbformat.v4.new_code_cell("import time; time.sleep(300)")]
    nbformat.write(nb, src / "01_slow.ipynb")
    script = ("import sys; from pathlib import Path; from lab import cli, notebooks\n"
              f"notebooks.NOTEBOOKS_DIR = Path({str(src)!r}); notebooks.prepare_demo = lambda echo=print: {{}}\n"
              f"sys.exit(cli.main(['demo', '--model', 'tiny-random', '--out', {str(tmp_path / 'out')!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    executed = tmp_path / "out" / "01_slow"
    _wait_for(proc, lambda: executed.is_dir(), "the notebook's folder")
    time.sleep(8)  # the kernel is up and in the sleeping cell
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # a hang guard: it stops in about two seconds
    assert proc.returncode in (130, 143) and "Traceback" not in err, err
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert [r["error"] for r in runs] == ["interrupted"]
    saved = nbformat.read(executed / "01_slow.ipynb", as_version=4)
    assert saved.cells[0].outputs[0]["text"] == "before\n"


# -- LoRA, cache, version, permissions ----------------------------------------------------------------------
def test_a_lora_of_nan_weights_is_refused_and_make_lora_works_beside_a_loaded_one(random_pipe, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from lab import lora

    good = lora.make_lora(random_pipe, tmp_path / "good.safetensors")
    state = load_file(str(good))
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(LabError, match="NaN or infinite"):
        lora.load_lora(random_pipe, tmp_path / "nan.safetensors")
    assert getattr(random_pipe.unet, "peft_config", None) is None  # refused before anything was loaded
    lora.load_lora(random_pipe, good)
    try:
        second = lora.make_lora(random_pipe, tmp_path / "second.safetensors", seed=1)  # used to RuntimeError
        assert set(load_file(str(second))) == set(state)
    finally:
        random_pipe.delete_adapters(["lab"])


class _Pipe:
    """A stand-in pipeline for the cache: records its calls, returns a plain image."""

    lab_model = "stand-in"

    def __init__(self):
        from diffusers import PNDMScheduler

        self.scheduler, self.calls = PNDMScheduler(), 0
        self.unet = type("U", (), {"config": type("C", (), {"sample_size": 8})()})()
        self.vae_scale_factor = 8

    def __call__(self, **kwargs):
        from PIL import Image

        self.calls += 1
        return type("Out", (), {"images": [Image.new("RGB", (8, 8), (9, 9, 9))]})()


def test_a_read_only_cache_serves_misses_and_generate_still_returns_the_image(tmp_path, monkeypatch):
    from lab import cache as cache_mod

    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / "junk.png").write_bytes(b"\x89PNG broken")

    def not_writable(path):
        raise LabError(f"output directory {str(path)!r} is not writable (Read-only file system)")

    monkeypatch.setattr(cache_mod, "writable_dir", not_writable)
    with pytest.warns(UserWarning, match="not writable"):
        cache = cache_mod.ResultCache(directory)
    pipe = _Pipe()
    with pytest.warns(UserWarning, match="image not cached"):
        image, hit = cache.generate(pipe, lab.Case("a cat", steps=1))
    assert not hit and image.getpixel((0, 0)) == (9, 9, 9) and pipe.calls == 1
    assert sorted(p.name for p in directory.iterdir()) == ["junk.png"]  # nothing written, nothing removed


def test_generate_on_a_cache_remounted_read_only_warns_and_returns_the_image(tmp_path, monkeypatch):
    import errno

    from lab import cache as cache_mod

    cache = cache_mod.ResultCache(tmp_path / "cache")

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(cache_mod, "atomic_write_bytes", read_only)
    with pytest.warns(UserWarning, match="Read-only file system"):
        image, hit = cache.generate(_Pipe(), lab.Case("a cat", steps=1))
    assert not hit and image.size == (8, 8)


def test_python_m_lab_version():
    proc = subprocess.run([sys.executable, "-m", "lab", "--version"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"diffusion-lab {lab.__version__}"


def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path):
    from lab.results import FILE_MODE, atomic_write_text

    mask = os.umask(0)
    os.umask(mask)
    path = atomic_write_text(tmp_path / "comparison.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE == 0o666 & ~mask
    assert FILE_MODE & stat.S_IROTH or mask & stat.S_IROTH  # others can read unless the user's umask says not
