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
                           "--override", "backward_dkdv=32,32,4,2", "--switch", "FACTORED_DKDV=False", "--loops",
                           "--output", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["gaug_forward", "forward", "backward_dq", "backward_dkdv", "gaug_backward"]
    for r in rows:
        assert 16 <= r["regs"] <= 255 and r["stack"] >= 0 and r["shared"] > 0 and r["programs_per_sm"] >= 1, r
    dkdv = rows[3]
    # the override, the rate and the switch arrive (bf16 on a 4-wide grid would take the factored Gaussian)
    assert dkdv["config"] == [32, 32, 4, 2] and dkdv["flags"]["RATE"] == 2 and not dkdv["flags"]["FACTORED"]
    for r in rows[1:4]:  # --loops: each attention kernel's far / near / far sweep, the near range the heaviest
        loops = [loop["instructions"] for loop in r["loops"]]
        assert len(loops) >= 3 and max(loops) > min(loops) > 0, (r["kernel"], r["loops"])
        assert all(sum(loop["opcodes"].values()) <= loop["instructions"] for loop in r["loops"])


def test_programs_per_sm_follow_registers_shared_memory_and_warps():
    """The counts that v33's reading rests on (sm_90): 4 warps of 168 registers fit three programs, of 178 two; 8
    warps of 144 one, of 122 two; shared memory or warps bound where registers do not."""
    from locat_bench.resources import programs_per_sm

    kib = 1024
    assert [programs_per_sm(r, 4, 60 * kib) for r in (118, 156, 168, 169, 178, 201, 255)] == [3, 3, 3, 2, 2, 2, 2]
    assert [programs_per_sm(r, 8, 68 * kib) for r in (144, 128, 122)] == [1, 2, 2]
    assert programs_per_sm(118, 4, 36 * kib) == 4  # registers: 15360 a program; shared memory would allow 6
    assert programs_per_sm(32, 4, 200 * kib) == 1 and programs_per_sm(32, 4, 0) == 16  # shared; warps (64 / 4)
    assert programs_per_sm(32, 1, 0) == 32 and programs_per_sm(64, 4, 0, arch=75) is None  # the cap; unknown arch


def test_sass_loops_reads_back_edges():
    """A listing with one forward and two backward branches (a loop inside a loop): two loops, their
    bodies counted from the branch target to the branch, opcodes without predicates or modifiers."""
    from locat_bench.resources import sass_loops

    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   FFMA R2, R3, R4, R5 ;
        /*0020*/               @P0 FMUL.FTZ R2, R2, R2 ;
        /*0030*/               @P1 BRA 0x10 ;
        /*0040*/              @!P2 BRA 0x60 ;
        /*0050*/                   MUFU.EX2 R2, R2 ;
        /*0060*/                   BRA 0x0 ;
        /*0070*/                   EXIT ;
    """
    assert sass_loops(sass) == [dict(instructions=3, opcodes={"FFMA": 1, "FMUL": 1, "BRA": 1}),
                                dict(instructions=7, opcodes={"BRA": 3, "MOV": 1, "FFMA": 1, "FMUL": 1, "MUFU": 1})]


def test_sass_hash_names_the_instructions_only():
    """Listings that differ in headers and encodings hash alike; one changed instruction or address does not."""
    from locat_bench.resources import sass_hash

    body = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                /* 0x00000a0000017a02 */
        /*0010*/                   FFMA R2, R3, R4, R5 ;
        /*0020*/                   EXIT ;
    """
    header = "\n\tFunction : _forward_kernel\n\t.headerflags @\"EF_CUDA_SM90\""
    same = header + body.replace("0x00000a0000017a02", "0x1")
    assert sass_hash(body) == sass_hash(same) and len(sass_hash(body)) == 12
    assert sass_hash(body) != sass_hash(body.replace("R5", "R6"))
    assert sass_hash(body) != sass_hash(body.replace("/*0020*/", "/*0030*/"))


def test_refuses_bad_arguments_by_name():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    for args, message in ((["--shapes", "2,2,4"], "a shape is B,H,gh,gw,P,D"),
                          (["--shapes", "2,2,4,4,1,16", "--override", "dq=1,2"], "--override takes"),
                          (["--shapes", "2,2,4,4,1,16", "--switch", "NO_SUCH=1"], "no switch 'NO_SUCH'"),
                          (["--shapes", "2,2,4,4,1,16", "--switch", "GRID_TILES=True,False"], "one value")):
        done = subprocess.run([sys.executable, "-m", "locat_bench.resources", *args], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
