"""Export the DMM matcher to ONNX, check it and compare it with the PyTorch reference.

    python export/to_onnx.py [--n-grad 40] [--n-proj 5] [--lr 0.01] [--opset 17]
                             [--out artifacts/dmm_matcher.onnx] [--static BxNxM]

Exits non-zero when a check fails (see ``dmm_deploy.export.matcher_job``).
"""

import argparse
import sys

from dmm_deploy.export.matcher_job import add_export_args, options_from_args, run_export


def main(argv=None) -> int:
    parser = add_export_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return run_export(options_from_args(args), args.out, verify=not args.no_verify)


if __name__ == "__main__":
    sys.exit(main())
