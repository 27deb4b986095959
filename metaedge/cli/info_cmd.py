"""`metaedge info`: how metaedge was built and what this machine offers it (and, with --bundle, a bundle)."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="show the build, CUDA, backends and optional packages",
                       description="Show how metaedge was built (compiler, SIMD, OpenMP, CUDA archs), whether CUDA "
                                   "works here (or why not), the Jetson's JetPack/L4T release and GPU arch, how "
                                   "class matrices are matched (from which size the compact int8 copy is used, its "
                                   "SIMD variant, METAEDGE_MATCHING), which inference backends can run (TensorRT, "
                                   "ONNX Runtime CUDA/CPU, torch) with their versions - and for each one that "
                                   "cannot, what is missing and the exact command that installs it on this machine - "
                                   "install traps (two ONNX Runtime builds, PyPI TensorRT over JetPack's, NumPy 2 on "
                                   "JetPack 6), and which optional packages are installed. With --bundle: the "
                                   "bundle's manifest and the TensorRT engines cached in it. METAEDGE_SYSROOT=DIR "
                                   "reads the system files (/etc/nv_tegra_release, dpkg status) under DIR instead "
                                   "of /.")
    p.add_argument("--bundle", metavar="DIR", help="also describe this bundle (manifest summary, cached engines)")
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
    match = info.get("matching")
    if match:
        min_mib = match["auto_compact_min_bytes"] / 2**20
        override = match["override"] or "METAEDGE_MATCHING unset"
        lines.append(f"  matching     {match['default_method']} ({override}): the compact class matrix from "
                     f"{min_mib:g} MiB of float32 classes (e.g. {match['auto_compact_min_bytes'] // 2048:,} x 512), "
                     f"first pass {match['compact_kernel']}")
    if info.get("jetson"):
        lines.append(f"  Jetson       {info['jetson']['summary']}")
    install = info.get("install", {})
    for section in ("backends", "bundle", "engines"):
        if section in info:
            lines.append(f"  {section}:")
            for key, value in info[section].items():
                lines.append(f"    {key:<14} {value}")
                if section == "backends":
                    lines += [f"    {'':<14}   install: {command}" for command in install.get(key, [])]
    for warning in info.get("warnings", []):
        lines.append(f"  WARNING: {warning}")
    lines.append("  packages:")
    for name, version in info["packages"].items():
        lines.append(f"    {name:<17} {version or '-'}")
    return "\n".join(lines)


def describe_engines(entries: list[dict]) -> dict:
    if not entries:
        return {"(none)": "no TensorRT engine cached yet (`metaedge build BUNDLE` builds one)"}
    out = {}
    for e in entries:
        if "key" in e:
            k = e["key"]
            text = (f"{k['precision']}, batch 1..{k['max_batch']}, TensorRT {k['tensorrt_version']}, {k['gpu_name']} "
                    f"(sm {k['compute_capability']}), CUDA {k['cuda_version']}, built {e.get('built_at')}")
            if e.get("plan_bytes") is not None:
                text += f", {e['plan_bytes'] / 2**20:.1f} MiB"
        else:
            text = ""
        if e.get("error"):
            text = (text + "; " if text else "") + f"UNUSABLE: {e['error']}"
        out[e["file"]] = text
    return out


def run(args) -> int:
    from metaedge import build_info
    from metaedge.cli.main import CliError
    info = build_info()
    if args.bundle:
        from metaedge.runtime.bundle import Bundle, BundleError
        try:
            bundle = Bundle.load(args.bundle)
        except BundleError as exc:
            raise CliError(str(exc), 4) from None
        info["bundle"] = bundle.summary()
        info["engines"] = describe_engines(bundle.engines())
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
