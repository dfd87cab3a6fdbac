"""The web tier must not pull in torch or diffusers (fast cold start, small image)."""

import subprocess
import sys

from tests.conftest import REPO


def test_schemas_does_not_import_torch():
    code = "import sys, schemas; heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(heavy); assert not heavy"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
