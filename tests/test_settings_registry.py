"""One settings registry: every RINGFLOW_* variable the core reads is
registered where it is read, and Python lists the registry, not a copy."""

import re
from pathlib import Path

from ringflow import _C, config

CSRC = Path(__file__).resolve().parent.parent / "csrc"
READ = re.compile(r'env(?:Size|Micros|Double|Bool|String|Choice|Bytes|Wait)\(\s*"(RINGFLOW_\w+)"')


def _read_in_csrc() -> set[str]:
    return {name for p in CSRC.rglob("*.cc") for name in READ.findall(p.read_text())}


def test_every_setting_the_core_reads_is_registered():
    read = _read_in_csrc()
    assert "RINGFLOW_ALGO" in read and len(read) > 10  # the scan itself works
    missing = read - set(_C.settings())
    assert not missing, f"read but not registered (SettingsRegistration): {sorted(missing)}"


def test_config_lists_the_registry_and_pythons_own():
    merged = config.settings()
    assert set(_C.settings()) <= set(merged)
    assert set(config.PYTHON_SETTINGS) <= set(merged)
    assert all(help_text for help_text in merged.values())
    assert not set(config.PYTHON_SETTINGS) & set(_C.settings()), "a setting listed twice"
