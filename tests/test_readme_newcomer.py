"""README's first steps (issue 23): copyable install commands, what to do after the demo, and
the CPU flag nerfstudio needs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_first_steps():
    text = (ROOT / "README.md").read_text()
    assert "<repository URL>" not in text and "from\na clone of this repository" in text
    assert ". .venv/bin/activate" in text and "da3gs view out/toy_scene" in text
    assert "--machine.device-type cpu" in text


def test_demo_says_what_next():
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert "da3gs view out/toy_scene" in demo and ". .venv/bin/activate" in demo
