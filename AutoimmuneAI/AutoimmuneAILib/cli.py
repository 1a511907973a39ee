"""``python -m AutoimmuneAILib.cli ARGS``: the ``autoimmuneai`` command line inside Slicer.

Inside Slicer the package is not pip-installed; this runner registers the extension's
``Logic/`` folder under the name ``autoimmuneai`` and hands over to its command line, so the
background process runs exactly the code a researcher runs as ``autoimmuneai ARGS``.
"""

from __future__ import annotations

import sys

from AutoimmuneAILib import registerPackage

if __name__ == "__main__":
    registerPackage()
    from autoimmuneai.cli import main

    sys.exit(main(sys.argv[1:]))
