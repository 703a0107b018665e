"""Smoke test of the load benchmark (`tools/loadtest.py`): two calls, a few seconds, both systems.

It checks that the harness runs end to end and that its report is well formed, never the timings:
they depend on the machine, and on what else it is doing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LATENCIES = (
    "uplink_ms",
    "downlink_ms",
    "first_chunk_ms",
    "interrupted_to_clear_ms",
    "pacing_jitter_ms",
)


def test_two_calls_against_both_systems_give_a_well_formed_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    tool = str(ROOT / "tools" / "loadtest.py")
    run = subprocess.run(
        [sys.executable, tool, "--calls", "2", "--seconds", "4", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "bare relay" in run.stdout and "phone-agent" in run.stdout
    assert "CPU-s per call-minute" in run.stdout

    report: dict[str, Any] = json.loads(out.read_text())
    assert report["machine"]["nproc"] >= 1 and report["machine"]["date"]
    assert report["params"]["calls"] == 2
    assert set(report["systems"]) == {"relay", "phone_agent"}
    for name, system in report["systems"].items():
        assert system["calls"] == 2, name
        assert system["calls_failed"] == 0 and system["calls_unmatched"] == 0, system["errors"]
        assert system["cpu_s_per_call_minute"] > 0, name
        assert system["rss_idle_mib"] > 0, name
        # Both directions carried audio, and every call started with a reply.
        assert system["uplink_ms"]["n"] > 0 and system["downlink_ms"]["n"] > 0, name
        assert system["first_chunk_ms"]["n"] > 0, name
        for key in LATENCIES:
            stat = system[key]
            assert set(stat) == {"p50", "p99", "n"}, (name, key)
            if stat["n"]:
                assert 0 <= stat["p50"] <= stat["p99"], (name, key, stat)
    ratios = report["ratios"]
    assert ratios["cpu_s_per_call_minute"] > 0
    assert set(report["targets"]) >= {"cpu_ratio_le_1_5", "first_chunk_p99_le_20_ms"}
