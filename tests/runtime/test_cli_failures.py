"""Every class of failure, through the real CLI in a subprocess: the README's exit code, one line on stderr
naming the problem, no traceback - and nothing changed. The bundle is a real (tiny) ONNX bundle run by ONNX
Runtime; full disks and read-only file systems are real tmpfs mounts (tests/runtime/fs.py)."""
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
PIL = pytest.importorskip("PIL.Image")

from metaedge.runtime.gallery import Gallery  # noqa: E402
from tests.runtime.bundles import make_bundle  # noqa: E402
from tests.runtime.fs import ROOT, in_small_tmpfs  # noqa: E402
from tests.runtime.test_hostile_files import png_bomb  # noqa: E402

BLOCK = ("import sys; sys.modules[{mod!r}] = None; from metaedge.cli.main import main; "
         "sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A bundle, a gallery with three classes, and every kind of bad input, made once."""
    w = tmp_path_factory.mktemp("cli")
    bundle = make_bundle(w / "bundle")
    rng = np.random.default_rng(0)
    for k in range(3):
        PIL.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(w / f"img{k}.png")
    gallery = w / "g.metaedge"
    for k in range(3):
        _cli("enroll", bundle, gallery, f"class {k}", w / f"img{k}.png", check=True)
    (w / "bad.png").write_text("not an image")
    (w / "bomb.png").write_bytes(png_bomb(8000, 8000))
    os.mkfifo(w / "fifo")
    # a gallery one class old (adapt needs two); a damaged copy; one of another bundle; one of a newer schema
    _cli("enroll", bundle, w / "one.metaedge", "only", w / "img0.png", check=True)
    shutil.copy(gallery, w / "damaged.metaedge")
    conn = sqlite3.connect(w / "damaged.metaedge")
    conn.execute("UPDATE classes SET prototype = zeroblob(length(prototype)) WHERE label = 'class 1'")
    conn.commit()
    conn.close()
    Gallery(32, "cosine", "f" * 64, path=w / "other.metaedge").add("x", np.ones((1, 32), np.float32))
    shutil.copy(gallery, w / "newer.metaedge")
    conn = sqlite3.connect(w / "newer.metaedge")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    shutil.copy(os.path.join(ROOT, "tests", "runtime", "data", "legacy_v1.metaedge"), w / "old.metaedge")
    # class packs: one whose 'class 0' differs from ours, one damaged
    with Gallery.load(gallery) as g:
        g.export_pack(w / "ours.pack")
    other = Gallery(32, "cosine", Gallery.load(gallery).fingerprint)
    other.add("class 0", np.ones((2, 32), np.float32))
    other.export_pack(w / "conflict.pack")
    data = bytearray((w / "ours.pack").read_bytes())
    data[-3] ^= 1
    (w / "damaged.pack").write_bytes(bytes(data))
    # bundles: edited manifest, deep JSON, FIFO manifest, input that disagrees with the model, modified model
    for name, edit in (("edited", "invert"), ("deep", "deep"), ("fifo-manifest", "fifo"), ("modified", "onnx")):
        copy = w / name
        shutil.copytree(bundle, copy)
        m = json.loads((copy / "manifest.json").read_text())
        if edit == "invert":
            m["spec"]["preprocess"]["invert"] = True
            (copy / "manifest.json").write_text(json.dumps(m))
        elif edit == "deep":
            (copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
        elif edit == "fifo":
            (copy / "manifest.json").unlink()
            os.mkfifo(copy / "manifest.json")
        else:
            onnx = bytearray((copy / "model.onnx").read_bytes())
            onnx[len(onnx) // 2] ^= 0xFF
            (copy / "model.onnx").write_bytes(bytes(onnx))
    make_bundle(w / "wrong-input", size=64, onnx_input_size=16)
    return {"w": w, "bundle": bundle, "gallery": gallery}


def _cli(*argv, check=False, prefix=("-m", "metaedge"), timeout=60):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("METAEDGE_DEBUG", None)
    proc = subprocess.run([sys.executable, *prefix, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _fingerprint_of(path):
    """What a command must not change: the classes and the version."""
    try:
        with Gallery.load(path) as g:
            return g.labels, g.counts().tolist(), g.version
    except Exception as exc:  # a gallery that does not load must stay byte-identical instead
        return open(path, "rb").read() if os.path.isfile(path) else type(exc).__name__


W, B, G = "{w}", "{bundle}", "{gallery}"
CASES = [
    # (id, argv, exit code, words in the message)
    ("unknown option", ["predict", B, G, f"{W}/img0.png", "--nope"], 2, "unrecognized arguments"),
    ("empty label", ["enroll", B, G, "", f"{W}/img0.png"], 2, "non-empty"),
    ("missing image", ["enroll", B, G, "x", f"{W}/nope.png"], 2, "no such file"),
    ("undecodable image", ["enroll", B, G, "x", f"{W}/bad.png"], 2, "bad.png"),
    ("image is a FIFO", ["predict", B, G, f"{W}/fifo"], 2, "FIFO"),
    ("pixel bomb", ["enroll", B, G, "x", f"{W}/bomb.png"], 2, "64,000,000 pixels, more than the limit"),
    ("unknown class", ["classes", "forget", G, "nope"], 2, "not enrolled"),
    ("rename onto a class", ["classes", "rename", G, "class 0", "class 1"], 2, "already exists"),
    ("pack conflict", ["classes", "import", G, f"{W}/conflict.pack"], 2, "--on-conflict"),
    ("adapt one class", ["adapt", B, f"{W}/one.metaedge"], 2, "at least 2"),
    ("history --limit 0", ["classes", "history", G, "--limit", "0"], 2, "--limit"),
    ("backend unavailable", ["predict", B, G, f"{W}/img0.png", "--backend", "tensorrt"], 3, "tensorrt"),
    ("onnxruntime missing", ["predict", B, G, f"{W}/img0.png"], 3, "onnxruntime"),
    ("no gallery", ["predict", B, f"{W}/missing.metaedge", f"{W}/img0.png"], 4, "no such gallery"),
    ("not a bundle", ["enroll", f"{W}/no-bundle", G, "x", f"{W}/img0.png"], 4, "not a bundle directory"),
    ("damaged gallery", ["predict", B, f"{W}/damaged.metaedge", f"{W}/img0.png"], 4, "fails its checksum"),
    ("gallery of another bundle", ["enroll", B, f"{W}/other.metaedge", "x", f"{W}/img0.png"], 4, "another bundle"),
    ("newer gallery schema", ["classes", "list", f"{W}/newer.metaedge"], 4, "upgrade metaedge"),
    ("gallery is a FIFO", ["classes", "list", f"{W}/fifo"], 4, "FIFO"),
    ("old-format gallery changed", ["classes", "forget", f"{W}/old.metaedge", "late"], 4, "classes migrate"),
    ("migrate against another bundle", ["classes", "migrate", f"{W}/old.metaedge", "--bundle", B], 4, "dimension"),
    ("edited manifest", ["predict", f"{W}/edited", G, f"{W}/img0.png"], 4, "'spec.preprocess.invert'"),
    ("deep manifest", ["enroll", f"{W}/deep", G, "x", f"{W}/img0.png"], 4, "nested more than"),
    ("manifest is a FIFO", ["predict", f"{W}/fifo-manifest", G, f"{W}/img0.png"], 4, "FIFO"),
    ("manifest input vs model", ["predict", f"{W}/wrong-input", G, f"{W}/img0.png"], 4, "does not match model.onnx"),
    ("model modified", ["predict", f"{W}/modified", G, f"{W}/img0.png"], 4, "modified after export"),
    ("info on an edited bundle", ["info", "--bundle", f"{W}/edited"], 4, "changed after export"),
    ("damaged class pack", ["classes", "import", G, f"{W}/damaged.pack"], 4, "checksum mismatch"),
]


@pytest.fixture(scope="module")
def outcomes(world):
    """Every case run once, two at a time (no case changes anything, so they may run side by side)."""
    from concurrent.futures import ThreadPoolExecutor

    def args_of(argv):
        return [a.format(w=world["w"], bundle=world["bundle"], gallery=world["gallery"]) for a in argv]
    galleries = sorted({a for _, argv, _, _ in CASES for a in args_of(argv) if a.endswith(".metaedge")})
    before = {g: _fingerprint_of(g) for g in galleries}

    def run(case):
        name, argv = case[0], args_of(case[1])
        prefix = ("-c", BLOCK.format(mod="onnxruntime")) if name == "onnxruntime missing" else ("-m", "metaedge")
        return name, (argv, _cli(*argv, prefix=prefix))
    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(run, CASES))
    after = {g: _fingerprint_of(g) for g in galleries}
    return results, before, after


@pytest.mark.parametrize("name,argv,code,words", CASES, ids=[c[0] for c in CASES])
def test_every_failure_class_exits_with_its_code_and_one_line(outcomes, name, argv, code, words):
    results, before, after = outcomes
    args, proc = results[name]
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, err
    assert err.startswith("metaedge") and ": error: " in err and words in err, err
    touched = [a for a in args if a.endswith(".metaedge")]
    assert {g: after[g] for g in touched} == {g: before[g] for g in touched}  # a failed command changes nothing


def _in_tmpfs(world, commands: str, size_kib: int, remount_ro: bool = False):
    """Copy the gallery onto a small tmpfs, fill it (or make it read-only), run ``commands`` (bash, with $G the
    gallery there, $ORIG the original on a healthy disk, $B the bundle and $IMG an image), then check the gallery
    there still loads unchanged."""
    w = world["w"]
    check = ("from metaedge.runtime.gallery import Gallery; import sys; g = Gallery.load(sys.argv[1]); "
             "print('AFTER', g.labels, g.counts().tolist(), g.version, g.check())")
    script = f"""
        G="$D/g.metaedge"; B={shlex.quote(str(world['bundle']))}; IMG={shlex.quote(str(w / 'img0.png'))}
        ORIG={shlex.quote(str(world['gallery']))}
        cp {shlex.quote(str(world['gallery']))} "$G"
        "$PY" -c {shlex.quote(check)} "$G"
        {'mount -o remount,ro "$D"' if remount_ro else 'dd if=/dev/zero of="$D/filler" bs=4k 2>/dev/null || true'}
        {commands}
        echo "RC=$?"
        rm -f "$D/filler"
        "$PY" -c {shlex.quote(check)} "$G"
    """
    proc = in_small_tmpfs(script, size_kib=size_kib)
    lines = proc.stdout.splitlines()
    after = [line for line in lines if line.startswith("AFTER")]
    assert len(after) == 2 and after[0] == after[1] and after[1].endswith("[]"), proc.stdout + proc.stderr
    return int(next(line for line in lines if line.startswith("RC="))[3:]), proc.stderr.strip()


@pytest.mark.parametrize("what,command,words", [
    ("enroll on a full disk", '"$PY" -m metaedge enroll "$B" "$G" new "$IMG"', "the disk is full"),
    ("forget on a full disk", '"$PY" -m metaedge classes forget "$G" "class 0"', "the disk is full"),
    ("export to a full disk", '"$PY" -m metaedge classes export "$ORIG" "$D/all.pack"', "No space left"),
])
def test_write_failures_on_a_full_disk_exit_5(world, what, command, words):
    rc, err = _in_tmpfs(world, command, size_kib=1024)
    assert rc == 5, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and words in err, err


def test_a_gallery_on_a_read_only_file_system_predicts_and_refuses_changes_with_exit_5(world):
    rc, err = _in_tmpfs(world, '"$PY" -m metaedge predict "$B" "$G" "$IMG" --json > /dev/null && '
                               '"$PY" -m metaedge enroll "$B" "$G" new "$IMG"', size_kib=1024, remount_ro=True)
    assert rc == 5 and err.endswith("is on a read-only file system; nothing was changed"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_an_internal_error_is_one_line_exit_1_unless_debugging(monkeypatch, capsys):
    from metaedge.cli import info_cmd
    from metaedge.cli.main import main

    def broken(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(info_cmd, "run", broken)
    monkeypatch.delenv("METAEDGE_DEBUG", raising=False)
    assert main(["info"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["metaedge info: internal error: RuntimeError: a bug (a bug in metaedge: run again "
                                "with METAEDGE_DEBUG=1 for the traceback, and please report it)"]
    monkeypatch.setenv("METAEDGE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info"])
