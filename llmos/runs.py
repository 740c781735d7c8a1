"""Run directories: config, metrics.jsonl (appended line by line), plots and report.md."""

from __future__ import annotations

import json
import time
from pathlib import Path

from llmos.common import atomic_write, atomic_write_text, write_json


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of metrics.jsonl; a last line cut short by a crash is ignored."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def append_metrics(run_dir: str | Path, rows: list[dict]) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop rows after `step` (a resumed run rewrites them)."""
    rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def plot_curves(run_dir: str | Path, keys: list[str], out_name: str = "loss.png") -> Path:
    """One PNG with a line per metric key against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        if pts:
            ax.plot(*zip(*pts), label=k, marker="o" if len(pts) < 30 else None)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / out_name
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def run_stage(out: Path, run) -> float | None:
    """Run a training stage unless it finished before; resume it if it was interrupted. The
    seconds it took (kept in the stage's `stage_time.json`, so a rerun that skips it still
    reports it), or None if it was stopped (Ctrl-C) before finishing."""
    took = out / "stage_time.json"
    if (out / "report.md").exists():
        print(f"{out}: finished before, skipped")
        return json.loads(took.read_text())["seconds"] if took.exists() else 0.0
    t = time.time()
    run(resume=(out / "train_state.pt").exists())
    if not (out / "report.md").exists():
        print(f"{out}: stopped; run the same command again to continue")
        return None
    write_json(took, {"seconds": time.time() - t})
    return time.time() - t
