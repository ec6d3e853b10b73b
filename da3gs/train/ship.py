"""Shipping weights: the fp16 export of a candidate, its checks, the atomic replacement of the
shipped folder (``da3gs/weights/mini``) when the gate says so, and the ledger of
docs/training.md.

* :func:`export_fp16` writes a candidate (any :func:`da3gs.train.gate.resolve_source`: a run
  folder's newest checkpoint, a checkpoint's EMA ``model.safetensors``, a model folder) as
  ``config.json`` + fp16 ``model.safetensors`` into a new folder, atomically.
* :func:`check_model_dir` refuses a folder over :data:`MAX_BYTES`, one whose tensors are not all
  fp16 and finite, or one that ``da3gs.load_model`` cannot load or whose outputs (depth,
  cameras, Gaussians on two random views) are not finite.
* :func:`ship` ties them to the gate: the exported folder is what the gate measured (the
  report's candidate ``sha256`` must equal the export's, and its shipped ``sha256`` the folder
  being replaced), and the folder is swapped in (temporary sibling, then renames: the old folder
  stays whole until the new one is in place) only when the report's decision is ``ship``.
  Either way one row is appended to the ledger.
* :func:`run_stats` reads GPU minutes, steps and images seen of a stretch from runs'
  ``metrics.jsonl`` (``elapsed_s`` and ``images_seen`` of the train records).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import torch

from da3gs.train.gate import (GATE_VERSION, ROWS, GateError, fp16_state, load_candidate,
                              state_hash)

__all__ = ["MAX_BYTES", "ShipError", "export_fp16", "check_model_dir", "replace_weights",
           "run_stats", "ledger_row", "append_ledger", "ship"]

MAX_BYTES = 16_000_000
"""Largest shipped ``model.safetensors`` (the project's 16 MB limit; tests/models/test_bundled)."""

LEDGER_HEADING = "## Ledger"
LEDGER_INTRO = (
    "One row per training stretch of the campaign (see \"Campaign\" above): GPU minutes, "
    "optimizer steps and images seen in the stretch, the candidate's gate numbers on the "
    "headline rows (gate v{v}; full reports in the JSON each gate writes), the headline score "
    "(summed gain over the shipped model in tolerance units) and whether it shipped. Rows are "
    "appended by `scripts/ship_model.py`; stretch 0 is the shipped model before the campaign.")
LEDGER_COLUMNS = ["date", "stretch", "GPU min", "steps", "images seen"] + \
    ["fern PSNR pc", "ICL PSNR pc", "lego PSNR pc", "proc PSNR pc", "fern PSNR pf",
     "fern AUC@30", "ICL AbsRel"] + ["score", "shipped", "note"]
_HEADLINE = [r for r in ROWS if r.headline]
assert len(_HEADLINE) == 7, "LEDGER_COLUMNS name the seven headline rows of gate.ROWS"


class ShipError(GateError):
    """The candidate cannot be exported or shipped (too large, not finite, report mismatch)."""


def export_fp16(source: str | Path, out: str | Path, note: str = "",
                extra: dict | None = None) -> dict:
    """Write ``source`` as a model folder ``out`` (``config.json`` + fp16 ``model.safetensors``,
    each tied tensor once), atomically; ``out`` must not exist. Returns the folder's
    ``config.json`` contents (with ``sha256``, the :func:`~da3gs.train.gate.state_hash` of the
    fp16 tensors)."""
    from safetensors.torch import save_file

    from da3gs.io.atomic import atomic_dir

    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ShipError(f"{out}: already exists; not overwriting (choose a new folder)")
    model, info = load_candidate(source, "cpu")
    state = fp16_state(model.net)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ShipError(f"{source}: {len(bad)} tensors not finite in fp16 (NaN, or beyond "
                        f"fp16's range; e.g. {bad[0]})")
    step = info.get("step")
    meta = {"da3gs_preset": model.preset.name, "da3gs_gs_geometry": model.gs_geometry}
    if step is not None:
        meta["step"] = str(step)
    cfg = {"format": "da3gs", "preset": model.preset.name, "gs_geometry": model.gs_geometry,
           "step": step, "weights": info.get("weights", "ema"), "name": "da3gs-mini",
           "license": "Apache-2.0", "dtype": "float16", "trained": note or "",
           "source": info.get("checkpoint", info["source"]), "sha256": state_hash(state)}
    cfg.update(extra or {})
    with atomic_dir(out) as tmp:
        save_file(state, str(Path(tmp) / "model.safetensors"), metadata=meta)
        (Path(tmp) / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return cfg


def check_model_dir(folder: str | Path, max_bytes: int | None = None) -> dict:
    """Check a folder about to ship (module docstring; ``max_bytes`` default
    :data:`MAX_BYTES`); returns ``{"bytes", "sha256"}``."""
    from safetensors import safe_open

    from da3gs.errors import Da3gsError
    from da3gs.models.loading import load_model

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file() or not (folder / "config.json").is_file():
        raise ShipError(f"{folder}: needs config.json and model.safetensors")
    size = weights.stat().st_size
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    if size > max_bytes:
        raise ShipError(f"{weights}: {size / 1e6:.2f} MB is over the {max_bytes / 1e6:.0f} MB "
                        "limit of shipped weights")
    with safe_open(str(weights), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    dtypes = {str(v.dtype) for v in state.values() if v.is_floating_point()}
    if dtypes != {"torch.float16"}:
        raise ShipError(f"{weights}: expected fp16 tensors only, found {sorted(dtypes)}")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ShipError(f"{weights}: non-finite weights")
    try:
        model = load_model(str(folder), device="cpu")
    except Da3gsError as e:
        raise ShipError(f"{folder}: load_model fails: {e}") from None
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 56, 56, generator=g)
    with torch.no_grad():
        pred = model.infer(images, process_res=56, precision="fp32",
                           infer_gs=model.has_gs_head)
    outs = [pred.depth, pred.c2w, pred.K]
    if pred.gaussians is not None:
        gs = pred.gaussians
        outs += [gs.means, gs.scales, gs.opacities, gs.sh, gs.quats]
    if not all(t is not None and bool(torch.isfinite(t).all()) for t in outs):
        raise ShipError(f"{folder}: non-finite outputs on random views")
    return {"bytes": size, "sha256": state_hash(state)}


def replace_weights(new: Path, dest: Path) -> None:
    """Put the finished folder ``new`` at ``dest`` (a sibling of it: same file system), the old
    ``dest`` renamed aside first and removed only once ``new`` is in place
    (:func:`da3gs.io.atomic.replace_dir`)."""
    from da3gs.io.atomic import replace_dir

    new, dest = Path(new), Path(dest)
    if new.resolve().parent != dest.resolve().parent:
        raise ShipError(f"{new}: must be a sibling of {dest} (an atomic rename)")
    replace_dir(new, dest)


# ---------------------------------------------------------------- run statistics

def run_stats(metrics_files: list[str | Path], since_step: int = 0) -> dict:
    """GPU minutes, steps and images seen of the train records past ``since_step`` in runs'
    ``metrics.jsonl`` files, summed over the files (e.g. a stretch's stage-1 and stage-2
    runs). Minutes: ``elapsed_s`` counts from each process's start (set-up included) and
    restarts at a resume, so each process contributes its last value (less its value at
    ``since_step``): training until the last log, not the final checkpoint or evaluation (a
    lower bound). Images: the growth of ``images_seen`` (runs that did not log it: None)."""
    minutes, steps, images, have_images = 0.0, 0, 0, True
    for path in metrics_files:
        path = Path(path)
        path = path / "metrics.jsonl" if path.is_dir() else path
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise ShipError(f"{path}: cannot read ({e.strerror or e})") from None
        recs = []
        for ln in lines:
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("kind") == "train" and "step" in rec:
                recs.append(rec)
        segments: list[list[dict]] = []
        for rec in recs:  # a process per segment: elapsed_s falls at a resume
            el = rec.get("elapsed_s")
            if not segments or (el is not None and segments[-1][-1].get("elapsed_s") is not None
                                and el < segments[-1][-1]["elapsed_s"]):
                segments.append([])
            segments[-1].append(rec)
        for seg in segments:
            els = [(int(r["step"]), r["elapsed_s"]) for r in seg if r.get("elapsed_s") is not None]
            after = [e for s, e in els if s > since_step]
            before = [e for s, e in els if s <= since_step]
            if after:
                minutes += (max(after) - (max(before) if before else 0.0)) / 60.0
        last = max([int(r["step"]) for r in recs] + [since_step])
        steps += last - since_step
        seen = [(int(r["step"]), r["images_seen"]) for r in recs
                if r.get("images_seen") is not None]
        if not any(s > since_step for s, _ in seen):
            have_images = False
        else:
            im0 = max([v for s, v in seen if s <= since_step], default=0)
            images += int(max(v for s, v in seen if s > since_step) - im0)
    return {"gpu_minutes": round(minutes, 1), "steps": steps,
            "images": images if have_images else None}


# ---------------------------------------------------------------- the ledger

def _cell(v, fmt: str = "{}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def ledger_row(report: dict | None, stretch, gpu_minutes=None, steps=None, images=None,
               shipped: bool = False, note: str = "", date: str | None = None) -> list[str]:
    """The cells of one ledger row: the candidate's headline values of ``report``."""
    vals = {}
    if report is not None:
        vals = {r["key"]: r["candidate"] for r in report["rows"]}
    cells = [date or time.strftime("%Y-%m-%d"), str(stretch),
             _cell(gpu_minutes, "{:.1f}" if isinstance(gpu_minutes, float) else "{}"),
             _cell(steps, "{:,}"), _cell(images, "{:,}")]
    for r in _HEADLINE:
        cells.append(_cell(vals.get(r.key), "{:.2f}" if r.kind == "psnr" else "{:.3f}"))
    score = report["decision"]["headline_score"] if report is not None else None
    cells += [_cell(score, "{:+.2f}"), "**yes**" if shipped else "no",
              note.replace("|", "/").replace("\n", " ")]
    return cells


def _table_line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ledger_stretches(lines: list[str], start: int) -> list[int]:
    out = []
    for ln in lines[start:]:
        if ln.startswith("## ") and not ln.startswith(LEDGER_HEADING):
            break
        m = re.match(r"^\|\s*[^|]*\|\s*(\d+)\s*\|", ln)
        if m:
            out.append(int(m.group(1)))
    return out


def next_stretch(doc: str | Path) -> int:
    """1 + the largest stretch number in the ledger of ``doc`` (0 when it has none)."""
    doc = Path(doc)
    lines = doc.read_text().splitlines() if doc.is_file() else []
    idx = next((i for i, ln in enumerate(lines) if ln.strip() == LEDGER_HEADING), None)
    found = _ledger_stretches(lines, idx + 1) if idx is not None else []
    return max(found) + 1 if found else 0


def append_ledger(doc: str | Path, cells: list[str]) -> None:
    """Append one row to the ledger table of ``doc`` (the section ``## Ledger``, created at the
    end of the file with its header when absent), atomically."""
    from da3gs.io.atomic import atomic_path

    doc = Path(doc)
    if not doc.is_file():
        raise ShipError(f"{doc}: no such file (the ledger lives in docs/training.md)")
    if len(cells) != len(LEDGER_COLUMNS):
        raise ShipError(f"ledger row: {len(cells)} cells for {len(LEDGER_COLUMNS)} columns")
    lines = doc.read_text().splitlines()
    idx = next((i for i, ln in enumerate(lines) if ln.strip() == LEDGER_HEADING), None)
    if idx is None:
        while lines and not lines[-1].strip():
            lines.pop()
        import textwrap

        idx = len(lines) + 1
        lines += ["", LEDGER_HEADING, ""] + textwrap.wrap(LEDGER_INTRO.format(v=GATE_VERSION),
                                                          96) + \
            ["", _table_line(LEDGER_COLUMNS), _table_line(["---"] * len(LEDGER_COLUMNS))]
    end = next((i for i in range(idx + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    table = [i for i in range(idx + 1, end) if lines[i].startswith("|")]
    if not table:  # a heading without a table: add the header
        at = end
        while at > idx + 1 and not lines[at - 1].strip():
            at -= 1
        lines[at:at] = ["", _table_line(LEDGER_COLUMNS),
                        _table_line(["---"] * len(LEDGER_COLUMNS))]
        table = [at + 1, at + 2]
    lines.insert(table[-1] + 1, _table_line(cells))
    with atomic_path(doc) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- ship

def _temp_sibling(dest: Path, tag: str) -> Path:
    import uuid

    return dest.parent / f".{dest.name}.{tag}-{uuid.uuid4().hex[:8]}"


def folder_sha256(folder: str | Path) -> str:
    """:func:`~da3gs.train.gate.state_hash` of a model folder's ``model.safetensors`` tensors
    as stored (the hash the gate reports for a model loaded from it, fp16 files)."""
    from safetensors import safe_open

    try:
        with safe_open(str(Path(folder) / "model.safetensors"), "pt") as f:
            return state_hash({k: f.get_tensor(k) for k in f.keys()})
    except Exception as e:  # safetensors raises several types on bad files
        raise ShipError(f"{folder}: unreadable model.safetensors ({e})") from None


def report_problems(report: dict, candidate_sha: str, shipped_sha: str,
                    allow_reduced: bool = False) -> list[str]:
    """Why ``report`` does not allow shipping the weights ``candidate_sha`` over ``shipped_sha``
    (empty: it does): another gate version, a reduced check set (unless ``allow_reduced``),
    other weights on either side, or the decision itself."""
    out = []
    models = report.get("models", {})
    if report.get("gate_version") != GATE_VERSION:
        out.append(f"gate report of version {report.get('gate_version')}, this gate is "
                   f"v{GATE_VERSION}")
    if not report.get("full_protocol") and not allow_reduced:
        out.append("gate report on a reduced check set (not the versioned one)")
    cand = models.get("candidate", {}).get("sha256")
    if cand != candidate_sha:
        out.append(f"the gate measured other weights (sha256 {cand}) than the export "
                   f"({candidate_sha})")
    ship_sha = models.get("shipped", {}).get("sha256")
    if ship_sha != shipped_sha:
        out.append(f"the gate compared against other shipped weights (sha256 {ship_sha}) than "
                   f"the weights folder holds ({shipped_sha})")
    dec = report.get("decision", {})
    if not dec.get("ship"):
        out += list(dec.get("reasons") or ["the gate says don't ship"])
    return out


def gate_where(report: dict | None) -> str:
    """``"gate on DEVICE, proc set SHA"``: where a report's numbers come from (the CPU and the
    GPU differ a little; a generator change alters the procedural set), for the ledger."""
    if not report or "device" not in report:
        return ""
    proc = report.get("check_set", {}).get("sets", {}).get("procedural", {}).get("sha256")
    return f"gate on {report['device']}" + (f", proc set {proc[:8]}" if proc else "")


def ship(candidate: str | Path, weights_dir: str | Path, report: dict | None = None,
         gate_kwargs: dict | None = None, ledger: str | Path | None = None,
         stretch: int | None = None, stats: dict | None = None, note: str = "",
         allow_reduced: bool = False, log=print) -> dict:
    """Export ``candidate`` as fp16, check it, gate it (``report`` from an earlier
    :func:`~da3gs.train.gate.run_gate` of the *same* weights, else the gate runs now on the
    export against ``weights_dir``, with ``gate_kwargs``), replace ``weights_dir`` only when
    the decision is ``ship``, and append the ledger row (``ledger``: docs/training.md).
    Returns ``{"shipped", "report", "reasons", "row"}``. A report of another gate version, a
    reduced check set (unless ``allow_reduced``) or other weights is refused: nothing ships,
    and the ledger row says why."""
    from da3gs.io.atomic import remove_path
    from da3gs.train.gate import run_gate

    weights_dir = Path(weights_dir)
    if not (weights_dir / "model.safetensors").is_file():
        raise ShipError(f"{weights_dir}: not a model folder (no model.safetensors)")
    current = folder_sha256(weights_dir)
    stats = stats or {}
    n = stretch if stretch is not None else (next_stretch(ledger) if ledger is not None else None)
    trained = note or (f"campaign stretch {n}: " if n is not None else "") + ", ".join(
        f"{k.replace('_', ' ')} {v}" for k, v in stats.items() if v is not None) + \
        " (docs/training.md, Ledger)"
    tmp = _temp_sibling(weights_dir, "new")
    shipped, reasons = False, []
    try:
        checked = None
        try:
            cfg = export_fp16(candidate, tmp, note=trained)
            checked = check_model_dir(tmp)
        except ShipError as e:  # unusable weights: recorded, never shipped
            reasons.append(str(e))
        if checked is not None:
            if report is None:
                report = run_gate(str(tmp), shipped=str(weights_dir), log=log,
                                  **(gate_kwargs or {}))
            reasons += report_problems(report, checked["sha256"], current, allow_reduced)
        if not reasons:
            replace_weights(tmp, weights_dir)
            shipped = True
            reasons = list(report["decision"]["reasons"])
            log(f"shipped: {weights_dir} now holds {cfg['source']} (sha256 {cfg['sha256']})")
        else:
            log("not shipped: " + "; ".join(reasons))
    finally:
        if not shipped:
            remove_path(tmp)
    row = None
    if ledger is not None:
        why = note or ""
        where = gate_where(report)
        if where:
            why = (why + "; " if why else "") + where
        if not shipped:
            text = "; ".join(reasons)
            why = (why + "; " if why else "") + "not shipped: " + (
                text if len(text) <= 300 else text[:297] + "...")
        row = ledger_row(report, n, stats.get("gpu_minutes"), stats.get("steps"),
                         stats.get("images"), shipped, why)
        append_ledger(ledger, row)
    return {"shipped": shipped, "report": report, "reasons": reasons, "row": row}
