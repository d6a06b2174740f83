"""One title per problem type (RFC 9457 3.1.3), whichever error or refusal wrote the problem.

Before: ``urn:certctl:problem:invalid-request`` came titled "Invalid request", "Weak or
unsupported key", "Bad signature", "Verification failed" or "Bad request" (two Host headers),
and ``unavailable`` "Service unavailable" or "Storage unavailable". What happened this time
is the ``detail``'s to say.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections import defaultdict

import certctl
from certctl.api.problems import PROBLEM_TYPES, problem, problem_from_error
from certctl.errors import CertctlError

# Every status the app or the listener answers with a problem of its own (api/app.py,
# api/metrics_routes.py, server/protocol.py), besides those of the CertctlError classes.
_BARE_STATUSES = (400, 404, 405, 413, 431, 499, 500, 501, 503)


def _every_error_class() -> set[type[CertctlError]]:
    # Error classes live next to what raises them (pki.verdicts, targets.directory, cli._api …):
    # import every module so that each one is seen. The migrations are alembic's to load.
    for module in pkgutil.walk_packages(certctl.__path__, "certctl."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    found: set[type[CertctlError]] = set()
    todo = [CertctlError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def _type_and_title(body: bytes) -> tuple[str, str]:
    problem = json.loads(body)
    return problem["type"], problem["title"]


def test_each_problem_type_has_one_title() -> None:
    titles: dict[str, set[str]] = defaultdict(set)
    classes = _every_error_class()
    for cls in classes:
        # Without __init__: some classes take more than a detail (retry_after_s).
        exc = cls.__new__(cls)
        exc.detail = "x"
        exc.retry_after_s = None  # type: ignore[attr-defined]
        problem_type, title = _type_and_title(bytes(problem_from_error(exc).body))
        titles[problem_type].add(title)
        # The class says what its problems say: nothing else to keep in step.
        assert cls.title == title, cls
    statuses = {*_BARE_STATUSES, *(cls.status for cls in classes)}
    # Each has its own type: a status of none would get the generic "error" type.
    assert statuses <= set(PROBLEM_TYPES), statuses - set(PROBLEM_TYPES)
    for status in statuses | set(PROBLEM_TYPES):
        problem_type, title = _type_and_title(bytes(problem(status, "x").body))
        titles[problem_type].add(title)
    assert len(classes) > 10  # the walk found the classes outside certctl.errors
    several = {t: sorted(names) for t, names in titles.items() if len(names) > 1}
    assert not several, several
    # ... and one type per title: two types under one title would read as one problem.
    assert len({title for (title,) in titles.values()}) == len(titles)
