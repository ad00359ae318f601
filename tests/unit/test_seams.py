"""The seams to faust-streaming, aiokafka and mode (issue #17).

1. Contract: the installed libraries have every private attribute, method and signature each seam
   module relies on (its ``CONTRACT``), at the version the seam was tested with (its
   ``TESTED_WITH``, pinned in pyproject.toml); a failure names what is missing and the versions.
2. Containment: no module of the package outside the seams uses a private name of those libraries
   — a private attribute, a private method override, or an import of an internal module — read
   from the source (AST), with an explicit allowlist of the package's own private attributes.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.metadata
import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from faust.tables import recovery as faust_recovery

from tests.source_tree import ROOT, is_type_checking_block, package_modules, resolve_from
from vsync_stream.bridges import aiokafka_seam, faust_seam, mode_seam

SEAMS: dict[str, ModuleType] = {
    "vsync_stream.bridges.faust_seam": faust_seam,
    "vsync_stream.bridges.aiokafka_seam": aiokafka_seam,
    "vsync_stream.bridges.mode_seam": mode_seam,
}
# import name → distribution
# (aiolimiter is gone: bridges/pacing.py has its own token bucket.)
LIBRARIES = {"faust": "faust-streaming", "aiokafka": "aiokafka", "mode": "mode-streaming"}
# Modules of those libraries whose names the package may use outside the seams: their documented
# API. Everything else (drivers, stores, table internals, the protocol, the record parsers) is
# internal and goes through a seam.
PUBLIC_MODULES = {
    "faust": {"faust", "faust.types", "faust.web", "faust.exceptions"},
    "aiokafka": {"aiokafka", "aiokafka.errors", "aiokafka.structs", "aiokafka.admin", "aiokafka.abc",
                 "aiokafka.helpers",
                 # the default partitioner's hash (Kafka's murmur2), which the producer API documents
                 "aiokafka.partitioner",
                 # ConfigResource, the argument of the public AIOKafkaAdminClient.describe_configs
                 "aiokafka.admin.config_resource"},
    "mode": {"mode"},
}
# The package's own private attributes on objects of classes derived from those libraries, or in
# modules importing them. Each is checked not to be a name the libraries use (no hidden clash).
OWN_PRIVATE: dict[str, set[str]] = {
    "vsync_stream.tables.entries": {"_report_drift"},  # EntriesTable's own helper
}
# Private names of the standard library that modules importing those libraries use.
STDLIB_PRIVATE = {("os", "_exit")}  # exit at once from a failed fold/changelog delivery (no cleanup)
# Outside the package: benchmarks use only public API too.
EXTRA_DIRS = {"benchmarks": ROOT / "benchmarks"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# -- 1. contract ---------------------------------------------------------------------------------
def _has(obj: Any, name: str) -> bool:
    """``obj`` (a class or module) has ``name``: as an attribute, a class annotation, or an instance
    attribute its classes' ``__init__``/methods assign (``self.<name> = …``)."""
    if hasattr(obj, name):
        return True
    if not inspect.isclass(obj):
        return False
    for klass in obj.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return True
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if re.search(rf"\bself\.{re.escape(name)}\s*(?::[^=\n]+)?=", source):
            return True
    return False


def _params(obj: Any, name: str) -> tuple[str, ...] | None:
    try:
        return tuple(inspect.signature(inspect.getattr_static(obj, name)).parameters)
    except (TypeError, ValueError, AttributeError):
        return None


def contract_breaches(seam: ModuleType) -> list[str]:
    """What ``seam.CONTRACT`` asks for and the installed library lacks, one line each."""
    breaches = []
    for obj, name, params in seam.CONTRACT:
        where = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj.__name__)}.{name}"
        if not _has(obj, name):
            breaches.append(f"{where}: missing")
        elif params is not None:
            found = _params(obj, name)
            if found != params:
                breaches.append(f"{where}: parameters {found}, the seam expects {params}")
    return breaches


@pytest.mark.parametrize("seam_name", sorted(SEAMS))
def test_the_installed_library_has_what_the_seam_uses(seam_name: str) -> None:
    seam = SEAMS[seam_name]
    dist, _, tested = seam.TESTED_WITH.partition("==")
    installed = importlib.metadata.version(dist)
    breaches = contract_breaches(seam)
    assert not breaches, (f"{seam_name} relies on private parts of {dist} that the installed {dist} {installed} "
                          f"lacks (tested with {seam.TESTED_WITH}):\n  " + "\n  ".join(breaches)
                          + f"\nadapt {seam_name} to {dist} {installed}, or install the pinned version "
                            "(make install)")
    assert installed == tested, (f"{dist} {installed} is installed, {seam_name} is tested with {seam.TESTED_WITH}: "
                                 "run `make install` (pinned in pyproject.toml), or move the pin after running "
                                 "this test and the restore/fold/changelog/recovery integration tests")


