"""The README's bring-your-own-prompts example runs verbatim (and matches examples/)."""

import os
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Your own prompts") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_the_example_file_and_runs(tmp_path):
    snippet = _readme_snippet()
    example = (ROOT / "examples" / "own_prompts.py").read_text(encoding="utf-8")
    start, end = "# --- README example start ---\n", "# --- README example end ---"
    assert snippet == example[example.index(start) + len(start) : example.index(end)]
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert re.search(r"ACDC kept \d+ of 58 edges", out.stdout), out.stdout
    assert "EAP-IG kept 10 edges" in out.stdout
