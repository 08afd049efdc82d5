"""Shared fixtures: strict pydicom, real databases, real peers.

In CI (``CI=true``) a missing tool or service fails the test; on a developer's machine it
is skipped with the reason printed, never silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import create_engine, inspect, make_url, text

from storage.db import Database
from tests.peers import MissingTool, require_tool

# One OpenMP thread per process for torch, here and in every process a test starts (they
# inherit the environment), unless the caller chose a number. Tests often run two torch
# processes at once (this one and a node, two workers, a data loader), and on a 2-core
# machine torch's default of a thread per core then spins on barriers: the same network
# pass took 3-5 times the wall and CPU time with 2 threads as with 1 (128 px batch of 16:
# 3.0-4.8 s against 0.6 s; one training epoch of the squares set: 65-92 s against 21-23 s,
# with other processes on the machine). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL = os.environ.get("CXR_NODE_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


TESTS = Path(__file__).resolve().parent
# Fixtures that start a real peer or service: a test using one is an integration test
# wherever it lives. (``database_url`` is decided per backend below: its SQLite half is not.)
PEER_FIXTURES = frozenset({"start_node", "dcmtk", "postgres_url", "postgres_test_database"})
# Tests outside the slow modules that run the bundled 768 px model, a CLI process over a
# data set or large phantoms: 10-200 s each on a loaded 2-core machine. tests/test_markers.py
# checks that each name still exists. Whole modules that train mark themselves.
SLOW_TESTS = frozenset({
    "tests/training/test_evaluate.py::test_evaluate_command_writes_metrics_summary_and_plots",
    "tests/node/test_worker.py::test_analysed_study_stores_findings_and_queues_every_result",
    "tests/node/test_worker.py::test_late_image_reruns_and_new_report_supersedes_the_old",
    "tests/node/test_worker.py::test_job_taken_over_after_lease_expiry_is_published_once",
    "tests/node/test_worker.py::test_destination_kinds_and_comprehensive_sr_fallback",
    "tests/model/test_bundled.py::test_reproduces_its_golden_outputs",
    "tests/model/test_bundled.py::test_golden_check_catches_changed_weights",
    "tests/model/test_insertion.py::test_synth_onto_command_writes_the_images",
    # 60 more phantom cases rendered without findings; 768 px pneumothorax cases; processes.
    "tests/model/test_phantom.py::test_each_finding_changes_its_box_the_way_it_should",
    "tests/model/test_phantom.py::test_pneumothorax_rim_has_no_lung_markings",
    "tests/model/test_phantom.py::test_several_workers_write_the_same_set_as_one",
    # The bundled 768 px model on mixed series; a 1024 px batch of four.
    "tests/node/test_worker_results.py::test_images_of_different_sizes_in_one_series_get_every_result",
    "tests/node/test_worker_results.py::test_monochrome1_and_monochrome2_in_one_series_get_every_result",
    "tests/node/test_worker_results.py::test_pa_lateral_and_ap_in_one_study",
    "tests/model/test_detector.py::test_an_image_scores_the_same_alone_or_in_a_batch",
    # Three imports, a training step and three evaluations: about 40 s; two steps, 25 s.
    "tests/training/test_dataset_import.py::test_imported_folders_train_and_evaluate",
    "tests/training/test_init_backbone.py::test_training_starts_from_the_backbone_file",
    # torch.compile tracing the network (a recording backend, then a failing one): 20-30 s.
    "tests/model/test_compile.py::test_compiled_once_per_batch_size_and_other_batches_padded_or_sliced",
    "tests/model/test_compile.py::test_a_failing_compiler_leaves_the_network_eager_and_says_so",
})
# Modules whose node processes analyse with the bundled 768 px model: minutes, not seconds,
# on a loaded 2-core machine, so a limit above pyproject's backstop.
BUNDLED_MODEL_MODULES = {"tests/integration/test_results_flow.py": 300,
                         "tests/integration/test_tls.py": 300}
# Modules that share a costly session fixture run in the same xdist worker, so that it is
# built once, not in each: a training run (trained_squares).
SHARED_WORKER = {"tests/training/test_calibrate.py": "tests/training/test_train.py"}
# The modules that take longest, in seconds of their tests (setup included) in a `make test`
# on the 2-core VM (2026-12-01): they start first, longest first, so that no worker is left
# with one of them while the others have finished. xdist's own order (most tests first)
# left test_compile.py, four tests but three minutes with inductor's cache cold, for last.
# The rest follow in collection order. tests/test_markers.py checks that each still exists.
MODULE_SECONDS = {
    "tests/model/test_compile.py": 230,  # 54 with /tmp/torchinductor_* from an earlier run
    "tests/integration/test_results_flow.py": 138,
    "tests/training/test_train.py": 96,  # with test_calibrate.py, its shared training run
    "tests/training/test_learning_loop.py": 87,
    "tests/test_device_check.py": 73,
    "tests/training/test_distributed.py": 70,
    "tests/integration/test_dicomweb_destination.py": 64,
    "tests/integration/test_startup_errors.py": 64,
    "tests/integration/test_demo.py": 61,
    "tests/integration/test_backup_restore.py": 58,
    "tests/integration/test_dicomweb_read.py": 52,
    "tests/integration/test_receive.py": 46,
    "tests/integration/test_viewer.py": 44,
    "tests/integration/test_tls.py": 40,
}


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`make test` runs the suite in pytest-xdist workers, a module to a worker: module
    fixtures are built once and a module's tests keep their order (the learning loop's
    build on each other). xdist's own ``--dist loadgroup`` cannot do this with pytest 9,
    whose node ids it can no longer rename, so the grouping is by module here, with
    SHARED_WORKER joining modules."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    config.option.loadscopereorder = False  # the collection's order: MODULE_SECONDS first
    return ModuleScheduling(config, log)


def _scope(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return SHARED_WORKER.get(module, module)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tiers by where a test lives and what it starts, not by hand in each file.

    ``integration``: everything under tests/integration, and any test that starts a real
    peer (dcmtk, a node process, PostgreSQL). A ``pytestmark`` in a conftest.py marks
    nothing, which is how 38 of 39 integration tests went unmarked. ``slow``: SLOW_TESTS
    and the modules that mark themselves. ``make test-unit`` runs neither. The longest
    modules come first (MODULE_SECONDS), each module's tests in their own order.
    """
    integration = TESTS / "integration"
    items.sort(key=lambda item: -MODULE_SECONDS.get(_scope(item.nodeid), 0))  # stable
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (integration in Path(item.path).parents
                or PEER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
                or params.get("database_url") == "postgresql"):
            item.add_marker(pytest.mark.integration)
        if item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        limit = BUNDLED_MODEL_MODULES.get(item.nodeid.split("::")[0])
        if limit:  # a test's own @pytest.mark.timeout still comes first
            item.add_marker(pytest.mark.timeout(limit))


