"""``prodimg keys add|revoke|list``: manage the service's API keys (works while the service runs)."""

from __future__ import annotations

import argparse

from .serve import DEFAULT_KEYS_FILE, default_keys_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..serving.keys import SCOPE_GENERATE, SCOPES

    p = subparsers.add_parser(
        "keys",
        help="add, revoke or list API keys of 'prodimg serve'",
        description="Keys are stored as SHA-256 hashes; a new key is printed once. A running service picks up "
        "changes on its next request. Scopes: " + "; ".join(f"{k} ({v})" for k, v in SCOPES.items()),
    )
    p.add_argument(
        "--api-keys", default=None, help=f"keys file (default $PRODIMG_API_KEYS or ./{DEFAULT_KEYS_FILE})"
    )
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True
    add = sub.add_parser("add", help="create a key and print it (only once)")
    add.add_argument("--id", default=None, help="key id, shown in the audit log (default: random)")
    add.add_argument(
        "--scopes",
        default=SCOPE_GENERATE,
        help=f"comma-separated scopes (default {SCOPE_GENERATE}; known: {','.join(SCOPES)})",
    )
    add.set_defaults(func=run_add)
    revoke = sub.add_parser("revoke", help="remove a key")
    revoke.add_argument("id")
    revoke.set_defaults(func=run_revoke)
    lst = sub.add_parser("list", help="list key ids and scopes (never the keys)")
    lst.set_defaults(func=run_list)


def _path(args: argparse.Namespace) -> str:
    return args.api_keys or default_keys_file()


def run_add(args: argparse.Namespace) -> int:
    from ..serving.keys import add_key

    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    key_id, key = add_key(_path(args), args.id, scopes)
    print(
        f"# key id {key_id}, scopes {','.join(sorted(scopes))}; stored hashed in {_path(args)}; this is the only time it is shown:"
    )
    print(key)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from ..serving.keys import revoke_key

    revoke_key(_path(args), args.id)
    print(f"revoked {args.id}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from ..serving.keys import list_keys

    for key in list_keys(_path(args)):
        print(f"{key.id}\t{','.join(sorted(key.scopes))}\t{key.created}")
    return 0