def test_the_seams_pins_are_the_projects_pins() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for seam in SEAMS.values():
        assert seam.TESTED_WITH in deps, f"pyproject.toml must pin {seam.TESTED_WITH} exactly (the seam's version)"


def test_the_contract_check_can_fail() -> None:
    class Fake(ModuleType):
        TESTED_WITH = "aiokafka==0.14.0"
        CONTRACT = [(faust_seam.RocksStore, "_no_such_method", None),
                    (faust_seam.RocksStore, "_db_for_partition", ("self", "other"))]
    breaches = contract_breaches(Fake("fake"))
    assert len(breaches) == 2 and "missing" in breaches[0] and "parameters" in breaches[1], breaches


def test_recovery_builds_the_active_offsets_under_the_title_the_seam_expects() -> None:
    """faust_seam.Recovery hooks ``_build_offsets`` for the title ``"active"``, after the highwaters."""
    source = inspect.getsource(faust_recovery.Recovery)
    highwaters = re.search(r"_build_highwaters\)?\(\s*consumer,\s*assigned_active_tps,\s*active_highwaters,\s*"
                           + re.escape(repr(faust_seam.ACTIVE)).replace("'", '"'), source)
    offsets = re.search(r"_build_offsets\)?\(\s*consumer,\s*assigned_active_tps,\s*active_offsets,\s*"
                        + re.escape(repr(faust_seam.ACTIVE)).replace("'", '"'), source)
    assert highwaters and offsets and highwaters.start() < offsets.start(), (
        "faust's Recovery no longer builds the active partitions' offsets with the title "
        f"{faust_seam.ACTIVE!r} after their highwaters ({faust_seam.TESTED_WITH} did): tables/restore.py's "
        "bulk restore would not run, or run on the wrong offsets")


def test_the_seam_classes_add_no_name_the_library_has() -> None:
    """A public name a seam class adds must not shadow one of Faust's (a silent override)."""
    overrides = {faust_seam.Consumer: {"_drain_messages", "_new_consumer_thread"},
                 faust_seam.Recovery: {"_build_offsets"}, faust_seam.TableManager: {"recovery", "changelog_queue"}}
    for klass, overridden in overrides.items():
        base = klass.__mro__[1]
        body = ast.parse(inspect.getsource(klass)).body[0]
        assert isinstance(body, ast.ClassDef)
        own = {n.name for n in body.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        own |= {t.id for n in body.body if isinstance(n, ast.Assign | ast.AnnAssign)
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        assert {n for n in own - overridden if hasattr(base, n)} == set(), klass
        assert overridden <= own


def test_record_batches_parse_as_the_restore_reads_them() -> None:
    """The restore iterates raw batches: ``offset``/``key``/``value`` per record, ``next_offset``."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i, (key, value) in enumerate([(b"a", b"1"), (b"b", None), (b"c", b"3")]):
        builder.append(i, timestamp=None, key=key, value=value, headers=[])
    records = MemoryRecords(bytes(builder.build()))
    assert records.has_next()
    batch = records.next_batch()
    assert not batch.is_control_batch
    assert [(r.offset, r.key, r.value) for r in batch] == [(0, b"a", b"1"), (1, b"b", None), (2, b"c", b"3")]
    assert batch.next_offset == 3


def test_the_consumer_seam_acks_into_fausts_commit_bookkeeping() -> None:
    """Offsets acked through the seam are what Faust's commit would commit next (its own ``_new_offset``)."""
    import faust
    from faust.types import TP

    from vsync_stream.bridges import kafka_batches

    loop = asyncio.new_event_loop()
    try:
        app = faust.App("seam-contract", broker="kafka://127.0.0.1:1", autodiscover=False, store="memory://",
                        loop=loop)
        kafka_batches.install(app)
        consumer = app.consumer  # built, not started: nothing connects
        thread_loop = consumer._thread.thread_loop  # the consumer thread's own loop, closed below
        assert isinstance(consumer, faust_seam.Consumer)
        faust_consumer = faust_seam.Consumer.__mro__[1]
        for name in [n for obj, n, p in faust_seam.CONTRACT if obj is faust_consumer and p is None]:
            assert hasattr(consumer, name), f"Faust's consumer has no {name} ({faust_seam.TESTED_WITH} had)"
        assert faust_seam.running_consumer(app) is consumer
        assert faust_seam.committed_offsets(consumer) is not None
        tp = TP("t", 0)
        consumer.ack_offsets(tp, [0, 1, 2, 4])
        assert consumer._new_offset(tp) == 3  # 0..2 consecutive: commit 3; 4 waits for 3
        consumer.ack_offsets(tp, [3, 4])
        assert consumer._new_offset(tp) == 5
        consumer.set_read_offset(tp, 7)
        assert consumer.read_offset(tp) == 7
        thread_loop.close()
    finally:
        loop.close()


# -- 2. containment ------------------------------------------------------------------------------
def _library_files() -> Iterator[Path]:
    for name in LIBRARIES:
        # faust replaces its module object with a lazy one (no __spec__): its __path__ is kept
        for location in importlib.import_module(name).__path__:
            yield from Path(location).rglob("*.py")
            yield from Path(location).rglob("*.pyi")


def library_private_names() -> set[str]:
    """Every private name the four libraries define or use (attributes, methods, class fields)."""
    names: set[str] = set()
    for path in _library_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, SystemError, RecursionError):  # e.g. a generated table
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                names.add(node.attr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
                        stmt, ast.AnnAssign) else []
                    names.update(t.id for t in targets if isinstance(t, ast.Name) and _private(t.id))
                    if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                            for t in stmt.targets):
                        names.update(c.value for c in ast.walk(stmt.value)
                                     if isinstance(c, ast.Constant) and isinstance(c.value, str) and _private(c.value))
    return names


