"""Benchmarks run as `pitdist bench NAME`: each a module of this package with add_parser(subparsers)
and main(args, rest) -> int, registered in BENCHMARKS (in `pitdist bench --help` order) by module
name; a command name may use "-" where the module has "_" (`gpu-check` is gpu_check). Shared helpers
live in pitdist.bench.common."""

BENCHMARKS = (
    "sp",
    "checkpointing",
    "padding",
    "ledger",
    "data",
    "ring",
    "ray",
    "accuracy",
    "steptime",
    "projection",
    "gpu_check",
)
