"""Fuzzing the inputs of ``cac``: mutated real and phantom files through the commands, every outcome classified.

Every case is one mutant of a real input and one command run on it, with a
wall-clock limit and an address-space limit.  Bases:

- ``dicom``: the three real XA files in ``../shared/data/xa`` (as stored, and
  uncompressed copies written to the work folder) and the project's phantom cine;
- ``dicom-folder``: the 17-frame real cine split into single-frame files;
- ``frames``: the real JPEG frame folder ``../shared/data/frames/lca-clinical-37f``;
- ``nrrd``: the phantom cine as ``.nrrd`` (frame stack) and ``.seq.nrrd``;
- ``seg``: the phantom's ``.seg.nrrd`` segmentations (``cac evaluate``);
- ``model``: a small model written by ``save_model`` (weights and card);
- ``manifest``: the phantom dataset's ``manifest.json`` (the training data loader);
- ``checkpoint``: a training checkpoint pair (the ``--resume`` loader).

The real files are read from ``../shared/data`` and never copied into the
repository: mutants go to a temporary folder and are deleted unless the case
failed.  Outcomes: ``ok`` (exit 0, printable output), ``clean-error`` (exit 2
and exactly one printable ``cac: error:`` line), ``traceback``, ``hang`` (past
the time limit), ``memory`` (MemoryError or an allocation failure under the
limit), ``crash`` (killed by a signal), ``unprintable`` (an error or output
line with control characters, or more than one error line).  For each failure
the mutant is kept with ``recipe.txt`` (seed, case number, mutation, the
command to rerun it) under ``OUT/failures/``; ``OUT/summary.json`` has the
counts.

Each case runs in a child forked from this process after the project's modules
are imported (about 100x faster than a new interpreter per case); the child
sets ``RLIMIT_AS`` and runs :func:`cac.cli.main`, or a loader for
manifests and checkpoints.  ``--subprocess`` runs ``python -m
cac.cli`` instead (slower, same classification).

Run (the fast subset is also a test, ``Testing/test_fuzz.py``)::

    .venv/bin/python benchmarks/fuzz_inputs.py --seed 0 --count 300 --fast
    .venv/bin/python benchmarks/fuzz_inputs.py --seed 1 --count 10000 --out /tmp/fuzz
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
XA = DATA / "xa"
FRAMES = DATA / "frames" / "lca-clinical-37f"
OUTCOMES = ("ok", "clean-error", "traceback", "hang", "memory", "crash", "unprintable")
FAILURES = OUTCOMES[2:]


# --------------------------------------------------------------------------- bases


def prepare(work: Path, python: str) -> dict:
    """Write the bases the mutants start from into ``work``; returns {kind: [paths]}.

    The phantom dataset and the model/checkpoint are written by separate
    processes running at the same time (this process must not run torch or
    VTK before it forks the cases).
    """
    import pydicom
    from pydicom.uid import generate_uid

    bases: dict[str, list] = {k: [] for k in ("dicom", "dicom-folder", "frames", "nrrd", "seg", "model",
                                              "manifest", "checkpoint")}
    phantom = work / "phantom"
    cli = [python, "-m", "cac.cli"]
    script = f"""
import torch
from pathlib import Path
from CACIdentifierLib.modelio import save_model
from CACIdentifierLib.network import ResUNet18
from CACTrainerLib import training
torch.manual_seed(0)
m = ResUNet18(width=8, decoder_channels=(16, 8, 8, 8, 8))
save_model(Path({str(work / 'model.safetensors')!r}), m, dtype=None)
run = Path({str(work / 'run')!r}); run.mkdir()
opt = torch.optim.Adam(m.classifier_parameters(), lr=1e-4)
m(torch.rand(2, 1, 256, 256), torch.rand(2, 1, 256, 256))[0].sum().backward(); opt.step()
cfg = training.asdict(training.TrainConfig(architecture={{"width": 8}}))
training.save_checkpoint(run, m, None, opt, {{"stage": 1, "epochs_done": 1, "history": [], "best": {{}},
                                              "config": cfg}})
