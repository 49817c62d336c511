"""Export DMM-Net to a runtime bundle (the same arguments as ``dmm-deploy export-model``).

python export/export_model.py --out bundle/ --random-weights --backbone resnet18 --input-size 96x160
"""

import argparse
import sys

from dmm_deploy.export.bundle_job import add_args, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ImportError, ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"export_model: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
