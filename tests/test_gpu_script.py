"""`benchmarks/gpu.sh --small`: the accelerator benchmark's code path, on CPU in seconds."""

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_small_mode(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    # No timeout and no budget: on a loaded machine the small mode is slower, never different.
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--small", "--out", str(out)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["machine"]["platform"] == "cpu"
    assert doc["budget_s"] is None  # --small: no clock can truncate or time out a phase
    acdc = doc["acdc"]
    assert not acdc["truncated"]
    assert acdc["edge_tests"] > 0 and acdc["edges_per_s"] > 0
    assert 0 < acdc["edges_kept"] < acdc["edges_total"]
    assert acdc["achieved_flops_per_s"] > 0 and acdc["tau"] > 0
    assert acdc["compile"]["functions"] == 1 and not acdc["compile"]["errors"]
    assert acdc["stages_visited"] > 1  # one compiled evaluator served several stages
    for name in ("acdc", "eap", "sp"):
        memory = doc[name]["memory"]
        assert 0.5 < memory["predicted_over_xla"] < 2.0, (name, memory)
        assert doc[name]["peak_memory"]
    versus = doc["scan_vs_unrolled"]
    assert "error" not in versus and versus["max_metric_diff"] < 1e-5
    assert versus["scan_call_ms"] > 0 and versus["unrolled_call_ms"] > 0
    assert doc["eap"]["edges_scored_per_s"] > 0
    assert doc["sp"]["steps_per_s"] > 0 and len(doc["sp"]["lambdas"]) >= 2
    assert "error" not in doc["eap"] and "error" not in doc["sp"]
