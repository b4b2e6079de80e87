"""What every benchmark records beside its numbers, and how it writes them."""

import json
import os
import platform
import time
from pathlib import Path


def header(benchmark: str) -> dict:
    """The start of a results document: the script, the date, the machine, the load average."""
    import jax

    return {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "jax": jax.__version__, "backend": jax.default_backend()},
            "load_before": os.getloadavg()}  # fmt: skip


def write(doc: dict, out: str | os.PathLike) -> Path:
    """Adds the load average after the run and writes `doc` as JSON atomically (a temp file,
    then a rename), so an interrupted benchmark never leaves a truncated results file."""
    doc["load_after"] = os.getloadavg()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return out
