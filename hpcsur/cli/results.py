"""``hpcsur results [FILES...] [--readme README.md]``: the table of results claims.

Reads ``results/*.json`` (written by ``hpcsur evaluate``) and prints one Markdown table: per job and
(loss, equivalent data) the training frames, the force evaluations, both error measures, the
paper's number and the protocol. ``--readme`` rewrites the generated block of that file, so the
README's numbers always come from the files the program wrote.
"""


def add_arguments(parser):
    parser.add_argument("files", nargs="*", help="results files (default: results/*.json)")
    parser.add_argument("--readme", help="rewrite the generated results block of this Markdown file")


def run(args):
    from pathlib import Path

    from hpcsur.errors import InputError
    from hpcsur.ops.results import load_results, markdown_table, update_readme

    files = args.files or sorted(str(p) for p in Path("results").glob("*.json"))
    if not files:
        raise InputError("no results files given and none in results/ (run `hpcsur evaluate JOB` first)")
    table = markdown_table(load_results(files))
    print(table)
    if args.readme:
        readme = Path(args.readme)
        if not readme.is_file():
            raise InputError(f"--readme {readme}: file not found")
        changed = update_readme(readme, table)
        print(f"{readme}: results block {'updated' if changed else 'already current'}")
    return 0
