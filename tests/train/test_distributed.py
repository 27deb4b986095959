import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from metaedge.train.backbones import build_backbone
from metaedge.train.data import SyntheticGlyphs, TaskSampler
from metaedge.train.methods import MAML, Batch, ProtoNet
from metaedge.train.trainer import _seed_int

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def expected_params(method, data):
    """One SGD step (lr 0.5) on the mean of the gradients of rank 0's and rank 1's first episodes."""
    torch.manual_seed(_seed_int(11, 0xB1))
    model = build_backbone("conv4", preprocess=data.preprocess, hidden=8).train()
    grads = []
    for rank in (0, 1):
        ep = TaskSampler(data, 4, 1, 2, seed=11, rank=rank).sample(0)
        batch = Batch(support=data.batch(ep.support), support_labels=ep.support_labels, query=data.batch(ep.query),
                      query_labels=ep.query_labels, ways=4)
        loss = method.forward_loss(model, batch).loss
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    return {name: (p - 0.5 * (g0 + g1) / 2).detach()
            for (name, p), g0, g1 in zip(model.named_parameters(), *grads)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_torchrun(script_args, env, workdir, attempts=2, timeout=120):
    """Two gloo ranks on an explicit free loopback port (so that another torchrun on the machine cannot meet
    this one's rendezvous); output goes to files, and a stalled run is killed with all its workers and tried
    once more rather than hang the suite."""
    for attempt in range(attempts):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", *script_args]
        out_path, err_path = workdir / f"torchrun-{attempt}.out", workdir / f"torchrun-{attempt}.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                subprocess.run(["pkill", "-9", "-f", str(workdir)], check=False)  # workers in their own groups
                proc.wait()
                print(f"torchrun attempt {attempt + 1} timed out after {timeout} s:\n"
                      f"{out_path.read_text()[-2000:]}\n{err_path.read_text()[-2000:]}")
                continue
        return subprocess.CompletedProcess(cmd, proc.returncode, out_path.read_text(), err_path.read_text())
    pytest.fail(f"torchrun timed out {attempts} times")


@pytest.mark.timeout(300)
def test_torchrun_two_gloo_ranks_average_gradients_of_different_episodes(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    proc = _run_torchrun([os.path.join(os.path.dirname(__file__), "ddp_worker.py"), str(tmp_path)], env, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = SyntheticGlyphs("train", num_classes=40, samples_per_class=10, seed=3)
    ep0, ep1 = (TaskSampler(data, 4, 1, 2, seed=11, rank=r).sample(0) for r in (0, 1))
    assert not torch.equal(ep0.support, ep1.support)  # the ranks trained on different episodes
    for name, method in (("protonet", ProtoNet()), ("fomaml", MAML(inner_steps=1, inner_lr=0.1, first_order=True))):
        rank0 = load_file(str(tmp_path / f"{name}-0.safetensors"))
        rank1 = load_file(str(tmp_path / f"{name}-1.safetensors"))
        expected = expected_params(method, data)
        for key, value in expected.items():
            assert torch.equal(rank0[key], rank1[key]), key
            assert torch.allclose(rank0[key], value, atol=1e-5), key
    # SimCLR under DDP: the ranks drew different images, and averaged gradients keep their weights identical
    rank0, rank1 = (load_file(str(tmp_path / f"simclr-{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
