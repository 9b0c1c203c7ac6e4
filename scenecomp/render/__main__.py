"""``python -m scenecomp.render``: the same as the ``scenecomp-render`` command."""

import sys

from scenecomp.render.cli import main

if __name__ == "__main__":
    sys.exit(main())
