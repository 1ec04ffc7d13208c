"""benchmarks/gpu_report.py --dry-run on the CPU: the one-shot GPU report's every check and every
workload run (Triton interpreter, tiny sizes, one round) and write the files a GPU run writes,
so the script is proven before a GPU ever sees it."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_report_dry_run_writes_every_case(tmp_path):
    sys.path.insert(0, ROOT)
    from benchmarks.gpu_report import CHECKS, WORKLOADS
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_report.py"),
                           "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    report = json.loads((tmp_path / "report.json").read_text())
    markdown = (tmp_path / "report.md").read_text()
    assert report["dry_run"] and "DRY RUN" in markdown

    # The checks ran for every timed binary and passed against the float64 reference.
    checked = {" ".join(c["what"].split()[:2]) for c in report["checks"]}
    assert {f"{kind} {'fp16' if p == 'bf16' else p}" for kind, _, _, p in CHECKS} <= checked
    assert all(c["ok"] for c in report["checks"]), [c for c in report["checks"] if not c["ok"]]

    # Every provider of every workload was set up and timed, or skipped with its reason.
    by_case = {}
    for row in report["rows"]:
        by_case.setdefault((row["workload"], row["provider"]), {}).update(row)
    for workload, (_, _, _, precision, providers, _) in WORKLOADS.items():
        losses = []
        for provider in providers:
            row = by_case.get((workload, provider))
            assert row is not None, f"{workload} | {provider}: no row"
            if "error" in row:
                assert provider == "native" and row["error"].startswith("skipped"), row
                continue
            assert row["rounds"] == 1 and row["median_s"] > 0, row
            losses.append(row["first_step_loss"])
            assert f"| {workload} | {provider} |" in markdown
        # Same weights, codes and target: every provider's first step sees the same loss, up to
        # rounding (fp16 stands in for bf16 in the dry run).
        tolerance = 1e-2 if precision == "bf16" else 1e-4
        assert max(losses) - min(losses) <= tolerance * max(losses), (workload, losses)
    # The torch.compile finding runs last, outside the gate; on the CPU it says why it did not run.
    assert [c["ok"] for c in report["compiled"]] == [None], report["compiled"]
    assert "SKIP compiled train fp32: skipped: needs a CUDA GPU" in markdown
    triton_row = by_case[("train 64x32x32 tf32", "triton")]
    assert triton_row["launches"]["triton"] > 0
