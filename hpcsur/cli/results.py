"""``hpcsur results [FILES...] [--readme README.md]``: the table of results claims.

Reads ``results/*.json`` (written by ``hpcsur evaluate``; size-scan files left out) and prints one
Markdown table: per job and (loss, equivalent data) the training frames, the force evaluations, both error measures, the
paper's number, the label noise and the protocol. ``--readme`` rewrites the generated blocks of that file
(``results``: results/*.json; ``ablations``: results/ablations/*.json, where the file has that block), so
the README's numbers always come from the files the program wrote.

``hpcsur results --size-scan JOB`` instead writes the size scan of a campaign (paper Fig. 4,
:mod:`hpcsur.ops.size_scan`): ``results/<job>.json`` and ``results/fig4.png`` from its members' reports.
"""


def add_arguments(parser):
    parser.add_argument("files", nargs="*", help="results files (default: results/*.json)")
    parser.add_argument("--readme", help="rewrite the generated results block of this Markdown file")
    parser.add_argument("--size-scan", metavar="JOB", help="write the size scan (Fig. 4) of this campaign job")
    parser.add_argument("--tolerance", type=float, default=3e-3, help="--size-scan: the error to reach (3e-3)")


def run(args):
    from pathlib import Path

    from hpcsur.errors import InputError
    from hpcsur.ops.results import BLOCKS, load_results, markdown_table, markers, results_files, update_readme

    if args.size_scan:
        from hpcsur.ops.jobspec import load_job
        from hpcsur.ops.size_scan import write_scan

        if not (args.tolerance > 0 and args.tolerance < 1):
            raise InputError(f"--tolerance {args.tolerance!r} is out of range; allowed: 0 < tolerance < 1")
        path, plot = write_scan(load_job(args.size_scan), tol=args.tolerance)
        print(f"size scan: {path}\nplot: {plot}")
        return 0
    files = args.files or results_files(BLOCKS["results"])
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
        if not args.files:   # the other generated blocks the README has, each from its own folder
            for block, folder in BLOCKS.items():
                extra = results_files(folder)
                if block == "results" or not extra or markers(block)[0] not in readme.read_text():
                    continue
                changed = update_readme(readme, markdown_table(load_results(extra), folder), block)
                print(f"{readme}: {block} block {'updated' if changed else 'already current'}")
    return 0
