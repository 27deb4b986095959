"""`metaedge classes`: list, forget, rename the classes of a gallery; its history; class packs; calibration;
conversion of old gallery files; an integrity check."""
from __future__ import annotations

import argparse
import datetime as _dt
import os

from metaedge.cli import _sdk
from metaedge.cli.main import CliError

FLAGS = {"target_fpr": "--target-fpr", "images_of_known": "--known", "images_of_other": "--other",
         "known": "--known", "other": "--other", "new": "NEW", "old": "OLD", "limit": "--limit", "label": "LABEL",
         "backend": "--backend", "on_conflict": "--on-conflict"}


def register(sub) -> None:
    p = sub.add_parser(
        "classes", help="list / forget / rename classes; history; export / import class packs; calibrate; migrate",
        description="Manage the classes of a gallery. A gallery is a store shared by every process that opens it "
                    "(apps, these commands, a server): each change is one durable transaction recorded in its "
                    "audit trail, and the others see it at once. list, forget, rename, history, export, import, "
                    "migrate and check need only the gallery (no network); calibrate runs the bundle's network.",
        epilog="examples:\n  metaedge classes list classes.metaedge\n"
               "  metaedge classes forget classes.metaedge bolt_m6\n"
               "  metaedge classes rename classes.metaedge bolt_m6 'bolt M6 (zinc)'\n"
               "  metaedge classes history classes.metaedge --limit 20\n"
               "  metaedge classes export classes.metaedge bolts.pack bolt_m6 bolt_m8\n"
               "  metaedge classes import other-device.metaedge bolts.pack --on-conflict merge\n"
               "  metaedge classes migrate old-classes.metaedge\n"
               "  metaedge classes calibrate bundle/ classes.metaedge --known val/ --other background/\n\n"
               + _sdk.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("list", help="the classes with shots, support kept and enrollment times; open-set state",
                           description="List the classes of GALLERY and its settings (embedding size, metric, "
                                       "bundle fingerprint, version, adaptation) and its open-set state: the head "
                                       "predictions use, each head's unknown threshold, how it was set "
                                       "(calibrated, re-calibrated after adapt, set by hand, migrated), its target "
                                       "false-accept rate, and the stored calibration set. (A threshold in the "
                                       "bundle's manifest applies where the gallery has none; it is not read here.)")
    a.add_argument("gallery", metavar="GALLERY")
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_list)

    a = actions.add_parser("forget", help="remove classes", description="Remove LABELs from GALLERY (one "
                                                                        "transaction: all of them or none).")
    a.add_argument("gallery", metavar="GALLERY")
    a.add_argument("labels", metavar="LABEL", nargs="+")
    a.add_argument("--missing-ok", action="store_true", help="a label that is not enrolled is not an error")
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_forget)

    a = actions.add_parser("rename", help="rename a class", description="Rename class OLD of GALLERY to NEW.")
    a.add_argument("gallery", metavar="GALLERY")
    a.add_argument("old", metavar="OLD")
    a.add_argument("new", metavar="NEW")
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_rename)

    a = actions.add_parser(
        "history", help="the audit trail: every change, when, by whom",
        description="Show GALLERY's audit trail, oldest first: time (UTC), version, operation (enroll, forget, "
                    "rename, adapt, reset_adaptation, threshold, import, clear, migrate, create, fingerprint), "
                    "label, shots and who made the change (user, host, program and process, or a server's token).")
    a.add_argument("gallery", metavar="GALLERY")
    a.add_argument("--label", help="only the changes of this class")
    a.add_argument("--limit", type=int, default=None, metavar="N", help="only the N latest changes")
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_history)

    a = actions.add_parser(
        "export", help="write classes to a class pack (to move them to other devices)",
        description="Write LABELs (default: every class) of GALLERY to PACK: one checksummed safetensors file with "
                    "their prototypes, shots, times and support memories, and the bundle fingerprint they were "
                    "made with. Import it on devices running the same bundle.")
    a.add_argument("gallery", metavar="GALLERY")
    a.add_argument("pack", metavar="PACK")
    a.add_argument("labels", metavar="LABEL", nargs="*")
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_export)

    a = actions.add_parser(
        "import", help="add the classes of a class pack",
        description="Add the classes of PACK to GALLERY (created with the pack's settings if it does not exist). "
                    "The pack must come from the same bundle. A label that exists here with other contents is a "
                    "conflict: --on-conflict fail (default: import nothing, exit 2 naming them), skip (keep ours), "
                    "replace (take the pack's) or merge (one class of all the shots: count-weighted prototype, "
                    "support memories combined). Identical classes are left alone, so importing twice changes "
                    "nothing. One transaction: all of it or nothing.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_sdk.EXIT_CODES_HELP)
    a.add_argument("gallery", metavar="GALLERY")
    a.add_argument("pack", metavar="PACK")
    from metaedge.runtime.gallery import CONFLICT_POLICIES
    a.add_argument("--on-conflict", choices=CONFLICT_POLICIES, default="fail")
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_import)

    a = actions.add_parser(
        "migrate", help="convert a gallery file of the old format to the store",
        description="Convert GALLERY, a file of the old single-file format (metaedge 0.1, schema 1; such files "
                    "open read-only), to the shared store: in place (the old file is kept as GALLERY.v1-backup) or "
                    "to --output. Everything is carried over exactly. With --bundle, the gallery is checked against "
                    "that bundle and stamped with its fingerprint.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_sdk.EXIT_CODES_HELP)
    a.add_argument("gallery", metavar="GALLERY")
    a.add_argument("-o", "--output", metavar="PATH", help="write the store here instead (GALLERY is left as it is)")
    a.add_argument("--bundle", metavar="DIR", help="the bundle the gallery belongs to (checked, fingerprint updated)")
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_migrate)

    a = actions.add_parser(
        "check", help="verify every page, row and checksum of a gallery",
        description="Read all of GALLERY and verify it: SQLite's integrity check of every page, each class's and "
                    "support memory's checksum and value ranges, the settings and the audit trail. Exit 0 when "
                    "sound, 4 with the problems found.")
    a.add_argument("gallery", metavar="GALLERY")
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_check)

    a = actions.add_parser(
        "calibrate", help="set the unknown threshold from labelled images (--plot: histograms and rates)",
        description="Set GALLERY's open-set threshold so that about --target-fpr of images that show none of the "
                    "classes are accepted as known. --known DIR holds one sub-directory per enrolled label with "
                    "images of it (preferably not the enrolled ones); --other DIR images of anything else. "
                    "Without --other, the best wrong-class scores of the known images stand in for it. Every head "
                    "is calibrated (the prototypes, and the adapted head if there is one), and the gallery keeps "
                    "the images' embeddings, so `metaedge adapt` re-calibrates the next head at the same rate. "
                    "--plot writes the score histograms of known and negative images with the threshold, and the "
                    "false-accept / false-reject rates against the threshold (needs matplotlib).",
        epilog="example:\n  metaedge classes calibrate bundle/ classes.metaedge --known val/ --other background/ "
               "--plot calibration.png\n\n" + _sdk.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("bundle", metavar="BUNDLE")
    a.add_argument("gallery", metavar="GALLERY")
    a.add_argument("--known", required=True, metavar="DIR", help="DIR/<label>/*.png for enrolled labels")
    a.add_argument("--other", nargs="*", default=None, metavar="PATH", help="images/directories of non-classes")
    a.add_argument("--target-fpr", type=float, default=0.05,
                   help="fraction of unknown images that may be accepted as known (default 0.05)")
    a.add_argument("--plot", metavar="OUT.png", default=None,
                   help="write a PNG: score histograms with the threshold, false-accept/false-reject curves")
    _sdk.add_backend_arg(a)
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_calibrate)


