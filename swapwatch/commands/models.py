"""`swapwatch models`: list, fetch, verify and locate model files in the local cache."""

from __future__ import annotations

import argparse
import json
import sys

from swapwatch.errors import InputError, ModelError


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")

    ls = sub.add_parser("list", help="list known models, their licence and whether they are in the cache")
    ls.add_argument("--json", action="store_true", help="print the registry as JSON")

    fetch = sub.add_parser("fetch", help="download (or copy from a mirror) and verify model files")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="model names (see `swapwatch models list`)")
    fetch.add_argument("--all", action="store_true",
                       help="every model that is not user-provided (licence-restricted packs need a name)")
    fetch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    ver = sub.add_parser("verify", help="re-hash cached files against their pinned sha256")
    ver.add_argument("names", nargs="*", metavar="NAME", help="models to check (default: every cached model)")

    path = sub.add_parser("path", help="print where a model file lives in the cache")
    path.add_argument("name", metavar="NAME")
    path.add_argument("file", nargs="?", metavar="FILE", help="file name, for models with several files")

    inst = sub.add_parser("install", help="copy a model file you already have into the cache (hash-checked)")
    inst.add_argument("name", metavar="NAME")
    inst.add_argument("source", metavar="PATH", help="the file you have, e.g. ~/Downloads/inswapper_128.onnx")
    inst.add_argument("--as", dest="filename", metavar="FILE",
                      help="which of the model's files it is (for models with several files)")

    p.set_defaults(_models_parser=p)
    return p


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "models_command", None)
    if action is None:
        args._models_parser.print_help()
        return 2
    return {"list": _list, "fetch": _fetch, "verify": _verify, "path": _path, "install": _install}[action](args)


def _install(args: argparse.Namespace) -> int:
    from swapwatch.engines.runtime import registry as reg

    dest = reg.install_file(args.name, args.source, args.filename)
    print(f"{reg.get_entry(args.name).name}: installed {dest}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from swapwatch.engines.runtime import registry as reg

    rows = []
    for entry in reg.REGISTRY.values():
        files = [{"filename": f.filename, "sha256": f.sha256, "source": reg.source_kind(f.source),
                  "origin": f.source.describe(), "path": str(reg.model_file(entry, f.filename)),
                  "present": reg.model_file(entry, f.filename).is_file()} for f in entry.files]
        rows.append({"name": entry.name, "task": entry.task, "licence": entry.licence,
                     "user_provided": entry.user_provided, "present": all(f["present"] for f in files),
                     "files": files, "contract": entry.contract, "homepage": entry.homepage,
                     "description": entry.description})
    if args.json:
        print(json.dumps({"home": str(reg.models_home()), "models": rows}, indent=2))
        return 0
    table = [("NAME", "TASK", "PRESENT", "SOURCE", "LICENCE")]
    for row in rows:
        have = sum(f["present"] for f in row["files"])
        present = "yes" if row["present"] else ("no" if have == 0 else f"partial {have}/{len(row['files'])}")
        kinds = sorted({f["source"] for f in row["files"]})
        source = ",".join(kinds) + (" (user-provided)" if row["user_provided"] else "")
        table.append((row["name"], row["task"], present, source, row["licence"]))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    print(f"\ncache: {reg.models_home() / 'models'}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from swapwatch.engines.runtime import registry as reg

    if args.all and args.names:
        raise InputError("give model names or --all, not both")
    if args.all:
        names = [e.name for e in reg.REGISTRY.values() if not e.user_provided]
    elif args.names:
        names = [reg.get_entry(n).name for n in args.names]  # fail on a typo before downloading anything
    else:
        raise InputError("name at least one model to fetch, or pass --all (see `swapwatch models list`)")
    for name in names:
        for filename, path in reg.ensure_model(name, progress=not args.quiet).items():
            print(f"{name}/{filename}: {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from swapwatch.engines.runtime import registry as reg

    explicit = bool(args.names)
    entries = [reg.get_entry(n) for n in args.names] if explicit else list(reg.REGISTRY.values())
    failed = 0
    for entry in entries:
        results = reg.verify(entry)
        if not explicit and all(r.status == "missing" for r in results):
            print(f"{entry.name}: not fetched")
            continue
        for r in results:
            print(r.describe())
            failed += not r.ok
    if failed:
        raise ModelError(f"{failed} model file(s) missing or failing their sha256 check; "
                         f"re-fetch with `swapwatch models fetch NAME`")
    return 0


def _path(args: argparse.Namespace) -> int:
    from swapwatch.engines.runtime import registry as reg

    entry = reg.get_entry(args.name)
    if args.file is None and len(entry.files) > 1:
        # A multi-file model: print its folder, and it counts as present only when complete.
        print(reg.model_dir(entry))
        missing = [f.filename for f in entry.files if not reg.model_file(entry, f.filename).is_file()]
        if missing:
            raise ModelError(f"{entry.name} is incomplete (missing {', '.join(missing)}); "
                             f"run `swapwatch models fetch {entry.name}`")
        return 0
    path = reg.model_file(entry, args.file)
    print(path)
    if not path.is_file():
        sys.stdout.flush()
        raise ModelError(f"{path} is not in the cache; run `swapwatch models fetch {entry.name}`")
    return 0
