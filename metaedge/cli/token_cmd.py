"""`metaedge token`: create, list and revoke the bearer tokens of `metaedge serve`."""
from __future__ import annotations

import argparse

from metaedge.cli import _sdk
from metaedge.cli.main import CliError

_STORE_HELP = "token store (default: $METAEDGE_TOKENS or ~/.config/metaedge/tokens.json)"


def register(sub) -> None:
    p = sub.add_parser(
        "token", help="create / list / revoke the access tokens of `metaedge serve`",
        description="Manage the bearer tokens of `metaedge serve`. A token has a name (recorded in the gallery's "
                    "audit trail for every change made with it) and a role: viewer (predict, look, metrics), "
                    "operator (also enroll, forget, rename, adapt, calibrate) or admin (also tokens). The store "
                    "keeps only SHA-256 hashes: a token is shown once, when it is created. A running server sees "
                    "new and revoked tokens at its next request.",
        epilog="examples:\n  metaedge token create line-3 --role operator\n  metaedge token list\n"
               "  metaedge token revoke line-3\n\nexit codes:\n  0  success\n  2  bad arguments (a name in use, "
               "an unknown token)\n  4  the token store is damaged\n  5  the token store could not be written\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("create", help="make a token and print it (once)",
                           description="Make a token called NAME with --role and print it; store it safely: it "
                                       "cannot be shown again.")
    a.add_argument("name", metavar="NAME", help="who or what uses it (letters, digits, . _ @ -)")
    a.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    a.add_argument("--tokens", default=None, metavar="FILE", help=_STORE_HELP)
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_create)
    a = actions.add_parser("list", help="the tokens: names, roles, ids, times (never the tokens)",
                           description="List the tokens of the store (revoked ones too).")
    a.add_argument("--tokens", default=None, metavar="FILE", help=_STORE_HELP)
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_list)
    a = actions.add_parser("revoke", help="revoke a token by name or id",
                           description="Revoke the active token NAME (or with that id); servers refuse it from "
                                       "their next request on.")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--tokens", default=None, metavar="FILE", help=_STORE_HELP)
    _sdk.add_json_arg(a)
    a.set_defaults(func=run_revoke)


def _store(args):
    from metaedge.runtime.serve.tokens import TokenStore, default_token_path
    return TokenStore(args.tokens or default_token_path())


def _errors():
    import contextlib

    from metaedge.runtime.serve.tokens import TokenError, TokenStoreError

    @contextlib.contextmanager
    def mapping():
        try:
            yield
        except TokenStoreError as exc:
            raise CliError(str(exc), _sdk.EXIT_DATA) from None
        except TokenError as exc:
            raise CliError(str(exc), _sdk.EXIT_USAGE) from None
        except OSError as exc:
            raise CliError(str(exc), _sdk.EXIT_IO) from None
    return mapping()


def run_create(args) -> int:
    store = _store(args)
    with _errors():
        record, token = store.create(args.name, args.role)
    if args.json:
        _sdk.print_json({**record.to_dict(), "token": token, "store": store.path})
    else:
        print(token)
        import sys
        print(f"token {record.name!r} ({record.role}, id {record.id}) added to {store.path}; it is shown only "
              f"now", file=sys.stderr)
    return 0


def run_list(args) -> int:
    store = _store(args)
    with _errors():
        records = store.records()
    if args.json:
        _sdk.print_json({"store": store.path, "tokens": [r.to_dict() for r in records]})
        return 0
    if not records:
        print(f"{store.path}: no tokens (metaedge token create NAME --role viewer|operator|admin)")
        return 0
    width = max(4, max(len(r.name) for r in records))
    print(f"{'name':<{width}}  role      id            created (UTC)              state")
    for r in records:
        d = r.to_dict()
        state = "active" if r.active else f"revoked {d['revoked']}"
        print(f"{r.name:<{width}}  {r.role:<8}  {r.id}  {d['created']:<25}  {state}")
    return 0


def run_revoke(args) -> int:
    store = _store(args)
    with _errors():
        record = store.revoke(args.name)
    if args.json:
        _sdk.print_json(record.to_dict())
    else:
        print(f"revoked {record.name!r} (id {record.id})")
    return 0
