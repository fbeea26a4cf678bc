"""Compile exported ONNX engines into TensorRT plans: the same as ``sigrl build-engines``.

Usage: ``python export/build_engines.py --engines engines/ --out plans/``
"""

import sys

from sigrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-engines", *sys.argv[1:]]))
