"""PlayCanvas SOG files ("Spatially Ordered Gaussians", format version 2): write and read.

Written from PlayCanvas's published format (the SOG page of the PlayCanvas developer docs and the
reader / writer of ``@playcanvas/splat-transform``, MIT, read to learn the format; no code taken).
No Python package writes SOG, so NumPy + Pillow's lossless WebP do it; the tests check files both
ways against ``splat-transform`` from npm (``tests/io/test_sog.py``).

A SOG is a ``meta.json`` and lossless WebP images of ``W x H`` RGBA texels, one texel a Gaussian
(``W = ceil(sqrt(N) / 4) * 4``, ``H = ceil(N / W / 4) * 4``, row-major, Gaussians in Morton
order of their positions; texels past N are zero). Bundled: the files in one ZIP, ``*.sog``;
unbundled: the files side by side in a folder, opened through its ``meta.json``::

    meta.json  {"version": 2, "count": N, "asset": {"generator": ...},
                "means": {"mins": [3], "maxs": [3], "files": ["means_l.webp", "means_u.webp"]},
                "scales": {"codebook": [256], "files": ["scales.webp"]},
                "quats": {"files": ["quats.webp"]},
                "sh0": {"codebook": [256], "files": ["sh0.webp"]},
                "shN": {"count": P, "bands": 1-3, "codebook": [256],
                        "files": ["shN_centroids.webp", "shN_labels.webp"]}}   (only with SH rest)
    means_l / means_u   RGB: low / high byte of a 16-bit lerp, per axis, of
                        l(x) = sign(x) * ln(|x| + 1) between meta mins and maxs
    quats               RGB: the three smaller components of the unit quaternion (w, x, y, z), the
                        largest made positive, as 255 * (c * sqrt(2) / 2 + 0.5); A: 252 + index
                        of the largest (0 = w)
    scales              RGB: per-axis index into the 256-entry codebook of log scales
    sh0                 RGB: indices into the codebook of SH DC coefficients; A: opacity * 255
    shN_labels          RG: 16-bit index into a palette of P SH rest vectors
    shN_centroids       64 palette entries a row, each 3 * (coefficients) texels wide... more
                        exactly: entry e, coefficient j at texel (e % 64 * K + j, e // 64), RGB the
                        codebook indices of the R, G, B coefficient j (K = 3, 8, 15)

Positions, quaternions, scales and colours are in the frame of the Gaussians as in our PLY (SOG's
"PLY space"), so a SOG lines up with the PLY written beside it.

Our encoder (`sog_files`) rounds where splat-transform truncates, so a decode differs by at most
one step of each quantiser: position 1/65535 of the log range per axis; quaternion component
sqrt(2)/255 (~0.0055); opacity 1/510; log scales and SH DC the nearest of 256 codebook values
fitted to the data (1D k-means, density weighted); SH rest vectors the nearest of P palette
entries (k-means, P = min(splat-transform's size, ``palette``), default at most 4096 so that it
runs in seconds on a CPU) whose coefficients are again quantised to a 256-entry codebook. SH rest
is the lossy part: expect ~30-40 dB against the PLY on real scenes (docs/viewer.md).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from da3gs.types import Gaussians

from .errors import InputError

__all__ = ["write_sog", "read_sog", "sog_files", "gaussians_from_sog_files", "SOG_VERSION", "is_sog_path"]

SOG_VERSION = 2
_SQRT2 = math.sqrt(2.0)
_SH_FILES = ("shN_centroids.webp", "shN_labels.webp")
_FILES = ("means_l.webp", "means_u.webp", "quats.webp", "scales.webp", "sh0.webp")


def is_sog_path(path) -> bool:
    """Whether ``path`` names a SOG: a ``.sog`` bundle or an unbundled folder's ``meta.json``."""
    p = Path(path)
    return p.suffix.lower() == ".sog" or p.name.lower() == "meta.json"


