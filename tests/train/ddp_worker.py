"""Launched by test_distributed.py through torchrun (2 gloo processes): trains one SGD step per method and
writes each rank's parameters."""
import os
import sys

import torch
from safetensors.torch import save_file

from metaedge.train import fit
from metaedge.train.data import SyntheticGlyphs

torch.set_num_threads(1)
out = sys.argv[1]
data = SyntheticGlyphs("train", num_classes=40, samples_per_class=10, seed=3)
rank = int(os.environ["RANK"])
for method, options in (("protonet", {}), ("fomaml", {"inner_steps": 1, "inner_lr": 0.1})):
    model = fit("conv4", method, data, ways=4, shots=1, queries=2, episodes=1, optimizer="sgd", momentum=0.0,
                lr=0.5, schedule="constant", backbone_options={"hidden": 8}, method_options=options, seed=11,
                progress=False, device="cpu", amp="off")
    save_file({k: v.contiguous() for k, v in model.named_parameters()}, os.path.join(out, f"{method}-{rank}.safetensors"))
# self-supervised pretraining under DDP: two SimCLR steps on different unsupervised episodes per rank
from metaedge.train.pretrain import pretrain  # noqa: E402

model = pretrain(data, "simclr", episodes=2, batch_size=8, backbone_options={"hidden": 8}, seed=11, progress=False,
                 device="cpu", amp="off", augment="light")
save_file({k: v.contiguous() for k, v in model.named_parameters()}, os.path.join(out, f"simclr-{rank}.safetensors"))
