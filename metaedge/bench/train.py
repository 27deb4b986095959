"""Training throughput: metaedge ProtoNet vs easyfsl's PrototypicalNetworks, same run, same episodes.

conv4 (4 x conv3x3-64/BN/ReLU/maxpool) on 28x28 Omniglot (small1 + rotations, or synthetic glyphs when the
zips are absent), Adam lr 1e-3, episode shapes 60-way 5-shot 5-query and 20-way 5-shot 15-query. Each
contender runs in interleaved rounds (A B A B ...) so load changes on a shared machine hit both; the median
round is reported. easyfsl is used as its README shows: its TaskSampler + DataLoader with
``episodic_collate_fn``, ``process_support_set`` then ``forward`` on the queries.

Differences that are part of each design (not tuned away): easyfsl embeds support and query in two
passes (BatchNorm statistics per half) and scores by plain euclidean distance; metaedge embeds the episode
as one batch and uses the squared distance (Snell et al.). Variants of metaedge: fp32 default memory format,
channels_last, and bf16 autocast (CPU with AVX512-BF16 / CUDA), each reported separately.

    python tools/bench/train.py [--rounds 3 --episodes 8 --threads 2 --out bench_train.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types

import torch



def import_easyfsl():
    """easyfsl 1.5.0 on torch 2.14 needs a shim: its TaskSampler passes ``data_source`` to ``Sampler.__init__``,
    which newer torch no longer takes; its datasets package imports pandas (for a data set not used here), so
    without pandas the sampler's one import from it (a type name) is stubbed."""
    import importlib.util

    import torch.utils.data as tud
    if importlib.util.find_spec("pandas") is None:  # only easyfsl.datasets needs it; the sampler needs a name
        stub = types.ModuleType("easyfsl.datasets")
        stub.FewShotDataset = tud.Dataset
        sys.modules["easyfsl.datasets"] = stub
    from easyfsl.samplers import task_sampler as ts
    from easyfsl.methods import PrototypicalNetworks

    class _Sampler(tud.Sampler):
        def __init__(self, data_source=None):  # accepted and ignored, as older torch did
            pass
    ts.Sampler = _Sampler
    ts.TaskSampler.__bases__ = (_Sampler,)
    import easyfsl
    return easyfsl, ts.TaskSampler, PrototypicalNetworks


def load_data(root: str | None):
    from metaedge.train.data import Omniglot, SyntheticGlyphs
    if root and os.path.exists(os.path.join(root, "images_background_small1.zip")):
        return Omniglot(root, sets="images_background_small1", rotations=(0, 90, 180, 270))
    return SyntheticGlyphs(None, num_classes=500, samples_per_class=20)


class _TensorDataset(torch.utils.data.Dataset):
    """The same pre-processed 28x28 inputs for easyfsl (its FewShotDataset protocol: get_labels())."""

    def __init__(self, data):
        self.x = data.batch(torch.arange(len(data)))
        self.labels = data.labels.tolist()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]

    def get_labels(self):
        return self.labels


def bench_easyfsl(data, ways, shots, queries, episodes, TaskSampler, PrototypicalNetworks, seed):
    from metaedge.train.backbones import Conv4
    torch.manual_seed(seed)
    dataset = _TensorDataset(data)
    sampler = TaskSampler(dataset, n_way=ways, n_shot=shots, n_query=queries, n_tasks=episodes + 1)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=0,
                                         collate_fn=sampler.episodic_collate_fn)
    model = PrototypicalNetworks(Conv4(1, 64)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    start = None
    for i, (s_img, s_lab, q_img, q_lab, _) in enumerate(loader):
        if i == 1:
            start = time.perf_counter()  # the first episode warms up kernels/allocator
        optimizer.zero_grad()
        model.process_support_set(s_img, s_lab)
        loss = criterion(model(q_img), q_lab)
        loss.backward()
        optimizer.step()
    return episodes / (time.perf_counter() - start)


def bench_metaedge(data, ways, shots, queries, episodes, seed, **options):
    from metaedge.train import fit
    stamps = []
    fit("conv4", "protonet", data, ways=ways, shots=shots, queries=queries, episodes=episodes + 1, lr=1e-3,
        optimizer="adam", schedule="constant", progress=False, tensorboard=False, val_every=10 ** 9,
        seed=seed, callback=lambda info: stamps.append(time.perf_counter()), **options)
    return episodes / (stamps[-1] - stamps[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--omniglot", default=os.environ.get("METAEDGE_OMNIGLOT",
                                                         os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                                      "shared", "data", "omniglot")))
    ap.add_argument("--episodes", type=int, default=8, help="timed episodes per round (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="60x5x5,20x5x15", help="ways x shots x queries, comma-separated")
    ap.add_argument("--variants", default="fp32,channels_last,bf16", help="metaedge variants to run")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    from metaedge.bench import common
    common.pin_threads(args.threads)
    torch.set_num_threads(args.threads)
    easyfsl, TaskSampler, PrototypicalNetworks = import_easyfsl()
    data = load_data(args.omniglot)
    variants = {"fp32": {"channels_last": "off", "amp": "off"},
                "channels_last": {"channels_last": "on", "amp": "off"},
                "bf16": {"channels_last": "on", "amp": "bf16"}}
    chosen = [v for v in args.variants.split(",") if v]
    unknown = set(chosen) - set(variants)
    if unknown:
        ap.error(f"--variants: unknown {sorted(unknown)}; choose from {sorted(variants)}")
    rows = []
    for shape in args.shapes.split(","):
        ways, shots, queries = (int(v) for v in shape.split("x"))
        runs: dict[str, list[float]] = {"easyfsl": [], **{f"metaedge-{v}": [] for v in chosen}}
        for r in range(args.rounds):
            runs["easyfsl"].append(bench_easyfsl(data, ways, shots, queries, args.episodes, TaskSampler,
                                                 PrototypicalNetworks, seed=r))
            for v in chosen:
                runs[f"metaedge-{v}"].append(bench_metaedge(data, ways, shots, queries, args.episodes, seed=r,
                                                            **variants[v]))
        base = statistics.median(runs["easyfsl"])
        for name, values in runs.items():
            med = statistics.median(values)
            rows.append({"shape": f"{ways}-way {shots}-shot {queries}-query", "method": name,
                         "episodes_per_s": med, "rounds": values, "vs_easyfsl": med / base})
    doc = {"benchmark": "train_protonet_conv4_28x28", "data": repr(data), "threads": args.threads,
           "episodes_per_round": args.episodes, "rounds": args.rounds,
           "easyfsl": getattr(easyfsl, "__version__", "1.5.0"), "environment": common.environment(),
           "results": rows}
    common.print_table(rows, [("shape", "episode shape", "{}"), ("method", "contender", "{}"),
                              ("episodes_per_s", "episodes/s", "{:.3f}"), ("vs_easyfsl", "x easyfsl", "{:.2f}")],
                       title=f"conv4 ProtoNet training, 28x28, {args.threads} threads, median of {args.rounds} "
                             f"interleaved rounds x {args.episodes} episodes")
    if args.out:
        common.write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