def _log_t(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _inv_log_t(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.expm1(np.abs(v))


def morton_order(means: np.ndarray) -> np.ndarray:
    """Indices ordering ``means`` (N, 3) along a 3D Morton (Z-order) curve of 10 bits an axis."""
    if len(means) == 0:
        return np.zeros(0, np.int64)
    lo, hi = means.min(0), means.max(0)
    q = ((means - lo) / np.where(hi > lo, hi - lo, 1.0) * 1023).astype(np.int64).clip(0, 1023)

    def spread(v):
        v = (v | (v << 16)) & 0x030000FF
        v = (v | (v << 8)) & 0x0300F00F
        v = (v | (v << 4)) & 0x030C30C3
        return (v | (v << 2)) & 0x09249249

    code = spread(q[:, 0]) | (spread(q[:, 1]) << 1) | (spread(q[:, 2]) << 2)
    return np.argsort(code, kind="stable")


def codebook_1d(values: np.ndarray, k: int = 256, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``k`` sorted float32 centroids to ``values`` (any shape) and label each value with its
    nearest: returns ``(codebook (k,), labels uint8 of values' shape)``.

    Lloyd's algorithm on a 4096-bin histogram (bin means, weights ``count ** 0.5`` so that sparse
    tails still get centroids, as splat-transform weights them), started from a half quantile,
    half uniform spread."""
    v = values.astype(np.float64).reshape(-1)
    if v.size == 0:
        return np.zeros(k, np.float32), np.zeros(values.shape, np.uint8)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-20:
        return np.full(k, lo, np.float32), np.zeros(values.shape, np.uint8)
    s = np.sort(v)
    nb = min(4096, s.size)
    edges = np.unique(np.concatenate([np.quantile(s, np.linspace(0, 1, nb // 2 + 1)),
                                      np.linspace(lo, hi, nb // 2 + 1)]))
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
    sums = np.bincount(idx, weights=s, minlength=len(edges) - 1)
    keep = counts > 0
    centers, weights = sums[keep] / counts[keep], np.sqrt(counts[keep])
    if len(centers) <= k:
        c = np.concatenate([centers, np.full(k - len(centers), centers[-1])])
    else:
        qpos = np.quantile(centers, np.linspace(0, 1, k))
        c = np.sort(0.5 * qpos + 0.5 * np.linspace(lo, hi, k))
        for _ in range(iters):
            lab = np.searchsorted((c[1:] + c[:-1]) / 2, centers)
            w = np.bincount(lab, weights=weights, minlength=k)
            m = np.bincount(lab, weights=weights * centers, minlength=k)
            c = np.where(w > 0, m / np.where(w > 0, w, 1), c)
            c = np.sort(c)
    c = np.sort(c).astype(np.float32)
    c64 = c.astype(np.float64)
    lab = np.searchsorted((c64[1:] + c64[:-1]) / 2, v)  # nearest of the float32 centroids
    return c, lab.astype(np.uint8).reshape(values.shape)


def kmeans(x: np.ndarray, k: int, iters: int = 10, seed: int = 0, sample: int = 65536,
           batch: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of ``x`` (N, D): returns ``(centroids (k, D) float32, labels (N,) int64)``.

    Fitted on at most ``sample`` rows (Lloyd, ``iters`` rounds, k-means++-free start on a random
    subset; empty clusters re-seeded on random rows), then every row labelled with its nearest
    centroid in batches of ``batch`` rows (torch matmul: |x|^2 - 2 x.c + |c|^2)."""
    n = len(x)
    if n <= k:
        return x.astype(np.float32).copy(), np.arange(n)
    gen = np.random.default_rng(seed)
    t = torch.from_numpy(x.astype(np.float32))
    fit = t[torch.from_numpy(gen.choice(n, min(n, max(sample, 4 * k)), replace=False))]
    c = fit[torch.from_numpy(gen.choice(len(fit), k, replace=False))].clone()

    def assign(rows: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(rows), dtype=torch.int64)
        cn = (c * c).sum(1)
        for a in range(0, len(rows), batch):
            r = rows[a:a + batch]
            out[a:a + batch] = torch.argmin(cn[None, :] - 2.0 * r @ c.T, dim=1)
        return out

    for _ in range(iters):
        lab = assign(fit)
        sums = torch.zeros_like(c).index_add_(0, lab, fit)
        cnt = torch.bincount(lab, minlength=k).to(torch.float32)
        empty = cnt == 0
        c = torch.where(empty[:, None], c, sums / cnt.clamp_min(1)[:, None])
        if bool(empty.any()):
            c[empty] = fit[torch.from_numpy(gen.choice(len(fit), int(empty.sum()), replace=False))]
    return c.numpy(), assign(t).numpy()


def palette_size(n: int, cap: int = 4096) -> int:
    """SH palette entries for ``n`` Gaussians: splat-transform's ``min(64, 2^floor(log2(n / 1024)))
    * 1024`` (65536 from 64k Gaussians on), capped at ``cap`` and at ``n``."""
    if n <= 0:
        return 0
    return int(max(1, min(n, cap, int(min(64.0, 2.0 ** math.floor(math.log2(n / 1024))) * 1024))))


def _webp(rgba: np.ndarray) -> bytes:
    """(H, W, 4) uint8 -> lossless WebP bytes (``exact``: RGB kept under alpha 0)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "WEBP", lossless=True, quality=100, method=4, exact=True)
    return buf.getvalue()


def _unwebp(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # Pillow raises several types for bad images
        raise InputError(f"{name}: not a readable WebP image ({' '.join(str(e).split())})") from None
    return np.asarray(img.convert("RGBA"))


def _texture(cols: list[np.ndarray], w: int, h: int, alpha=255) -> np.ndarray:
    """Texels from up to 4 uint8 columns of N values (missing RGB 0, missing alpha ``alpha``)."""
    out = np.zeros((h * w, 4), np.uint8)
    n = len(cols[0])
    for i, c in enumerate(cols):
        out[:n, i] = c
    if len(cols) < 4:
        out[:n, 3] = alpha
    return out.reshape(h, w, 4)


def sog_files(g: Gaussians, palette: int = 4096, sh_iters: int = 10, seed: int = 0,
              generator: str = "da3gs") -> dict[str, bytes]:
    """The files of a SOG of ``g`` (SH degree 0-3): ``{"meta.json": ..., "means_l.webp": ...}``."""
    from da3gs.geometry.sh import sh_degree_from_bases

    n = len(g)
    degree = sh_degree_from_bases(g.sh.shape[1])
    if degree > 3:
        raise InputError(f"SOG stores SH degree 0-3, got degree {degree}")
    means = g.means.detach().cpu().double().numpy()
    order = morton_order(means)
    means = means[order]
    w = max(4, int(math.ceil(math.sqrt(n) / 4)) * 4)
    h = max(4, int(math.ceil(n / w / 4)) * 4)
    files: dict[str, bytes] = {}

    lt = _log_t(means)
    mins, maxs = (lt.min(0), lt.max(0)) if n else (np.zeros(3), np.zeros(3))
    rng = np.where(maxs > mins, maxs - mins, 1.0)
    q16 = np.clip(np.round((lt - mins) / rng * 65535.0), 0, 65535).astype(np.int64) if n else np.zeros((0, 3), np.int64)
    files["means_l.webp"] = _webp(_texture([(q16[:, i] & 0xFF).astype(np.uint8) for i in range(3)], w, h))
    files["means_u.webp"] = _webp(_texture([(q16[:, i] >> 8).astype(np.uint8) for i in range(3)], w, h))

    q = g.quats.detach().cpu().double().numpy()[order]
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0, 0, 0]))
    largest = np.argmax(np.abs(q), axis=1)
    rows = np.arange(n)
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]  # (N, 3)
    small = np.take_along_axis(q, others, axis=1)
    qb = np.clip(np.round(255.0 * (small * _SQRT2 * 0.5 + 0.5)), 0, 255).astype(np.uint8)
    files["quats.webp"] = _webp(_texture([qb[:, 0], qb[:, 1], qb[:, 2], (252 + largest).astype(np.uint8)], w, h))

    log_s = np.log(np.maximum(g.scales.detach().cpu().double().numpy()[order], 1e-30))
    s_code, s_lab = codebook_1d(log_s)
    files["scales.webp"] = _webp(_texture([s_lab[:, 0], s_lab[:, 1], s_lab[:, 2]], w, h))

    sh = g.sh.detach().cpu().float().numpy()[order]
    c_code, c_lab = codebook_1d(sh[:, 0, :])
    opa = np.clip(np.round(g.opacities.detach().cpu().double().numpy()[order] * 255.0), 0, 255).astype(np.uint8)
    files["sh0.webp"] = _webp(_texture([c_lab[:, 0], c_lab[:, 1], c_lab[:, 2], opa], w, h))

    meta = {"version": SOG_VERSION, "asset": {"generator": generator}, "count": n,
            "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": list(_FILES[:2])},
            "scales": {"codebook": s_code.tolist(), "files": ["scales.webp"]},
            "quats": {"files": ["quats.webp"]},
            "sh0": {"codebook": c_code.tolist(), "files": ["sh0.webp"]}}
    if degree and n:
        kc = sh.shape[1] - 1
        # rows: PLY f_rest order (channel-major: R of coefficients 1..K, then G, then B)
        rest = np.ascontiguousarray(sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * kc))
        p = palette_size(n, palette)
        cents, labels = kmeans(rest, p, iters=sh_iters, seed=seed)
        p = len(cents)
        n_code, n_lab = codebook_1d(cents)  # (p, 3 * kc) labels
        lab3 = n_lab.reshape(p, 3, kc).transpose(0, 2, 1)  # (p, kc, 3): coefficient j, colour
        ch = int(math.ceil(p / 64))
        cent_img = np.zeros((ch, 64 * kc, 4), np.uint8)
        e = np.arange(p)
        for j in range(kc):
            cent_img[e // 64, (e % 64) * kc + j, :3] = lab3[:, j, :]
            cent_img[e // 64, (e % 64) * kc + j, 3] = 255
        files["shN_centroids.webp"] = _webp(cent_img)
        labels = labels.astype(np.int64)
        files["shN_labels.webp"] = _webp(_texture([(labels & 0xFF).astype(np.uint8),
                                                   (labels >> 8).astype(np.uint8)], w, h))
        meta["shN"] = {"count": p, "bands": degree, "codebook": n_code.tolist(), "files": list(_SH_FILES)}
    files["meta.json"] = json.dumps(meta).encode()
    return files


def gaussians_from_sog_files(get, name: str = "SOG") -> Gaussians:
    """Decode a SOG whose files ``get(filename) -> bytes`` returns -> float32 CPU ``Gaussians``
    (in the file's texel order)."""
    try:
        meta = json.loads(get("meta.json"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: meta.json is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{name}: meta.json is not a JSON object")
    if meta.get("version") != SOG_VERSION:
        v = meta.get("version", "1 (no 'version' field)")
        raise InputError(f"{name}: SOG version {v} is not supported (version 2 is; re-save it with "
                         "splat-transform)")
    try:
        n = int(meta["count"])
        mins, maxs = np.asarray(meta["means"]["mins"], np.float64), np.asarray(meta["means"]["maxs"], np.float64)
        s_code = np.asarray(meta["scales"]["codebook"], np.float32)
        c_code = np.asarray(meta["sh0"]["codebook"], np.float32)
        f_means, f_quats = meta["means"]["files"], meta["quats"]["files"]
        f_scales, f_sh0 = meta["scales"]["files"], meta["sh0"]["files"]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{name}: meta.json lacks or garbles a field of SOG version 2 ({e!r})") from None
    if len(s_code) != 256 or len(c_code) != 256 or mins.shape != (3,) or maxs.shape != (3,):
        raise InputError(f"{name}: meta.json codebooks must hold 256 values and means mins/maxs 3")

    def tex(fname):
        a = _unwebp(get(fname), f"{name}: {fname}").reshape(-1, 4)
        if len(a) < n:
            raise InputError(f"{name}: {fname} has {len(a)} texels, fewer than count {n}")
        return a[:n]

    lo, hi = tex(f_means[0]).astype(np.int64), tex(f_means[1]).astype(np.int64)
    q16 = (lo[:, :3] | (hi[:, :3] << 8)).astype(np.float64)
    rng = np.where(maxs - mins != 0, maxs - mins, 1.0)
    means = _inv_log_t(mins + rng * (q16 / 65535.0))

    qt = tex(f_quats[0])
    tag = qt[:, 3].astype(np.int64)
    valid = (tag >= 252) & (tag <= 255)
    largest = np.where(valid, tag - 252, 0)
    small = (qt[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / _SQRT2
    q = np.zeros((n, 4))
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    np.put_along_axis(q, others, small, axis=1)
    q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - (q ** 2).sum(1)))
    q[~valid] = [1.0, 0, 0, 0]
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    st = tex(f_scales[0])
    scales = np.exp(s_code[st[:, :3]].astype(np.float64))
    ct = tex(f_sh0[0])
    dc = c_code[ct[:, :3]]
    opa = ct[:, 3].astype(np.float64) / 255.0

    sh = dc[:, None, :].astype(np.float32)
    shn = meta.get("shN")
    if shn:
        try:
            bands, p = int(shn["bands"]), int(shn["count"])
            n_code = np.asarray(shn["codebook"], np.float32)
            f_cent, f_lab = shn["files"]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{name}: meta.json shN lacks or garbles a field ({e!r})") from None
        if bands not in (1, 2, 3) or len(n_code) != 256:
            raise InputError(f"{name}: meta.json shN needs bands 1-3 and a 256-value codebook")
        kc = (bands + 1) ** 2 - 1
        cent = _unwebp(get(f_cent), f"{name}: {f_cent}")
        if cent.shape[1] != 64 * kc or cent.shape[0] * 64 < p:
            raise InputError(f"{name}: {f_cent} is {cent.shape[1]}x{cent.shape[0]}, expected {64 * kc} wide "
                             f"and {math.ceil(p / 64)} high for {p} entries of {bands} bands")
        labels = tex(f_lab)
        lab = labels[:, 0].astype(np.int64) | (labels[:, 1].astype(np.int64) << 8)
        if n and int(lab.max()) >= p:
            raise InputError(f"{name}: {f_lab} indexes palette entry {int(lab.max())} of {p}")
        e = np.arange(p)
        pal = cent[(e // 64)[:, None], (e % 64)[:, None] * kc + np.arange(kc)[None, :], :3]  # (p, kc, 3)
        rest = n_code[pal[lab]]  # (n, kc, 3)
        sh = np.concatenate([sh, rest.astype(np.float32)], axis=1)
    return Gaussians(
        means=torch.from_numpy(means.astype(np.float32)),
        quats=torch.from_numpy(q.astype(np.float32)),
        scales=torch.from_numpy(scales.astype(np.float32)),
        opacities=torch.from_numpy(opa.astype(np.float32)),
        sh=torch.from_numpy(np.ascontiguousarray(sh, dtype=np.float32)),
    )


def read_sog(path) -> Gaussians:
    """Read a SOG: a ``.sog`` bundle (ZIP) or an unbundled folder's ``meta.json`` -> float32 CPU
    ``Gaussians`` (SH degree 0-3, in the file's Morton order)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.name.lower() == "meta.json":
        folder = path.parent

        def get(fname):
            f = folder / fname
            if Path(fname).name != fname or not f.is_file():
                raise InputError(f"{path}: names {fname}, which is not a file beside it")
            return f.read_bytes()

        return gaussians_from_sog_files(get, str(path))
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: not a SOG bundle (not a ZIP file: {e})") from None
    with zf:
        names = {Path(i.filename).name: i.filename for i in zf.infolist()}

        def zget(fname):
            if fname not in names:
                raise InputError(f"{path}: the bundle has no {fname}")
            return zf.read(names[fname])

        return gaussians_from_sog_files(zget, str(path))


def write_sog(path, gaussians: Gaussians, palette: int = 4096) -> Path:
    """Write ``gaussians`` as a SOG: bundled when ``path`` ends in ``.sog`` (one ZIP, written
    atomically), unbundled when it is ``DIR/meta.json`` (``meta.json`` and the WebP images in DIR,
    each written to a temporary name and renamed, ``meta.json`` last; none may exist). Returns
    ``path``."""
    from .atomic import atomic_path, remove_path
    from .ply import check_gaussians

    path = Path(path)
    check_gaussians(gaussians, path)
    files = sog_files(gaussians, palette=palette)
    if path.name.lower() == "meta.json":
        taken = [f for f in files if (path.parent / f).exists()]
        if taken:
            raise InputError(f"{path}: {path.parent / taken[0]} exists; a SOG folder is never written "
                             "over (choose a new folder)")
        done = []
        try:
            for fname in [f for f in files if f != "meta.json"] + ["meta.json"]:
                target = path if fname == "meta.json" else path.parent / fname
                with atomic_path(target) as tmp:
                    Path(tmp).write_bytes(files[fname])
                done.append(target)
        except BaseException:
            for f in done:  # ours: none of them existed before
                remove_path(f)
            raise
        return path
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:  # WebP is compressed already
            for fname in ["meta.json"] + [f for f in files if f != "meta.json"]:
                zf.writestr(fname, files[fname])
    return path
