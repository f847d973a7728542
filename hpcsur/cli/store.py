"""``hpcsur store info PATH`` and ``hpcsur store verify PATH``."""
import json


def add_arguments(parser):
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="frames, shards, completeness, bytes")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON")
    verify = sub.add_parser("verify", help="recompute every shard checksum; report the first bad shard")
    verify.add_argument("path")


def run(args):
    from hpcsur import store

    if args.store_command == "info":
        info = store.info(args.path)
        if args.json:
            print(json.dumps(info, indent=1, default=str))
        else:
            for key, value in info.items():
                print(f"{key:>18}: {value}")
        return 0
    report = store.verify(args.path)
    print(report.summary())
    return 0 if report.ok else 1