"""
    # Phantom output: a small dataset (2 patients: the loader's patient split needs two).
    jobs = [
        subprocess.Popen(cli + ["phantom", str(phantom), "--patients", "2", "--frames", "24", "--size", "128",
                                "--seed", "3", "--ecg"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
        subprocess.Popen([python, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
    ]
    for path in sorted(XA.glob("*.dcm")):
        bases["dicom"].append(path)
        if "rca" in path.name:  # the 96-frame cine: 25 MB uncompressed; its compressed form is enough
            continue
        ds = pydicom.dcmread(path)
        ds.decompress()
        plain = work / f"plain-{path.name}"
        ds.save_as(plain)
        bases["dicom"].append(plain)
    # The 17-frame cine as single-frame files.
    source = work / "plain-rubo-biplane-b-ecg-17f.dcm"
    frames = pydicom.dcmread(source).pixel_array
    folder = work / "single-frames"
    folder.mkdir()
    for k in range(frames.shape[0]):
        one = pydicom.dcmread(source)
        one.NumberOfFrames = 1
        one.InstanceNumber = k + 1
        # A new valid UID (<= 64 characters) per frame, the same on every run: appending ".k" to the real
        # file's UID overran the limit, a defect of this base rather than of the files it tests.
        one.SOPInstanceUID = generate_uid(entropy_srcs=[str(one.SOPInstanceUID), str(k + 1)])
        one.file_meta.MediaStorageSOPInstanceUID = one.SOPInstanceUID
        one.PixelData = frames[k].tobytes()
        for tag in [t for t in one.keys() if t.group == 0x5000]:
            del one[tag]
        one.save_as(folder / f"IM{k + 1:03d}.dcm")
    bases["dicom-folder"].append(folder)
    if FRAMES.is_dir():
        bases["frames"].append(FRAMES)

    def finish(job):
        _, err = job.communicate()
        if job.returncode != 0:
            raise RuntimeError(f"preparing the bases failed: {err.decode(errors='replace')[-2000:]}")

    finish(jobs[0])
    cine = sorted(phantom.glob("P*/A*/cine.dcm"))[0]
    bases["dicom"].append(cine)
    converts = [subprocess.Popen(cli + ["convert", str(cine), str(work / name)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE) for name in ("stack.nrrd", "cine.seq.nrrd")]
    for job in converts + jobs[1:]:
        finish(job)
    bases["nrrd"] = [work / "stack.nrrd", work / "cine.seq.nrrd"]
    bases["seg"] = sorted(phantom.glob("P001/A01/*.seg.nrrd"))
    bases["manifest"].append(phantom)
    bases["model"].append(work / "model.safetensors")
    bases["checkpoint"].append(work / "run")
    return {k: v for k, v in bases.items() if v}


# --------------------------------------------------------------------------- mutations

INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 64, 255, 4096, 65535]
INTERESTING_TEXT = ["0", "1", "-1", "2", "1e308", "-1e308", "1e-300", "nan", "inf", "-inf", "abc", "",
                    "1\\2\\3", "0\\0", "99999999999999999999"]
HOSTILE_STRINGS = ["ACME\x1b[31m\nframes: 3", "../../../tmp/x", "/etc/passwd", "x" * 5000, "\x00\x01\x02",
                   "é中\u2028", "%s%n%x"]
DICOM_TAGS = {
    "Rows": "int", "Columns": "int", "BitsAllocated": "int", "BitsStored": "int", "HighBit": "int",
    "SamplesPerPixel": "int", "PixelRepresentation": "int", "NumberOfFrames": "text", "FrameTime": "text",
    "PixelSpacing": "text", "ImagerPixelSpacing": "text", "EstimatedRadiographicMagnificationFactor": "text",
    "DistanceSourceToDetector": "text", "DistanceSourceToPatient": "text", "CineRate": "text",
    "RecommendedDisplayFrameRate": "text", "FrameTimeVector": "text", "RWavePointer": "rwave",
    "PhotometricInterpretation": "photometric", "Modality": "string", "Manufacturer": "string",
    "PatientID": "string", "SeriesDescription": "string", "InstanceNumber": "text", "SOPClassUID": "uid",
    "SeriesInstanceUID": "uid", "AcquisitionTime": "text",
}
CURVE_ELEMENTS = {0x0005: "int", 0x0010: "int", 0x0103: "int", 0x3000: "bytes", 0x0110: "int", 0x0030: "string",
                  0x0020: "string"}
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
                     "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                     "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1.99", "1.2.3.4", "", "not a uid"]


def byte_mutation(data: bytes, rng) -> tuple[bytes, str]:
    """One of: flip bytes (anywhere or in the header), truncate, zero a run, insert, duplicate a chunk."""
    n = len(data)
    kind = rng.choice(["flip", "flip-header", "flip-header", "truncate", "zero-run", "insert", "duplicate"])
    buf = bytearray(data)
    if kind in ("flip", "flip-header"):
        hi = min(n, 4096) if kind == "flip-header" else n
        count = int(rng.integers(1, 9))
        where = sorted(int(i) for i in rng.integers(0, max(hi, 1), count))
        for i in where:
            buf[i] ^= int(rng.integers(1, 256))
        return bytes(buf), f"{kind} bytes at {where}"
    if kind == "truncate":
        at = int(rng.integers(0, n))
        return bytes(buf[:at]), f"truncate to {at} of {n} bytes"
    if kind == "zero-run":
        at, length = int(rng.integers(0, n)), int(rng.integers(1, 4097))
        buf[at:at + length] = bytes(len(buf[at:at + length]))
        return bytes(buf), f"zero {length} bytes at {at}"
    if kind == "insert":
        at, length = int(rng.integers(0, min(n, 4096))), int(rng.integers(1, 64))
        junk = bytes(int(b) for b in rng.integers(0, 256, length))
        return bytes(buf[:at]) + junk + bytes(buf[at:]), f"insert {length} random bytes at {at}"
    at, length = int(rng.integers(0, n)), int(rng.integers(1, 4097))
    return bytes(buf[:at]) + bytes(buf[at:at + length]) + bytes(buf[at:]), f"duplicate {length} bytes at {at}"


def _tag_value(kind: str, rng):
    if kind == "int":
        return int(rng.choice(INTERESTING_INTS))
    if kind == "text":
        return str(rng.choice(INTERESTING_TEXT))
    if kind == "rwave":
        return [int(v) for v in rng.choice([[0], [1, 5], [65535], [3, 2, 1], list(range(1, 200))])]
    if kind == "photometric":
        return str(rng.choice(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "", "XX"]))
    if kind == "uid":
        return str(rng.choice(["1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.2", "", "1.2.3"]))
    if kind == "bytes":
        return bytes(int(b) for b in rng.integers(0, 256, int(rng.choice([0, 1, 3, 8, 1000]))))
    return str(rng.choice(HOSTILE_STRINGS))


def dicom_tag_mutation(data: bytes, rng) -> tuple[bytes, str]:
    """Change, delete or empty one element through pydicom (values chosen to break assumptions)."""
    import pydicom
    from pydicom import config

    config.settings.writing_validation_mode = config.IGNORE
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    choice = rng.choice(["set", "set", "set", "delete", "pixels", "curve", "syntax", "vr"])
    if choice == "vr":
        # A corrupted VR in an explicit VR element (e.g. 'LO' -> 'QQ'), as a flipped byte would do.
        for _ in range(50):
            i = int(rng.integers(132, min(len(data), 8192) - 6))
            if data[i + 4:i + 6].isalpha() and data[i + 4:i + 6].isupper():
                new = bytes(int(c) for c in rng.integers(65, 91, 2))
                return data[:i + 4] + new + data[i + 6:], f"VR at byte {i + 4} set to {new.decode()}"
        return byte_mutation(data, rng)
    if choice == "syntax":
        uid = str(rng.choice(TRANSFER_SYNTAXES))
        ds.file_meta.TransferSyntaxUID = uid
        desc = f"TransferSyntaxUID = {uid!r}"
        try:
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=False)
            return out.getvalue(), desc
        except Exception:
            return byte_mutation(data, rng)
    if choice == "pixels":
        raw = ds.get("PixelData")
        if not isinstance(raw, bytes):
            return byte_mutation(data, rng)
        how = rng.choice(["empty", "half", "double", "one"])
        ds.PixelData = {"empty": b"", "half": raw[: len(raw) // 2 // 2 * 2], "double": raw + raw,
                        "one": b"\x00\x00"}[how]
        desc = f"PixelData {how}"
    elif choice == "curve":
        element = int(rng.choice(list(CURVE_ELEMENTS)))
        value = _tag_value(CURVE_ELEMENTS[element], rng)
        vr = {"int": "US", "bytes": "OB", "string": "CS"}[CURVE_ELEMENTS[element]]
        ds.add_new((0x5000, element), vr, value)
        desc = f"curve (5000,{element:04X}) = {value!r:.80}"
    else:
        keyword = str(rng.choice(list(DICOM_TAGS)))
        if choice == "delete":
            if keyword in ds:
                del ds[keyword]
            desc = f"delete {keyword}"
        else:
            value = _tag_value(DICOM_TAGS[keyword], rng)
            try:
                setattr(ds, keyword, value)
            except Exception:
                return byte_mutation(data, rng)
            desc = f"{keyword} = {value!r:.80}"
    out = io.BytesIO()
    try:
        ds.save_as(out, enforce_file_format=False)
    except Exception:
        return byte_mutation(data, rng)
    return out.getvalue(), desc


def _json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:20]):
            yield from _json_paths(v, prefix + (i,))


JSON_VALUES = [None, True, 0, -1, 1, 4096, 10**12, 1e308, -0.5, "", "x", "../../etc/passwd", "/etc/passwd",
               [], [1, 2], {}, {"a": 1}, "\x1b[2J", 0.5, "NaN"]


def json_mutation(data: bytes, rng) -> tuple[bytes, str]:
    """Replace a value at a random path by another type or range, delete a key, or break the encoding."""
    kind = rng.choice(["replace", "replace", "replace", "delete", "bytes", "nan", "not-utf8", "list"])
    if kind == "bytes":
        return byte_mutation(data, rng)
    if kind == "not-utf8":
        return data[:10] + b"\xff\xfe\xfa" + data[10:], "invalid UTF-8 bytes inserted at 10"
    if kind == "list":
        return b"[1, 2, 3]", "the whole document replaced by a JSON list"
    try:
        obj = json.loads(data)
    except ValueError:
        return byte_mutation(data, rng)
    paths = [p for p in _json_paths(obj) if p]
    if not paths:
        return b"[]", "empty list"
    path = paths[int(rng.integers(0, len(paths)))]
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if kind == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
        desc = f"delete {'.'.join(map(str, path))}"
    else:
        value = float("nan") if kind == "nan" else JSON_VALUES[int(rng.integers(0, len(JSON_VALUES)))]
        parent[path[-1]] = value
        desc = f"{'.'.join(map(str, path))} = {value!r}"
    return json.dumps(obj).encode(), desc


def safetensors_mutation(data: bytes, rng) -> tuple[bytes, str]:
    """Mutate the JSON header (metadata, dtypes, shapes, offsets) or the bytes of a safetensors file."""
    if rng.random() < 0.3 or len(data) < 8:
        return byte_mutation(data, rng)
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n]
    try:
        obj = json.loads(header)
    except ValueError:
        return byte_mutation(data, rng)
    if rng.random() < 0.5 and "__metadata__" in obj:
        meta = json.loads(obj["__metadata__"]["cac"])
        new, desc = json_mutation(json.dumps(meta).encode(), rng)
        obj["__metadata__"]["cac"] = new.decode("utf-8", "replace")
        desc = "metadata: " + desc
    else:
        new, desc = json_mutation(header, rng)
        try:
            obj = json.loads(new)
        except ValueError:
            return len(new).to_bytes(8, "little") + new + data[8 + n:], "header: " + desc
        desc = "header: " + desc
    text = json.dumps(obj).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n:], desc


def nrrd_mutation(data: bytes, rng) -> tuple[bytes, str]:
    """Change one header field of an NRRD (sizes, type, encoding, spacing, custom fields) or its bytes."""
    end = data.find(b"\n\n")
    if end < 0 or rng.random() < 0.3:
        return byte_mutation(data, rng)
    lines = data[:end].split(b"\n")
    i = int(rng.integers(1, len(lines)))
    key = lines[i].split(b":", 1)[0]
    values = [b"0", b"1", b"-1", b"1 1", b"0 0 0", b"2 2 2 2", b"100000 100000 100000", b"nan", b"inf",
              b"(nan,0,0) (0,1,0) (0,0,1)", b"int8", b"double", b"raw", b"gzip", b"bzip2", b"text",
              b"\x1b[31m", b"", b"(1,0) (0,1)"]
    how = rng.choice(["value", "delete", "duplicate"])
    if how == "delete":
        del lines[i]
        desc = f"delete header line {key.decode('latin-1')!r}"
    elif how == "duplicate":
        lines.insert(i, lines[i])
        desc = f"duplicate header line {key.decode('latin-1')!r}"
    else:
        value = values[int(rng.integers(0, len(values)))]
        sep = b":=" if b":=" in lines[i] else b": "
        lines[i] = key + sep + value
        desc = f"header {key.decode('latin-1')!r} = {value!r}"
    return b"\n".join(lines) + data[end:], desc


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    index: int
    kind: str
    base: str
    mutation: str
    argv: list
    runner: str = "cli"  # "cli" (cac main), "manifest" or "checkpoint" (loaders)
    files: list = field(default_factory=list)


def _mutate_file(src: Path, dst: Path, rng, mutator) -> str:
    import warnings

    data = src.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            new, desc = mutator(data, rng)
        except Exception:  # the mutator could not parse this base: fall back to bytes
            new, desc = byte_mutation(data, rng)
    dst.write_bytes(new)
    return desc


def _link_folder(src: Path, dst: Path) -> list[Path]:
    dst.mkdir()
    files = sorted(p for p in src.iterdir() if p.is_file())
    for p in files:
        (dst / p.name).symlink_to(p)
    return files


def make_case(index: int, seed: int, bases: dict, case_dir: Path, fast: bool, kinds: list | None = None) -> Case:
    """Case ``index`` of ``seed``: a mutant of a base of one of ``kinds`` (default: every kind of ``bases``).

    ``bases`` keeps every kind even when ``kinds`` is narrower: an ``identify`` case needs the model base.
    """
    rng = np.random.default_rng([seed, index])
    kinds = list(kinds or bases)
    weights = np.array([{"dicom": 8, "dicom-folder": 1.5, "frames": 1.5, "nrrd": 2, "seg": 1, "model": 2,
                         "manifest": 1, "checkpoint": 1}[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    base = bases[kind][int(rng.integers(0, len(bases[kind])))]
    out = case_dir / "out"
    heavy = not fast and rng.random() < 0.05

    def cine_command(path: Path) -> list:
        r = rng.random()
        if r < 0.45:
            return ["info", path]
        if r < 0.6:
            return ["info", path, "--json"]
        if r < 0.9 or not heavy:
            return ["sync", path, "--json"]
        if r < 0.95:
            return ["convert", path, out.with_suffix(".nrrd")]
        return ["identify", path, "--out", out, "--model", bases["model"][0], "--device", "cpu"]

    if kind == "dicom":
        dst = case_dir / ("mutant" + (base.suffix or ".dcm"))
        mutator = dicom_tag_mutation if rng.random() < 0.6 else byte_mutation
        desc = _mutate_file(base, dst, rng, mutator)
        return Case(index, kind, base.name, desc, cine_command(dst))
    if kind in ("dicom-folder", "frames"):
        dst = case_dir / "folder"
        files = _link_folder(base, dst)
        files = [p for p in files if p.suffix.lower() in (".dcm", ".jpg", ".png")]
        victim = files[int(rng.integers(0, len(files)))]
        how = rng.choice(["mutate", "mutate", "mutate", "bomb", "empty", "only-one", "foreign"])
        (dst / victim.name).unlink()
        if how == "mutate":
            mutator = dicom_tag_mutation if kind == "dicom-folder" and rng.random() < 0.6 else byte_mutation
            desc = f"{victim.name}: " + _mutate_file(victim, dst / victim.name, rng, mutator)
        elif how == "bomb":
            w, h = [(30000, 30000), (10000, 100), (1, 1), (0, 5)][int(rng.integers(0, 4))]
            (dst / victim.name).write_bytes(png_bomb(w, h))
            desc = f"{victim.name} replaced by a PNG header claiming {w}x{h}"
        elif how == "empty":
            (dst / victim.name).write_bytes(b"")
            desc = f"{victim.name} emptied"
        elif how == "only-one":
            for p in dst.iterdir():
                p.unlink()
            (dst / victim.name).symlink_to(victim)
            desc = f"only {victim.name} left"
        else:
            (dst / victim.name).symlink_to(victim)
            other = XA / "rubo-rca-ecg-96f.dcm"
            (dst / ("zz" + victim.suffix)).symlink_to(other)
            desc = f"a foreign file ({other.name}) added as zz{victim.suffix}"
        argv = cine_command(dst)
        if kind == "frames" and argv[0] in ("info", "convert"):
            argv += ["--spacing", "0.3", "--frame-time", "66.7"]
        elif kind == "frames" and argv[0] == "sync":
            argv += ["--frame-time", "66.7"]
        return Case(index, kind, base.name, desc, argv)
    if kind == "nrrd":
        dst = case_dir / base.name
        desc = _mutate_file(base, dst, rng, nrrd_mutation)
        return Case(index, kind, base.name, desc, cine_command(dst))
    if kind == "seg":
        dst = case_dir / ("pred" + "".join(base.suffixes))
        desc = _mutate_file(base, dst, rng, nrrd_mutation)
        truth = [p for p in bases["seg"] if p.name == "majority.seg.nrrd"] or bases["seg"][:1]
        argv = ["evaluate", dst, truth[0]]
        if rng.random() < 0.5:
            argv = ["evaluate", truth[0], dst, "--json"]
        return Case(index, kind, base.name, desc, argv)
    if kind == "model":
        dst = case_dir / "model.safetensors"
        card = case_dir / "model.json"
        shutil.copy(base, dst)
        shutil.copy(base.with_suffix(".json"), card)
        if rng.random() < 0.5:
            desc = "card: " + _mutate_file(base.with_suffix(".json"), card, rng, json_mutation)
        else:
            card.unlink() if rng.random() < 0.5 else None
            desc = "weights: " + _mutate_file(base, dst, rng, safetensors_mutation)
        if heavy:
            argv = ["identify", str(XA / "rubo-biplane-b-ecg-17f.dcm"), "--model", dst, "--out", out,
                    "--device", "cpu"]
        else:
            argv = ["model-info", dst]
        return Case(index, kind, base.name, desc, argv)
    if kind == "manifest":
        dst = case_dir / "dataset"
        dst.mkdir()
        for p in base.iterdir():
            if p.name != "manifest.json":
                (dst / p.name).symlink_to(p)
        desc = _mutate_file(base / "manifest.json", dst / "manifest.json", rng, json_mutation)
        return Case(index, kind, base.name, desc, [dst], runner="manifest")
    dst = case_dir / "run"
    dst.mkdir()
    for p in base.iterdir():
        shutil.copy(p, dst / p.name)
    if rng.random() < 0.5:
        desc = "checkpoint.json: " + _mutate_file(base / "checkpoint.json", dst / "checkpoint.json", rng,
                                                  json_mutation)
    else:
        desc = "checkpoint.safetensors: " + _mutate_file(base / "checkpoint.safetensors",
                                                         dst / "checkpoint.safetensors", rng, safetensors_mutation)
    return Case(index, kind, base.name, desc, [dst], runner="checkpoint")


# --------------------------------------------------------------------------- running


def _child(case: Case, memory_bytes: int) -> None:
    """In the forked child: limits, redirected output, the command; never returns."""
    code = 1
    try:
        os.setsid()
        used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = used + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        import warnings

        warnings.resetwarnings()
        argv = [str(a) for a in case.argv]
        if case.runner == "cli":
            from cac.cli import main

            code = main(argv)
        else:
            code = _run_loader(case.runner, Path(argv[0]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code if isinstance(code, int) else 1)


def _run_loader(runner: str, path: Path) -> int:
    """The loaders that ``cac train`` runs before training, with its error convention."""
    from CACIdentifierLib.errors import CacError, printable

    try:
        if runner == "manifest":
            from CACTrainerLib.dataset import build_frameset

            fs = build_frameset(path, frames_per_acquisition=2)
            print(f"{fs.n_patches} patches")
        else:
            from CACTrainerLib import training

            ckpt = training.load_checkpoint(path)
            print("no checkpoint" if ckpt is None else f"{len(ckpt[0])} tensors")
    except CacError as exc:
        print(f"cac: error: {printable(exc, 2000)}", file=sys.stderr)
        return 2
    return 0


def classify(code: int | None, timed_out: bool, out: str, err: str) -> str:
    if timed_out:
        return "hang"
    if "MemoryError" in err or "bad_alloc" in err or "Cannot allocate memory" in err:
        return "memory"
    if "Traceback (most recent call last)" in err:
        return "traceback"
    if code is None or code < 0:
        return "crash"
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("cac: error:")]
    printable_out = all(line.isprintable() for line in out.splitlines())
    if not all(line.isprintable() for line in lines) or not printable_out or len(errors) > 1:
        return "unprintable"
    if code == 0:
        return "ok"
    if code == 2 and len(errors) == 1 and all(line.startswith(("cac: error:", "cac: warning:")) for line in lines):
        return "clean-error"
    return "traceback" if code == 1 else "crash"


def run_case(case: Case, case_dir: Path, timeout: float, memory_bytes: int, use_subprocess: bool):
    """Start the case; returns a handle (pid or Popen, files, start time)."""
    out_path, err_path = case_dir / "stdout", case_dir / "stderr"
    if use_subprocess:
        def limits():
            os.setsid()
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        if case.runner == "cli":
            cmd = [sys.executable, "-m", "cac.cli"] + [str(a) for a in case.argv]
        else:
            cmd = [sys.executable, __file__, "--loader", case.runner, str(case.argv[0])]
        proc = subprocess.Popen(cmd, stdout=open(out_path, "wb"), stderr=open(err_path, "wb"),
                                preexec_fn=limits, cwd=case_dir)
        return ("popen", proc, time.monotonic())
    pid = os.fork()
    if pid == 0:
        os.chdir(case_dir)
        fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fd_err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        _child(case, memory_bytes)
    return ("fork", pid, time.monotonic())


def poll(handle, timeout: float):
    """(done, exit code or None, timed out)."""
    how, obj, start = handle
    if how == "popen":
        code = obj.poll()
        if code is not None:
            return True, code, False
        pid = obj.pid
    else:
        pid = obj
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return True, os.waitstatus_to_exitcode(status), False
    if time.monotonic() - start > timeout:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if how == "popen":
            obj.wait()
        else:
            os.waitpid(pid, 0)
        return True, None, True
    return False, None, False


def recipe(case: Case, seed: int, outcome: str, err: str, fast: bool, kinds: str | None = None) -> str:
    kept = " ".join(str(a) for a in case.argv)
    return (
        f"outcome: {outcome}\nseed: {seed}  case: {case.index}  kind: {case.kind}  base: {case.base}\n"
        f"mutation: {case.mutation}\n"
        f"rerun this case: .venv/bin/python benchmarks/fuzz_inputs.py --seed {seed} --only {case.index}"
        f"{' --fast' if fast else ''}{f' --kinds {kinds}' if kinds else ''}\n"
        f"command on the kept mutant (paths of this run's work folder): "
        + (f"cac {kept}\n" if case.runner == "cli" else f"python benchmarks/fuzz_inputs.py --loader {case.runner} {kept}\n")
        + "stderr (last lines):\n" + "\n".join(err.splitlines()[-15:]) + "\n"
    )


def preload(kinds) -> None:
    """Import what the commands import, once, before forking (each child then starts in milliseconds)."""
    import pydicom  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import scipy.signal  # noqa: F401
    from cac import cli  # noqa: F401
    from CACIdentifierLib import cine_io, dicom_io, sync  # noqa: F401
    from PIL import Image  # noqa: F401

    if {"nrrd", "seg"} & set(kinds):
        from CACIdentifierLib import mrml  # noqa: F401
    if {"model", "checkpoint", "manifest"} & set(kinds):
        import torch  # noqa: F401
        from CACIdentifierLib import modelio  # noqa: F401


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--only", type=int, help="run only this case number")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    ap.add_argument("--memory-mib", type=int, default=3072, help="address space a case may add (MiB)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fast", action="store_true", help="no identify/convert (the CI subset)")
    ap.add_argument("--kinds", help="comma-separated kinds to fuzz (default all)")
    ap.add_argument("--subprocess", action="store_true", help="a new interpreter per case instead of fork")
    ap.add_argument("--out", help="folder for summary.json and failures/ (default: a temporary folder)")
    ap.add_argument("--loader", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--merge", nargs="+", metavar="SUMMARY",
                    help="add up the summary.json files of chunked runs, print the totals, and exit")
    args = ap.parse_args(argv)
    if args.merge:
        return merge_summaries([Path(p) for p in args.merge])
    if args.loader:
        return _run_loader(args.loader[0], Path(args.loader[1]))
    if not XA.is_dir():
        print(f"fuzz: the real data is not at {XA}", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="cac-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cac-fuzz-work-"))
    t0 = time.monotonic()
    try:
        (work / "bases").mkdir()
        bases = prepare(work / "bases", sys.executable)
        kinds = [k for k in bases if not args.kinds or k in args.kinds.split(",")]
        t_prep = time.monotonic() - t0
        preload(kinds)
        indices = [args.only] if args.only is not None else list(range(args.start, args.start + args.count))
        counts = {o: 0 for o in OUTCOMES}
        by_kind: dict = {}
        by_command: dict = {}
        failures = []
        seconds_by: dict = {}
        running: dict = {}
        pending = list(indices)
        mem = args.memory_mib * 2**20
        while pending or running:
            while pending and len(running) < args.workers:
                i = pending.pop(0)
                case_dir = work / f"case-{i}"
                case_dir.mkdir()
                case = make_case(i, args.seed, bases, case_dir, args.fast, kinds)
                running[i] = (case, case_dir, run_case(case, case_dir, args.timeout, mem, args.subprocess))
            time.sleep(0.005)
            for i in list(running):
                case, case_dir, handle = running[i]
                done, code, timed_out = poll(handle, args.timeout)
                if not done:
                    continue
                del running[i]
                so = (case_dir / "stdout").read_bytes().decode("utf-8", "replace")
                se = (case_dir / "stderr").read_bytes().decode("utf-8", "replace")
                outcome = classify(code, timed_out, so, se)
                counts[outcome] += 1
                key = f"{case.kind}/{case.runner if case.runner != 'cli' else case.argv[0]}"
                seconds_by[key] = seconds_by.get(key, 0.0) + time.monotonic() - handle[2]
                by_kind.setdefault(case.kind, {o: 0 for o in OUTCOMES})[outcome] += 1
                command = case.runner if case.runner != "cli" else str(case.argv[0])
                by_command.setdefault(command, {o: 0 for o in OUTCOMES})[outcome] += 1
                if outcome in FAILURES:
                    keep = out / "failures" / f"{args.seed}-{i}"
                    shutil.rmtree(keep, ignore_errors=True)
                    shutil.copytree(case_dir, keep, symlinks=True)
                    (keep / "recipe.txt").write_text(recipe(case, args.seed, outcome, se, args.fast, args.kinds))
                    failures.append({"case": i, "kind": case.kind, "outcome": outcome,
                                     "mutation": case.mutation, "command": " ".join(map(str, case.argv)),
                                     "last_line": (se.strip().splitlines() or [""])[-1][:300]})
                    print(f"FAIL case {i} [{case.kind}] {outcome}: {case.mutation} :: "
                          f"{failures[-1]['last_line'][:160]}", flush=True)
                shutil.rmtree(case_dir, ignore_errors=True)
        seconds = time.monotonic() - t0
        summary = {"seed": args.seed, "count": len(indices), "start": args.start, "fast": args.fast,
                   "mode": "subprocess" if args.subprocess else "fork", "timeout_s": args.timeout,
                   "memory_mib": args.memory_mib, "seconds": round(seconds, 1),
                   "prepare_seconds": round(t_prep, 1), "outcomes": counts, "by_kind": by_kind,
                   "by_command": by_command,
                   "seconds_by_kind_and_command": {k: round(v, 1) for k, v in sorted(seconds_by.items())},
                   "failures": failures}
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"{len(indices)} cases in {seconds:.0f} s (seed {args.seed}): "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for kind, c in sorted(by_kind.items()):
            print(f"  {kind:<13} " + "  ".join(f"{k} {v}" for k, v in c.items() if v))
        print(f"summary: {out / 'summary.json'}")
        return 1 if failures else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def merge_summaries(paths) -> int:
    """Totals of several chunks' summary.json (outcomes by kind and by command, seconds, failures)."""
    total = {o: 0 for o in OUTCOMES}
    by_kind: dict = {}
    by_command: dict = {}
    seconds = 0.0
    failures = []
    seeds = set()
    for path in paths:
        s = json.loads(Path(path).read_text())
        seeds.add(s["seed"])
        seconds += s["seconds"]
        failures += s["failures"]
        for o, v in s["outcomes"].items():
            total[o] += v
        for table, part in ((by_kind, s["by_kind"]), (by_command, s["by_command"])):
            for key, c in part.items():
                row = table.setdefault(key, {o: 0 for o in OUTCOMES})
                for o, v in c.items():
                    row[o] += v
    n = sum(total.values())
    print(f"{n} cases in {len(paths)} chunks, seed(s) {sorted(seeds)}, {seconds:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in total.items()))
    for title, table in (("kind", by_kind), ("command", by_command)):
        print(f"| {title} | cases | " + " | ".join(OUTCOMES) + " |")
        print("|---" * (len(OUTCOMES) + 2) + "|")
        for key, c in sorted(table.items()):
            print(f"| {key} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
    for f in failures:
        print(f"failure: case {f['case']} [{f['kind']}] {f['outcome']}: {f['mutation']}")
    return 1 if failures else 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
