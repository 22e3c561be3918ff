"""MCMC samplers on energies: Langevin dynamics, MALA, Hamiltonian Monte Carlo."""

from .diagnostics import effective_sample_size as effective_sample_size
from .diagnostics import split_rhat as split_rhat
from .mcmc import MALA as MALA
from .mcmc import BaseSampler as BaseSampler
from .mcmc import Diagnostics as Diagnostics
from .mcmc import HamiltonianMonteCarlo as HamiltonianMonteCarlo
from .mcmc import LangevinDynamics as LangevinDynamics

__all__ = ["BaseSampler", "Diagnostics", "HamiltonianMonteCarlo", "LangevinDynamics", "MALA",
           "effective_sample_size", "split_rhat"]
