"""Export a sigrl checkpoint as two ONNX engines: the same as ``sigrl export``.

Usage: ``python export/export_onnx.py --checkpoint runs/tiny/best.pt --out engines/``
"""

import sys

from sigrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
