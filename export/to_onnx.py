"""Export the DMM matcher to ONNX, check it and compare it with the PyTorch reference.

    python export/to_onnx.py [--n-grad 40] [--n-proj 5] [--lr 0.01] [--opset 17]
                             [--out artifacts/dmm_matcher.onnx] [--overwrite] [--static BxNxM]

The same command as ``dmm-deploy export`` (same arguments, checks and one-line errors, exit
code 2 for bad input). Exits 1 when a check fails (see ``dmm_deploy.export.matcher_job``).
"""

import sys

from dmm_deploy.cli import main as cli_main


def main(argv=None) -> int:
    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
