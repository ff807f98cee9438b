"""The layering of ARCHITECTURE.md, checked from the sources.

C++: every `#include "..."` of a file in csrc/<folder>/ or of a public
header in csrc/include/ringflow/ must name either a public header of a
layer the file's layer may use, or a private header of the file's own
folder.  Python: a module of the package imports only modules of its own
level or below, and never the test or benchmark trees.  Reads text only:
needs no build.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
PUBLIC = CSRC / "include" / "ringflow"

# What each layer may include besides itself (ARCHITECTURE.md, "The layers").
MAY_USE = {
    "core": set(),
    "kernels": {"core"},
    "transport": {"core"},
    "comm": {"core", "transport"},
    "aggregator": {"core", "kernels", "transport"},
    "algo": {"core", "kernels", "transport", "comm", "aggregator"},
    "collectives": {"core", "kernels", "transport", "comm", "aggregator", "algo"},
    "malt": {"core", "kernels", "transport"},
    "bind": {"core", "kernels", "transport", "comm", "aggregator", "algo", "collectives", "malt"},
}

# The layer of every public header.  A new header must be placed here.
PUBLIC_LAYER = {
    "types.h": "core", "op.h": "core", "env.h": "core", "settings.h": "core",
    "work.h": "core", "stats.h": "core", "spin.h": "core",
    "host_port.h": "core", "config.h": "core",
    "kernels.h": "kernels", "simd_variants.h": "kernels", "kernels_cuda.h": "kernels", "quantize.h": "kernels",
    "lut.h": "kernels",
    "transport.h": "transport", "tcp.h": "transport", "shm.h": "transport",
    "routed.h": "transport", "huge_pages.h": "transport", "shared_buffer.h": "transport",
    "shm_arena.h": "transport", "sockets.h": "transport",
    "aggregator.h": "aggregator", "packet.h": "aggregator", "aggregator_client.h": "aggregator",
    "comm.h": "comm",
    "algorithms.h": "algo", "compress.h": "algo",
    "collectives.h": "collectives",
    "malt.h": "malt",
}

# The one sanctioned reach into a folder's private headers: the aggregator's
# client, exported through a forwarding header until that folder moves it.
FORWARDS = {("aggregator_client.h", "../../aggregator/client.h"),
            ("aggregator_client.h", "../../aggregator/faults.h")}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
SOURCE_SUFFIXES = {".h", ".cc", ".cu", ".cuh"}


def _includes(path: Path) -> list[str]:
    return INCLUDE.findall(path.read_text())


def _layer_of(path: Path) -> str:
    if path.parent == PUBLIC:
        return PUBLIC_LAYER.get(path.name.removesuffix(".in"), "?")
    return path.relative_to(CSRC).parts[0]


def _violations_of(path: Path) -> list[str]:
    layer = _layer_of(path)
    rel = path.relative_to(ROOT)
    if layer == "?":
        return [f"{rel}: public header without a layer (add it to PUBLIC_LAYER)"]
    bad = []
    for inc in _includes(path):
        if (path.name, inc) in FORWARDS:
            continue
        if inc.startswith("ringflow/"):
            name = inc.removeprefix("ringflow/")
            target = PUBLIC_LAYER.get(name)
            if target is None:
                bad.append(f"{rel}: includes {inc}, a public header without a layer")
            elif target != layer and target not in MAY_USE[layer]:
                bad.append(f"{rel} ({layer}) includes {inc} ({target}), a layer above it")
        elif "/" in inc or not (path.parent / inc).exists():
            bad.append(f"{rel}: includes {inc}, a private header of another folder")
    return bad


def _cxx_files() -> list[Path]:
    return sorted(p for p in CSRC.rglob("*")
                  if p.suffix in SOURCE_SUFFIXES or p.name.endswith(".h.in"))


def test_every_folder_is_a_known_layer():
    folders = {p.name for p in CSRC.iterdir() if p.is_dir()} - {"include"}
    assert folders == set(MAY_USE), "a new csrc folder needs a place in MAY_USE and ARCHITECTURE.md"


def test_cxx_includes_follow_the_layers():
    bad = [v for p in _cxx_files() for v in _violations_of(p)]
    assert not bad, "\n".join(bad)


def test_the_check_catches_a_layer_violation(tmp_path, monkeypatch):
    # The checker itself must be able to fail: a transport file including
    # the communicator, and one including an algorithm's private header.
    fake = tmp_path / "csrc"
    (fake / "transport").mkdir(parents=True)
    (fake / "include" / "ringflow").mkdir(parents=True)
    (fake / "transport" / "x.cc").write_text('#include "ringflow/comm.h"\n#include "../algo/schedule.h"\n')
    monkeypatch.setattr(__import__(__name__), "CSRC", fake)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PUBLIC", fake / "include" / "ringflow")
    found = _violations_of(fake / "transport" / "x.cc")
    assert len(found) == 2, found


# Python: the package's modules by level; a module may import its level and below.
PY_LEVEL = {
    "_C": 0, "_dtypes": 0, "config": 0, "errors": 0, "addresses": 0, "nccl": 0,
    "kernels": 1, "ops": 1, "shared": 1, "aggregator": 1, "rendezvous": 1, "timeline": 1,
    "staging": 1, "tune": 1,
    "backend": 2, "jobs": 2, "malt": 2,
    "benchmark": 3, "cli": 3, "versions": 3, "demo": 3, "pipeline": 3, "hooks": 3,
    "service": 3,
    "__init__": 4,
}
PACKAGE = ROOT / "python" / "ringflow"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def _ringflow_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 1 and path.parent == PACKAGE or node.level == 2:
                if node.module:
                    names.append(node.module.split(".")[0])
                else:
                    names.extend(a.name for a in node.names)
            elif node.level == 0 and node.module and node.module.split(".")[0] in ("tests", "bench"):
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names if a.name.split(".")[0] in ("tests", "bench"))
    return names


def test_python_imports_follow_the_levels():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = _module_name(path)
        level = PY_LEVEL.get(mod)
        if level is None:
            bad.append(f"{path.relative_to(ROOT)}: module without a level (add it to PY_LEVEL)")
            continue
        for name in _ringflow_imports(path):
            if name.split(".")[0] in ("tests", "bench"):
                bad.append(f"{path.relative_to(ROOT)} imports {name}: test/bench code in the package")
            elif PY_LEVEL.get(name, 99) > level:
                bad.append(f"{path.relative_to(ROOT)} (level {level}) imports {name} "
                           f"(level {PY_LEVEL.get(name, '?')})")
    assert not bad, "\n".join(bad)


def test_the_package_never_imports_the_test_only_module():
    """ringflow._testing (csrc/bind/testing.cc) holds hooks for the tests
    only: nothing in the package may depend on it."""
    users = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "_testing" in p.read_text()]
    assert not users, users
