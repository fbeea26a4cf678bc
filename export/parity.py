"""Compare exported ONNX engines with the PyTorch checkpoint: the same as ``sigrl parity``.

Usage: ``python export/parity.py --checkpoint runs/tiny/best.pt --engines engines/ --classes 1 12 1006``
"""

import sys

from sigrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["parity", *sys.argv[1:]]))
