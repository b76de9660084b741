"""Shared Scipion test fixtures: runs of the simulation protocol in a test project."""
from typing import Type

from pyworkflow.tests import BaseTest, setupTestProject

from deephemnma.protocols.protocol_simulate import DeepHemnmaProtSimulate


def launch_simulation(case: Type[BaseTest], **form_values) -> DeepHemnmaProtSimulate:
    """Run the simulation protocol with ``form_values`` in the project of the BaseTest class ``case``; the
    finished protocol (outputs: outputParticles with ground truth, outputModes, outputStructure)."""
    simulation = case.newProtocol(DeepHemnmaProtSimulate, **form_values)
    case.launchProtocol(simulation)
    return simulation


class SimulatedProjectCase(BaseTest):
    """A BaseTest whose project holds ``cls.simulation``: the simulation protocol run once per class with the
    form values of ``SIMULATION``."""

    SIMULATION: dict = {}

    @classmethod
    def setUpClass(cls) -> None:
        setupTestProject(cls)
        cls.simulation = launch_simulation(cls, **cls.SIMULATION)