def _root(module: str) -> str:
    return module.split(".")[0]


class _Checker(ast.NodeVisitor):
    """Finds private-name uses of the four libraries in one module (see the module docstring)."""

    def __init__(self, module: str, path: Path, derived: set[str], vocabulary: set[str]) -> None:
        self.module, self.path, self.vocabulary = module, path, vocabulary
        self.derived = derived  # library-derived class names visible in this module (local names)
        self.own = OWN_PRIVATE.get(module, set())
        self.findings: list[str] = []
        self.library_aliases: set[str] = set()  # local names bound to library modules or their objects
        self.touching = False
        self.stdlib_aliases: dict[str, str] = {}
        self.class_stack: list[bool] = []  # per enclosing class: derived from a library class?

    def flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(f"{self.path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {what}")

    def check_import(self, node: ast.AST, module: str, names: list[str]) -> None:
        root = _root(module)
        if root not in LIBRARIES:
            return
        self.touching = True
        if module not in PUBLIC_MODULES[root] or any(_private(p) for p in module.split(".")):
            self.flag(node, f"imports {module}, an internal module of {LIBRARIES[root]}: go through its seam")
        for name in names:
            if _private(name):
                self.flag(node, f"imports the private name {module}.{name}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.check_import(node, alias.name, [])
            if _root(alias.name) in LIBRARIES:
                self.library_aliases.add((alias.asname or alias.name).split(".")[0])
            elif alias.name in ("os", "sys"):
                self.stdlib_aliases[alias.asname or alias.name] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = resolve_from(self.module, self.path, node)
        self.check_import(node, module, [a.name for a in node.names])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.class_stack.append(node.name in self.derived)
        self.generic_visit(node)
        self.class_stack.pop()

    def _in_derived(self) -> bool:
        return bool(self.class_stack) and self.class_stack[-1]

    def _visit_def(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if self._in_derived() and _private(node.name) and node.name not in self.own:
            self.flag(node, f"defines {node.name} in a class derived from a library class (a private hook: "
                            "override it in the seam, or add a public name)")
        self.generic_visit(node)

    visit_FunctionDef = _visit_def
    visit_AsyncFunctionDef = _visit_def

    def _attribute(self, node: ast.AST, receiver: ast.AST | None, name: str) -> None:
        if not _private(name):
            return
        if isinstance(receiver, ast.Name) and (self.stdlib_aliases.get(receiver.id), name) in STDLIB_PRIVATE:
            return
        on_self = isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")
        if on_self and not self._in_derived():
            return  # a project class's own state
        if name in self.own:
            return
        if on_self or self.touching or name in self.vocabulary:
            self.flag(node, f"uses the private name {name} (of faust/aiokafka/mode objects, or "
                            "unknown): go through a seam, or list the package's own name in OWN_PRIVATE")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._attribute(node, node.value, node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)):
            self._attribute(node, node.args[0], node.args[1].value)
        self.generic_visit(node)


def _scanned_modules() -> dict[str, Path]:
    modules = {name: path for name, path in package_modules().items() if name not in SEAMS}
    for prefix, directory in EXTRA_DIRS.items():
        for path in sorted(directory.rglob("*.py")):
            modules[f"{prefix}.{path.stem}"] = path
    return modules


def _derived_classes(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Per module, the local names of classes derived (transitively) from a library class.

    A base counts when it is a name imported from a library or from a seam, an attribute of one
    (``faust.Table``, ``faust_seam.Consumer``), or a package class already found derived.
    """
    derived_qualified: set[str] = set()  # "module.Class" of package classes derived from a library class
    local: dict[str, set[str]] = {m: set() for m in trees}
    changed = True
    while changed:
        changed = False
        for module, tree in trees.items():
            imported: dict[str, str] = {}  # local name → what it is ("lib" or a qualified package name)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if _root(alias.name) in LIBRARIES:
                            imported[(alias.asname or alias.name).split(".")[0]] = "lib"
                elif isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        qualified = f"{node.module}.{alias.name}"
                        if _root(node.module) in LIBRARIES or node.module in SEAMS or qualified in SEAMS:
                            imported[alias.asname or alias.name] = "lib"
                        else:
                            imported[alias.asname or alias.name] = qualified
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef) or node.name in local[module]:
                    continue
                for base in node.bases:
                    head = base
                    while isinstance(head, ast.Attribute):
                        head = head.value
                    name = head.id if isinstance(head, ast.Name) else None
                    if name is None:
                        continue
                    if (imported.get(name) == "lib" or imported.get(name) in derived_qualified
                            or name in local[module]):
                        local[module].add(node.name)
                        derived_qualified.add(f"{module}.{node.name}")
                        changed = True
                        break
    return local


def private_name_uses() -> list[str]:
    """Every use of a private library name outside the seams, as ``path:line: what``."""
    vocabulary = library_private_names()
    modules = _scanned_modules()
    trees = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in modules.items()}
    derived = _derived_classes(trees)
    findings = []
    for module, tree in trees.items():
        checker = _Checker(module, modules[module], derived[module], vocabulary)
        for node in ast.walk(tree):  # imports first: a module that imports a library anywhere is "touching"
            if isinstance(node, ast.Import | ast.ImportFrom) and not is_type_checking_block(node):
                root = _root(node.names[0].name if isinstance(node, ast.Import) else (node.module or ""))
                checker.touching |= root in LIBRARIES
        checker.visit(tree)
        findings += checker.findings
    clashes = {(m, n) for m, names in OWN_PRIVATE.items() for n in names if n in vocabulary}
    findings += [f"OWN_PRIVATE[{m!r}] lists {n}, a name the libraries use: rename it" for m, n in sorted(clashes)]
    return findings


def test_no_private_library_name_is_used_outside_the_seams() -> None:
    findings = private_name_uses()
    assert not findings, "private faust/aiokafka/mode names outside the seams:\n  " + "\n  ".join(findings)


def test_the_containment_check_finds_a_planted_use(tmp_path: Path) -> None:
    """The check can fail: a module like the ones before the seams is flagged on every count."""
    vocabulary = library_private_names()
    assert {"_db_for_partition", "_ensure_producer", "_drain_messages"} <= vocabulary
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from faust.tables.recovery import Recovery\n"
        "import faust\n"
        "class R(Recovery):\n"
        "    async def _build_offsets(self, *a):\n"
        "        return self._recovery\n"
        "def produce(app, store):\n"
        "    store._db_for_partition(0)\n"
        "    return app.producer._ensure_producer()\n")
    tree = ast.parse(planted.read_text())
    checker = _Checker("vsync_stream.planted", planted, _derived_classes({"vsync_stream.planted": tree})[
        "vsync_stream.planted"], vocabulary)
    checker.touching = True
    checker.path = planted
    original_root = globals()["ROOT"]
    globals()["ROOT"] = tmp_path
    try:
        checker.visit(tree)
    finally:
        globals()["ROOT"] = original_root
    text = "\n".join(checker.findings)
    for expected in ("faust.tables.recovery", "_build_offsets", "_recovery", "_db_for_partition", "_ensure_producer"):
        assert expected in text, (expected, text)
    untouched = tmp_path / "plain.py"
    untouched.write_text("def f(x):\n    return x._visible_items(1), x._mine\n")
    tree = ast.parse(untouched.read_text())
    checker = _Checker("vsync_stream.plain", untouched, set(), vocabulary)
    globals()["ROOT"] = tmp_path
    try:
        checker.visit(tree)
    finally:
        globals()["ROOT"] = original_root
    assert len(checker.findings) == 1 and "_visible_items" in checker.findings[0], checker.findings
