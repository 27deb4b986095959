"""`metaedge info`: how metaedge was built and what this machine offers it."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="show the build, CUDA, backends and optional packages",
                       description="Show how metaedge was built (compiler, SIMD, OpenMP, CUDA archs), whether CUDA "
                                   "works here (or why not), and which optional packages are installed.")
    p.add_argument("--json", action="store_true", help="print the information as JSON")
    p.set_defaults(func=run)


def format_info(info: dict) -> str:
    lines = [f"metaedge {info['version']}  (Python {info['python']}, {info['machine']})"]
    nat = info["native"]
    if nat.get("loaded"):
        lines.append(f"  compiler     {nat.get('compiler')}")
        lines.append(f"  SIMD         {nat.get('simd')}")
        lines.append(f"  OpenMP       {nat.get('openmp_threads')} threads")
    else:
        lines.append(f"  native       NOT LOADED: {nat.get('error')}")
    cuda = info["cuda"]
    if cuda.get("built"):
        archs = ";".join(cuda.get("archs") or [])
        lines.append(f"  CUDA build   yes, toolkit {cuda.get('toolkit')}, archs {archs} + PTX {cuda.get('ptx')}")
        lines.append(f"  CUDA runtime {cuda.get('runtime')}, driver {cuda.get('driver') or 'not found'}")
    else:
        lines.append("  CUDA build   no")
    if cuda.get("available"):
        for dev in cuda["devices"]:
            lines.append(f"  GPU {dev['index']}        {dev['name']} (sm {dev['compute_capability']}, "
                         f"{dev['memory_gib']} GiB{', integrated' if dev['integrated'] else ''})")
    else:
        lines.append(f"  CUDA usable  no: {cuda.get('why_not')}")
    for section in ("backends", "engines"):
        if section in info:
            lines.append(f"  {section}:")
            for key, value in info[section].items():
                lines.append(f"    {key:<14} {value}")
    lines.append("  packages:")
    for name, version in info["packages"].items():
        lines.append(f"    {name:<14} {version or '-'}")
    return "\n".join(lines)


def run(args) -> int:
    from metaedge import build_info
    info = build_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
