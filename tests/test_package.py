"""The package imports cheaply and the CLI dispatches."""

import subprocess
import sys

import vptsearch
from vptsearch.cli import main


def test_import_is_lazy():
    code = "import sys, vptsearch; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == vptsearch.__version__
    assert main([]) == 2


def test_the_cli_and_data_list_import_neither_torch_nor_ray(tmp_path):
    """Building the parser imports every command group (``backbones`` included): through an eager
    ``vptsearch.models`` that was torch (~650 MB resident, a second) for every command."""
    code = (
        "import sys; from vptsearch.cli import main; "
        f"rc = main(['data', 'list', '--root', {str(tmp_path)!r}]); "
        "print(rc, 'torch' in sys.modules, 'ray' in sys.modules, 'optuna' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-4:] == ["0", "False", "False", "False"], out.stdout + out.stderr
