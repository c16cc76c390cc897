"""The `pitdist` commands, one module each, all of the same shape (registered in pitdist.cli.COMMANDS):

    add_parser(subparsers) -> argparse.ArgumentParser   registers the command, light at import time
    main(args, rest) -> int                              runs it; ``rest`` holds the --SECTION.KEY VALUE
                                                         job settings; returns the exit status

Command glue: these modules may import launch, bench, report, train and data; only pitdist.cli
imports them.
"""
