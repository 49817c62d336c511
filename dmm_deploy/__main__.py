"""``python -m dmm_deploy ...``: the same as the ``dmm-deploy`` console script."""

import sys

from dmm_deploy.cli import main

if __name__ == "__main__":
    sys.exit(main())
