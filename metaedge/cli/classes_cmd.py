"""`metaedge classes`: list, forget, rename the classes of a gallery; calibrate its open-set threshold."""
from __future__ import annotations

import argparse
import os

from metaedge.cli import _sdk
from metaedge.cli.main import CliError


def register(sub) -> None:
    p = sub.add_parser(
        "classes", help="list / forget / rename enrolled classes; calibrate the unknown threshold",
        description="Manage the classes of a gallery file. list, forget and rename need only the gallery (no "
                    "network); calibrate runs the bundle's network on labelled images.",
        epilog="examples:\n  metaedge classes list classes.metaedge\n"
               "  metaedge classes forget classes.metaedge bolt_m6\n"
               "  metaedge classes rename classes.metaedge bolt_m6 'bolt M6 (zinc)'\n"
               "  metaedge classes calibrate bundle/ classes.metaedge --known val/ --other background/\n\n"
               + _sdk.EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("list", help="the classes with shots, support kept and enrollment times",
                           description="List the classes of GALLERY and its settings (embedding size, metric, "
                                       "bundle fingerprint, adaptation, unknown thresholds).")
    a.add_argument("gallery", metavar="GALLERY")
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_list)

    a = actions.add_parser("forget", help="remove classes", description="Remove LABELs from GALLERY (saved "
                                                                        "atomically).")
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
        "calibrate", help="set the unknown threshold from labelled images",
        description="Set GALLERY's open-set threshold so that about --target-fpr of images that show none of the "
                    "classes are accepted as known. --known DIR holds one sub-directory per enrolled label with "
                    "images of it (preferably not the enrolled ones); --other DIR images of anything else. "
                    "Without --other, the best wrong-class scores of the known images stand in for it.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_sdk.EXIT_CODES_HELP)
    a.add_argument("bundle", metavar="BUNDLE")
    a.add_argument("gallery", metavar="GALLERY")
    a.add_argument("--known", required=True, metavar="DIR", help="DIR/<label>/*.png for enrolled labels")
    a.add_argument("--other", nargs="*", default=None, metavar="PATH", help="images/directories of non-classes")
    a.add_argument("--target-fpr", type=float, default=0.05, help="accepted fraction of unknowns (default 0.05)")
    _sdk.add_backend_arg(a)
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_calibrate)


def _load(path: str):
    from metaedge.runtime.gallery import Gallery
    if not os.path.exists(path):
        raise CliError(f"{path}: no such gallery", _sdk.EXIT_DATA)
    return Gallery.load(path)


def run_list(args) -> int:
    with _sdk.errors_to_exit_codes():
        g = _load(args.gallery)
        classes = g.classes()
    info = {"gallery": args.gallery, "classes": len(classes), "embedding_dim": g.embedding_dim, "metric": g.metric,
            "bundle_fingerprint": g.fingerprint, "support_cap": g.support_cap, "adapted": g.adapted,
            "adaptation": g.adaptation, "unknown_thresholds": g.thresholds}
    if args.json:
        _sdk.print_json({**info, "items": [c.to_dict() for c in classes]})
        return 0
    print(f"{args.gallery}: {len(classes)} class(es), dim {g.embedding_dim}, metric {g.metric}, "
          f"bundle {(g.fingerprint or '?')[:12]}, adapted: {'yes' if g.adapted else 'no'}")
    if classes:
        width = max(5, max(len(c.label) for c in classes))
        print(f"  {'label':<{width}}  shots  support  adapted  enrolled (UTC)        updated (UTC)")
        for c in classes:
            print(f"  {c.label:<{width}}  {c.shots:>5}  {c.support:>7}  {'yes' if c.adapted else 'no':>7}  "
                  f"{c.enrolled_at:%Y-%m-%d %H:%M:%S}   {c.updated_at:%Y-%m-%d %H:%M:%S}")
    return 0


def run_forget(args) -> int:
    with _sdk.errors_to_exit_codes():
        with _sdk.gallery_lock(args.gallery):
            g = _load(args.gallery)
            missing = [lab for lab in args.labels if lab not in g]
            if missing and not args.missing_ok:
                raise CliError(f"not enrolled: {', '.join(map(repr, missing))} (nothing was changed; "
                               f"--missing-ok ignores them)", _sdk.EXIT_USAGE)
            with g.transaction():
                for lab in dict.fromkeys(args.labels):
                    if lab in g:
                        g.remove(lab)
            g.save()
    forgotten = [lab for lab in dict.fromkeys(args.labels) if lab not in missing]
    if args.json:
        _sdk.print_json({"forgotten": forgotten, "missing": missing, "classes": len(g)})
    else:
        print(f"forgot {len(forgotten)} class(es); {len(g)} left in {args.gallery}")
    return 0


def run_rename(args) -> int:
    with _sdk.errors_to_exit_codes():
        with _sdk.gallery_lock(args.gallery):
            g = _load(args.gallery)
            g.rename(args.old, args.new)
            g.save()
    if args.json:
        _sdk.print_json({"old": args.old, "new": args.new})
    else:
        print(f"renamed {args.old!r} to {args.new!r}")
    return 0


def run_calibrate(args) -> int:
    with _sdk.errors_to_exit_codes():
        if not os.path.isdir(args.known):
            raise CliError(f"--known {args.known}: not a directory", _sdk.EXIT_USAGE)
        known = {}
        for name in sorted(os.listdir(args.known)):
            sub = os.path.join(args.known, name)
            if os.path.isdir(sub):
                known[name] = _sdk.expand_images([sub])
        if not known:
            raise CliError(f"--known {args.known}: expected one sub-directory per label", _sdk.EXIT_USAGE)
        other = _sdk.expand_images(args.other) if args.other else None
        with _sdk.gallery_lock(args.gallery):
            with _sdk.open_classifier(args, args.gallery, must_exist=True, autosave=False) as clf:
                report = clf.calibrate_unknown(known, other, target_fpr=args.target_fpr)
                clf.save()
    if args.json:
        _sdk.print_json(report.to_dict())
    else:
        print(f"unknown threshold {report.threshold:.4f} ({report.mode}): {100 * report.fpr:.1f}% of "
              f"{report.n_negative} {report.negatives} accepted, {100 * report.known_accept_rate:.1f}% of "
              f"{report.n_known} known images accepted; saved {args.gallery}")
    return 0
