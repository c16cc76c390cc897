"""`pitdist job`: list, follow and stop submitted jobs (pitdist.launch.submit)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    from pitdist.launch import submit  # light: ray loads inside the command

    return submit.add_job_parser(sub)


def main(args: argparse.Namespace, rest: list[str]) -> int:
    from pitdist.launch import submit

    return submit.job_main(args, rest)
