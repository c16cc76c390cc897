"""`pitdist submit`: send a job to a Ray cluster through the Job Submission API (pitdist.launch.submit)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    from pitdist.launch import submit  # light: ray loads inside the command

    return submit.add_submit_parser(sub)


def main(args: argparse.Namespace, rest: list[str]) -> int:
    from pitdist.launch import submit

    return submit.submit_main(args, rest)
