"""The quick loop, `pytest -m "not lab"`, builds no lab: tests/conftest.py marks lab tests by their fixtures,
and a test that is not one cannot build a lab by mistake."""

from __future__ import annotations

import pytest

from nmfailover.lab.sandbox import NMLab, Topology
from tests.conftest import LabNotDeclared, is_lab_test

# Taken when this module is imported, before any test runs with the guard in place.
TOPOLOGY_INIT, NMLAB_INIT = Topology.__init__, NMLab.__init__


def test_a_test_that_is_not_a_lab_test_cannot_build_a_lab(request: pytest.FixtureRequest) -> None:
    assert not is_lab_test(request.node)
    # Checked before a lab is tried: without the guard, this would build one.
    assert (Topology.__init__, NMLab.__init__) != (TOPOLOGY_INIT, NMLAB_INIT)
    for lab in (Topology, NMLab):
        with pytest.raises(LabNotDeclared, match=r"test_markers\.py.*lab_machine"):
            lab(2)
