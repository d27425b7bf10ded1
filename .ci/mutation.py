"""Mutation testing of the rules a wrong line of which would silently hurt a federation: a report, not a CI gate.

    pip install mutmut==3.8.1 && python .ci/mutation.py [--out DIR] [--modules federated/aggregation_rules.py ...]

mutmut 3 mutates the functions of each module (an operator, a constant, a comparison, an argument at a
time), runs the unit tests that reach the mutated function against each mutant, and counts a mutant
*killed* when a test fails. mutmut imports the package from its ``mutants/`` copy of the working folder,
so this builds one (the package, the tests, the jobs and deployments they read) in ``--out``; the repository is not touched.
Prints the score per module and writes ``mutation.md`` and ``mutation.json`` there; the surviving
mutants (``mutmut results`` in ``--out``) are the lines no test checks. About 30-60 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The modules and the unit tests that check them (fast ones: mutmut runs them once per mutant that reaches them).
MODULES = {
    "federated/aggregation_rules.py": ["test_aggregation.py", "test_robust_aggregation.py", "test_rank_bands.py"],
    "model/presets.py": ["test_presets.py", "test_filter.py"],
    "federated/site_policy.py": ["test_site_policy.py"],
    "federated/filters.py": ["test_filter.py", "test_site_policy.py"],
    "federated/transport.py": ["test_transport.py"],
    "training/schedule.py": ["test_schedule.py"],
    "training/schema.py": ["test_settings.py", "test_bad_input_properties.py"],
}
PYPROJECT = """\
[tool.mutmut]
source_paths = ["flap_sam"]
only_mutate = {only}
also_copy = ["jobs", "poc", "provisioning", "custom"]
pytest_add_cli_args = ["-p", "no:xdist", "-p", "no:cacheprovider", "-m", "not slow", "-q"]
pytest_add_cli_args_test_selection = {tests}

[tool.pytest.ini_options]
markers = ["slow: takes more than a few seconds", "xdist_group: run on one worker (no workers here)"]
"""


def build_workspace(out: Path, modules: list[str]) -> None:
    """``out``: the package, the tests and the jobs, with mutmut's settings for ``modules``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(REPO / "custom" / "flap_sam", out / "flap_sam", ignore=shutil.ignore_patterns("__pycache__"))  # shipped_jobs as files
    shutil.copytree(REPO / "tests", out / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("jobs", "poc", "provisioning"):  # what the tests read from the repository
        shutil.copytree(REPO / folder, out / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # the package's files as the tests read them from the repository (imports find the mutated copy first)
    shutil.copytree(out / "flap_sam", out / "custom" / "flap_sam")
    tests = sorted({f"tests/{t}" for m in modules for t in MODULES[m]})
    only = [f"flap_sam/{m}" for m in modules]
    (out / "pyproject.toml").write_text(PYPROJECT.format(only=json.dumps(only), tests=json.dumps(tests)), encoding="utf-8")


def scores(results: str) -> dict[str, Counter]:
    """``mutmut results --all true`` lines -> module -> {status: count}."""
    by_module: dict[str, Counter] = {}
    for line in results.splitlines():
        match = re.match(r"\s*(flap_sam\.[\w.]+?)\.x[_ǁ]?\w*__mutmut_\d+: (\w[\w ]*)$", line)
        if match:
            by_module.setdefault(match.group(1), Counter())[match.group(2)] += 1
    return by_module


def report(by_module: dict[str, Counter], seconds: float) -> tuple[str, dict]:
    rows, record = [], {"seconds": round(seconds), "modules": {}}
    for module, counts in sorted(by_module.items()):
        total = sum(n for status, n in counts.items() if status != "not checked")  # a run stopped early leaves some unchecked
        if total == 0:
            continue
        killed = counts["killed"] + counts.get("timeout", 0)
        record["modules"][module] = {**counts, "killed": killed, "total": total}  # killed: a test failed or timed out
        rows.append(
            f"| {module} | {killed} / {total} | {killed / total:.0%} | {', '.join(f'{k} {v}' for k, v in sorted(counts.items()) if k != 'killed')} |"
        )
    killed = sum(m["killed"] for m in record["modules"].values())
    total = sum(m["total"] for m in record["modules"].values())
    table = "\n".join(
        [
            "| module | killed / mutants | score | the rest |",
            "|---|---|---|---|",
            *rows,
            f"| **all** | {killed} / {total} | {killed / max(total, 1):.0%} | |",
        ]
    )
    return table, record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/flap_sam_mutation", help="the working copy mutmut runs in (emptied first)")
    parser.add_argument("--modules", nargs="+", default=list(MODULES), choices=list(MODULES), help="modules under flap_sam/ to mutate")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    out = Path(args.out)
    build_workspace(out, args.modules)
    started = time.monotonic()
    mutmut = [sys.executable, "-m", "mutmut"]
    run = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children)], cwd=out)
    if run.returncode != 0:
        print(f"mutmut run failed ({run.returncode}); its log is above", file=sys.stderr)
        return run.returncode
    results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=out, capture_output=True, text=True, check=True).stdout
    table, record = report(scores(results), time.monotonic() - started)
    (out / "mutation.md").write_text(table + "\n", encoding="utf-8")
    (out / "mutation.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(table)
    print(f"\n{out}/mutation.md; the survivors: cd {out} && python -m mutmut results (python -m mutmut show NAME: the diff)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