def run_list(args) -> int:
    with _sdk.errors_to_exit_codes(FLAGS):
        with _sdk.open_gallery(args.gallery, args) as g:
            classes = g.classes()
            state = g.open_set()
            info = {"gallery": args.gallery, "classes": len(classes), "version": g.version,
                    "embedding_dim": g.embedding_dim, "metric": g.metric, "bundle_fingerprint": g.fingerprint,
                    "support_cap": g.support_cap, "adapted": g.adapted, "adaptation": g.adaptation,
                    "unknown_thresholds": g.thresholds, "open_set": state.to_dict(), "old_format": g.legacy}
    if args.json:
        _sdk.print_json({**info, "items": [c.to_dict() for c in classes]})
        return 0
    print(f"{args.gallery}: {len(classes)} class(es), version {info['version']}, dim {info['embedding_dim']}, "
          f"metric {info['metric']}, bundle {(info['bundle_fingerprint'] or '?')[:12]}, adapted: "
          f"{'yes' if info['adapted'] else 'no'}" + (" (old format, read-only: run `metaedge classes migrate`)"
                                                      if info["old_format"] else ""))
    for line in open_set_lines(state):
        print(line)
    if classes:
        width = max(5, max(len(c.label) for c in classes))
        print(f"  {'label':<{width}}  shots  support  adapted  enrolled (UTC)        updated (UTC)")
        for c in classes:
            print(f"  {c.label:<{width}}  {c.shots:>5}  {c.support:>7}  {'yes' if c.adapted else 'no':>7}  "
                  f"{c.enrolled_at:%Y-%m-%d %H:%M:%S}   {c.updated_at:%Y-%m-%d %H:%M:%S}")
    return 0


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def open_set_lines(state) -> list[str]:
    """The open-set state in words: the head in use and its threshold, each head's record, the calibration set."""
    from metaedge.runtime.openset import HEADS
    lines = [f"unknown rejection: {state.explain()}", f"  scores: {state.score}"]
    if state.heads:
        lines.append(f"  {'head':<11} {'threshold':>10}  {'how':<13} {'target FPR':>10} {'FPR':>7} {'known ok':>9}")
        for head in HEADS:
            h = state.heads.get(head)
            if h is None:
                continue
            mark = "*" if head == state.head else " "
            lines.append(f"{mark} {head:<11} {h['threshold']:>10.4f}  {h['how']:<13} "
                         f"{_percent(h.get('target_fpr')):>10} {_percent(h.get('fpr')):>7} "
                         f"{_percent(h.get('known_accept_rate')):>9}")
    cal = state.calibration
    if cal:
        when = _dt.datetime.fromtimestamp(cal["at"], _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        sampled = " (a sample)" if cal["known"] < cal["known_given"] or cal["other"] < cal["other_given"] else ""
        lines.append(f"  calibration set: {cal['known']} known + {cal['other']} other image(s){sampled}, negatives: "
                     f"{cal['negatives']}, target false-accept rate {100 * cal['target_fpr']:g}%; calibrated {when} "
                     f"UTC at version {cal['version']} with {cal['classes']} class(es) - adapt re-calibrates from it")
    elif state.heads:
        lines.append("  no calibration set stored: adapt cannot re-calibrate (run `metaedge classes calibrate`)")
    return lines


def run_forget(args) -> int:
    with _sdk.errors_to_exit_codes(FLAGS):
        with _sdk.open_gallery(args.gallery, args) as g:
            with g.transaction():
                missing = [lab for lab in args.labels if lab not in g]
                if missing and not args.missing_ok:
                    raise CliError(f"not enrolled: {', '.join(map(repr, missing))} (nothing was changed; "
                                   f"--missing-ok ignores them)", _sdk.EXIT_USAGE)
                for lab in dict.fromkeys(args.labels):
                    if lab in g:
                        g.remove(lab)
            left = len(g)
    forgotten = [lab for lab in dict.fromkeys(args.labels) if lab not in missing]
    if args.json:
        _sdk.print_json({"forgotten": forgotten, "missing": missing, "classes": left})
    else:
        print(f"forgot {len(forgotten)} class(es); {left} left in {args.gallery}")
    return 0


def run_rename(args) -> int:
    with _sdk.errors_to_exit_codes(FLAGS):
        with _sdk.open_gallery(args.gallery, args) as g:
            g.rename(args.old, args.new)
    if args.json:
        _sdk.print_json({"old": args.old, "new": args.new})
    else:
        print(f"renamed {args.old!r} to {args.new!r}")
    return 0


def run_history(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit: expected an integer >= 1, got {args.limit}", _sdk.EXIT_USAGE)
    with _sdk.errors_to_exit_codes(FLAGS):
        with _sdk.open_gallery(args.gallery, args) as g:
            entries = g.history(label=args.label, limit=args.limit)
    if args.json:
        _sdk.print_json({"gallery": args.gallery, "entries": [e.to_dict() for e in entries]})
        return 0
    for e in entries:
        when = _dt.datetime.fromtimestamp(e.at, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        detail = ", ".join(f"{k}={v}" for k, v in (e.detail or {}).items() if k not in ("new_class",))
        shots = "" if e.shots is None else f"{e.shots} shot(s)"
        print(f"{when}  v{e.version:<5} {e.op:<16} {e.label or '':<24} {shots:<11} {e.actor}"
              + (f"  [{detail}]" if detail else ""))
    if not entries:
        print("(no changes recorded)")
    return 0


def run_export(args) -> int:
    with _sdk.errors_to_exit_codes(FLAGS):
        with _sdk.open_gallery(args.gallery, args) as g:
            n = g.export_pack(args.pack, args.labels or None)
    if args.json:
        _sdk.print_json({"pack": args.pack, "classes": n})
    else:
        print(f"exported {n} class(es) to {args.pack}")
    return 0


def run_import(args) -> int:
    from metaedge.runtime.gallery import Gallery, LabelConflictError
    from metaedge.runtime.store.packs import read_pack
    with _sdk.errors_to_exit_codes(FLAGS):
        if not os.path.lexists(args.gallery):
            pack = read_pack(args.pack)
            Gallery.open(args.gallery, embedding_dim=pack.embedding_dim, metric=pack.metric,
                         fingerprint=pack.fingerprint, support_cap=pack.support_cap).close()
        with _sdk.open_gallery(args.gallery, args) as g:
            try:
                report = g.import_pack(args.pack, on_conflict=args.on_conflict)
            except LabelConflictError as exc:
                raise CliError(str(exc), _sdk.EXIT_USAGE) from None
            total = len(g)
    if args.json:
        _sdk.print_json({**report.to_dict(), "classes": total})
    else:
        print(f"imported {args.pack}: {len(report.added)} added, {len(report.replaced)} replaced, "
              f"{len(report.merged)} merged, {len(report.skipped)} skipped, {len(report.unchanged)} unchanged; "
              f"{total} class(es) in {args.gallery}")
    return 0


def run_migrate(args) -> int:
    from metaedge.runtime.gallery import Gallery, GalleryMismatchError
    with _sdk.errors_to_exit_codes(FLAGS):
        if not os.path.lexists(args.gallery):
            raise CliError(f"{args.gallery}: no such gallery", _sdk.EXIT_DATA)
        fingerprint = None
        if args.bundle:
            from metaedge.runtime.bundle import Bundle
            bundle = Bundle.load(args.bundle)
            with Gallery.load(args.gallery) as old:
                old.check_compatible(fingerprint=bundle.fingerprint, embedding_dim=bundle.spec.embedding_dim,
                                     metric=bundle.spec.metric, legacy_fingerprints=(bundle.onnx_sha256,))
                if not old.legacy:
                    raise GalleryMismatchError(f"{args.gallery}: already a gallery store (nothing to convert)")
            fingerprint = bundle.fingerprint
        path = Gallery.migrate(args.gallery, args.output, fingerprint=fingerprint)
        with Gallery.load(path) as g:
            classes = len(g)
    backup = args.gallery + ".v1-backup" if args.output is None else None
    if args.json:
        _sdk.print_json({"gallery": path, "classes": classes, "backup": backup})
    else:
        print(f"converted {args.gallery} ({classes} class(es)) to the gallery store at {path}"
              + (f"; the old file is kept as {backup}" if backup else ""))
    return 0


def run_check(args) -> int:
    with _sdk.errors_to_exit_codes(FLAGS):
        with _sdk.open_gallery(args.gallery, args) as g:
            problems = g.check()
            classes = len(g)
    if args.json:
        _sdk.print_json({"gallery": args.gallery, "ok": not problems, "problems": problems, "classes": classes})
    elif problems:
        for p in problems:
            print(f"problem: {p}")
    else:
        print(f"{args.gallery}: sound ({classes} class(es); every page, row and checksum verified)")
    if problems:
        raise CliError(f"{args.gallery}: {len(problems)} problem(s) found: {problems[0]}", _sdk.EXIT_DATA)
    return 0


def run_calibrate(args) -> int:
    with _sdk.errors_to_exit_codes(FLAGS):
        if args.plot is not None:
            from metaedge._plotting import pyplot
            pyplot("metaedge classes calibrate --plot")  # missing matplotlib: say so before any work (exit 3)
        if not os.path.isdir(args.known):
            raise CliError(f"--known {args.known}: not a directory", _sdk.EXIT_USAGE)
        known = {}
        for name in sorted(os.listdir(args.known)):
            sub = os.path.join(args.known, name)
            if os.path.isdir(sub) and not name.startswith("."):
                known[name] = _sdk.expand_images([sub])
        if not known:
            raise CliError(f"--known {args.known}: expected one sub-directory per label", _sdk.EXIT_USAGE)
        other = _sdk.expand_images(args.other) if args.other else None
        update, close = _sdk.progress_bar(len(known) + (other is not None), "calibrate", "group", not args.json)
        with _sdk.open_classifier(args, args.gallery, must_exist=True) as clf:
            try:
                report = clf.calibrate_unknown(known, other, target_fpr=args.target_fpr,
                                               progress=lambda done, total: update(done))
            finally:
                close()
            state = clf.open_set()
        plot = None
        if args.plot is not None:
            from metaedge.runtime.plots import calibration_plot
            plot = calibration_plot(report, args.plot, title=f"unknown threshold of {os.path.basename(args.gallery)}"
                                                             f" ({report.mode} head)")
    if args.json:
        _sdk.print_json({**report.to_dict(), "open_set": state.to_dict(), "plot": plot})
    else:
        print(f"unknown threshold {report.threshold:.4f} ({report.mode} head): {100 * report.fpr:.1f}% of "
              f"{report.n_negative} {report.negatives} accepted, {100 * report.known_accept_rate:.1f}% of "
              f"{report.n_known} known images accepted; saved in {args.gallery}")
        for head, h in report.heads.items():
            if head != report.mode:
                print(f"  {head} head: threshold {h['threshold']:.4f} ({100 * h['fpr']:.1f}% false accepts, "
                      f"{100 * h['known_accept_rate']:.1f}% known accepted)")
        print(f"  scores: {report.score}; the calibration images' embeddings are kept: adapt re-calibrates from them")
        if plot:
            print(f"  plot: {plot}")
    return 0
