"""Build a TensorRT engine from the exported matcher (needs TensorRT and a CUDA GPU).

    python export/build_engine.py artifacts/dmm_matcher.onnx [--engine out.engine] [--overwrite]
        [--min 1x1x1] [--opt 8x8x128] [--max 64x16x512] [--workspace-mib 1024]
        [--opt-level 3] [--weak-fp16] [--plugin] [--cache-dir DIR] [--timing-cache FILE]

Engines are cached under ``--cache-dir``, keyed on the builder options, the ONNX bytes, the
TensorRT version and the GPU name, and for ``--plugin`` builds also on the kernel sources, the
Triton version and the PTX (see ``dmm_deploy.export.tensorrt``). A graph exported with
``--static BxNxM`` is built with a profile of exactly that shape. An existing ``--engine`` is
replaced only with ``--overwrite``. Every error is one line (exit code 2), as with
``dmm-deploy trt-build``.
"""

import sys

from dmm_deploy.cli import _one_line, _Parser
from dmm_deploy.export.engine_job import add_build_args, run_build


def main(argv=None) -> int:
    parser = add_build_args(_Parser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        return run_build(args)
    except (ImportError, ValueError, OSError, RuntimeError) as e:
        print(f"build_engine: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
