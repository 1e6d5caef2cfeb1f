"""DistributedDataParallel through fit: two CPU ranks over gloo, launched as subprocesses."""

from __future__ import annotations

import glob
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from mixture_density.training import fit

SCRIPT = Path(__file__).with_name("_ddp_script.py")
pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed/gloo"
)


def _script_module() -> Any:
    spec = importlib.util.spec_from_file_location("_ddp_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # One thread per rank: the machine is shared; a short timeout so that nothing can hang.
    env.pop("MDN_TEST_KILL_RANK", None)
    env.update({"OMP_NUM_THREADS": "1", "MIXTURE_DENSITY_DIST_TIMEOUT": "30", **extra})
    return env


def _strip(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_torchrun_two_ranks_masked_sequences(tmp_path: Path) -> None:
    """With a mask, each rank's loss is divided by the ranks' mean count of observed entries,
    so that two ranks take the step of the masked mean over the global minibatch."""
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    cmd += ["2", str(SCRIPT), str(out)]
    proc = subprocess.run(
        cmd, env=_env(MDN_TEST_MASK="1"), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    script = _script_module()
    ref = script.model()
    x, y, mask = script.masked_data()
    ref_result = fit(ref, x, y, mask, verbose=False, distributed=False, **script.KWARGS)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(r0["state"][key], value, rtol=0, atol=1e-10)
        assert torch.equal(r0["state"][key], r1["state"][key])
    for a, b in zip(r0["history"], ref_result.history):
        assert a["val_nll"] == pytest.approx(b["val_nll"], abs=1e-10)
        assert a["train_nll"] == pytest.approx(b["train_nll"], abs=1e-10)


def test_torchrun_two_ranks(tmp_path: Path) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--log-dir",
        str(logs),
        "--redirects",
        "3",
        str(SCRIPT),
        str(out),
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    rank_logs = {
        int(Path(p).parent.name): Path(p).read_text()
        for p in glob.glob(str(logs / "**" / "stderr.log"), recursive=True)
    }
    assert proc.returncode == 0, proc.stderr[-3000:] + str(rank_logs)

    # Only rank 0 wrote the checkpoint (and no temporary files are left behind).
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "rank0.pt", "rank1.pt"]
    # Only rank 0 showed progress.
    assert "fit" in rank_logs[0] and "fit" not in rank_logs[1]

    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
        assert torch.equal(value, ckpt["best_state"][key]), key
    # Losses are all-reduced, so both ranks logged the same history and stopping decisions.
    assert _strip(r0["history"]) == _strip(r1["history"])
    hist = r0["history"]
    assert len(hist) == 15 and hist[-1]["val_nll"] < hist[0]["val_nll"] - 0.3

    # Global batch 64 = 2 ranks x 32 rows that together form the single-process batch, so one
    # process with the same seed follows the same path up to float64 summation order.
    script = _script_module()
    ref = script.model()
    x, y = script.data()
    ref_result = fit(ref, x, y, verbose=False, distributed=False, **script.KWARGS)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(r0["state"][key], value, rtol=0, atol=1e-10)
    for a, b in zip(r0["history"], ref_result.history):
        assert a["val_nll"] == pytest.approx(b["val_nll"], abs=1e-10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("failure", ["KILL", "STALL"])
def test_dead_or_stalled_rank_gives_error_not_hang(tmp_path: Path, failure: str) -> None:
    # Launched by hand (not torchrun, whose agent would kill the survivors for us): the
    # surviving rank itself must notice the dead peer (connection reset) or the stalled one
    # (process-group timeout) and fail with a message that says where to look.
    port = str(_free_port())
    timeout_s = 5
    procs = []
    for rank in (0, 1):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            MIXTURE_DENSITY_DIST_TIMEOUT=str(timeout_s),
        )
        env[f"MDN_TEST_{failure}_RANK"] = "1"
        procs.append(
            subprocess.Popen(
                [sys.executable, str(SCRIPT), str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        _, err0 = procs[0].communicate(timeout=90)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode != 0, err0[-2000:]
    assert "fit failed on rank 0 of 2 during distributed training" in err0, err0[-2000:]
    assert not (tmp_path / "rank0.pt").exists()
    if failure == "KILL":
        assert procs[1].returncode == 1
