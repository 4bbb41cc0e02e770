"""``python -m locat_bench.resources``: every kernel of the LocAt layer compiled for sm_90 on this
machine (no GPU), with ptxas's registers, spills and shared memory per launch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="this triton ships no cuobjdump")
def test_reports_each_kernels_resources(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = tmp_path / "res.json"
    done = subprocess.run([sys.executable, "-m", "locat_bench.resources", "--shapes", "2,2,4,4,1,16", "--rate", "2",
                           "--override", "backward_dkdv=32,32,4,2", "--output", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["gaug_forward", "forward", "backward_dq", "backward_dkdv", "gaug_backward"]
    for r in rows:
        assert 16 <= r["regs"] <= 255 and r["stack"] >= 0 and r["shared"] > 0, r
    dkdv = rows[3]
    assert dkdv["config"] == [32, 32, 4, 2] and dkdv["flags"]["RATE"] == 2  # the override and the rate arrive


def test_refuses_bad_arguments_by_name():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    for args, message in ((["--shapes", "2,2,4"], "a shape is B,H,gh,gw,P,D"),
                          (["--shapes", "2,2,4,4,1,16", "--override", "dq=1,2"], "--override takes")):
        done = subprocess.run([sys.executable, "-m", "locat_bench.resources", *args], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