def unavailable(reason: str) -> None:
    """Fail in CI, skip (with the reason) elsewhere."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def strict_pydicom_writing():
    """Everything we write must be valid DICOM (STYLE.md)."""
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = previous


@pytest.fixture
def tool():
    """``tool("storescu")`` -> its path, or fail/skip when it is not installed."""

    def find(name: str) -> str:
        try:
            return require_tool(name)
        except MissingTool as exc:
            unavailable(str(exc))
            raise

    return find


@pytest.fixture
def dcmtk(tool) -> None:
    for name in ("storescu", "echoscu", "storescp", "dcmconv", "dcmcjpeg", "dcmcrle", "dcmcjpls"):
        tool(name)


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for table in inspect(connection).get_table_names():
                connection.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_test_database() -> str:
    """A database of this test run's own on the configured server, dropped at the end.

    Two test runs on one machine (a developer's and CI's) then never drop each other's
    tables.
    """
    name = f"cxr_node_test_{os.getpid()}"
    server = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "not available"
        server.dispose()
        unavailable(f"PostgreSQL at {POSTGRES_URL} is not usable: {exc}")
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with server.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()


@pytest.fixture
def postgres_url(postgres_test_database) -> str:
    """An empty PostgreSQL database (every table dropped)."""
    _reset_postgres(postgres_test_database)
    return postgres_test_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each storage test runs on both backends the node supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'node.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def database(database_url) -> Database:
    db = Database.connect(database_url)
    yield db
    db.dispose()


@pytest.fixture
def chest_cr() -> dict[str, Path]:
    """The real chest radiograph shipped in pydicom-data, uncompressed and JPEG 2000 lossless."""
    files = {}
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        path = get_testdata_file(name, download=False)
        if path is None:
            unavailable(f"{name} from the PyPI package pydicom-data is not installed")
        files[name] = Path(path)
    return files
